"""Launch the renew job template of a ticket through AWX / Ansible Automation Platform's REST API (issue 7).

Pure code (stdlib only): `procedure.Intake` calls a launcher when a ticket reaches `certificate_received`;
`library/mail_intake.py` builds it from its `awx_*` options. Without an AWX URL and token the launcher does not
call anything and returns the command an operator runs instead.

The contract used (AWX API v2): `GET /api/v2/job_templates/?name=<name>` resolves a template name to its id;
`POST /api/v2/job_templates/<id>/launch/` with `{"extra_vars": {"folio": ...}}` and `Authorization: Bearer <token>`
answers 201 with the new job's id in `job`. The token never appears in a result or an error.
"""
from __future__ import annotations

import json
import shlex
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

RENEW_PLAYBOOK = "playbooks/renew.yml"


class AwxLaunchError(Exception):
    """AWX refused or could not be reached; the message names the cause (never the token)."""


def renew_command(folio: str) -> str:
    """What an operator runs when AWX is not configured (or did not answer)."""
    return f"ansible-playbook {RENEW_PLAYBOOK} -e folio={shlex.quote(folio)}"


@dataclass
class AwxLauncher:
    """Launches `template` (id or name) with the ticket's folio; `url` and `token` empty = not configured."""

    url: str | None
    token: str | None
    template: str
    validate_certs: bool = True
    timeout: float = 15.0

    @property
    def configured(self) -> bool:
        return bool(self.url and self.token)

    def __call__(self, ticket: dict) -> dict:
        """The outcome for a ticket that reached certificate_received: launched job, or the command to run."""
        folio = ticket["folio"]
        result = {"folio": folio, "launched": False, "command": renew_command(folio), "template": self.template}
        if not self.configured:
            result["reason"] = "AWX no configurado (URL y token): ejecute el comando"
            return result
        try:
            template_id = self.template_id()
            job = self._request("POST", f"/api/v2/job_templates/{template_id}/launch/",
                                {"extra_vars": {"folio": folio}}, expect=(201,))
        except AwxLaunchError as e:
            result["reason"] = f"AWX no lanzó la renovación ({e}): ejecute el comando"
            return result
        job_id = job.get("job") or job.get("id")
        result.update(launched=True, template_id=template_id, job=job_id,
                      job_url=f"{self.url.rstrip('/')}/api/v2/jobs/{job_id}/")
        return result

    def template_id(self) -> int:
        if str(self.template).isdigit():
            return int(self.template)
        found = self._request("GET", "/api/v2/job_templates/?" + urllib.parse.urlencode({"name": self.template}))
        results = found.get("results") or []
        if len(results) != 1:
            raise AwxLaunchError(f"{len(results)} job templates named {self.template!r}")
        return int(results[0]["id"])

    def _request(self, method: str, path: str, body: dict | None = None, expect=(200,)) -> dict:
        url = self.url.rstrip("/") + path
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise AwxLaunchError(f"the AWX URL must be http(s)://, not {self.url!r}")
        request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json", "Accept": "application/json"})
        context = ssl.create_default_context()
        if not self.validate_certs:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise AwxLaunchError(f"{method} {path}: {getattr(e, 'reason', e)}") from None
        if status not in expect:
            raise AwxLaunchError(f"{method} {path}: HTTP {status} {_detail(payload)}".rstrip())
        try:
            return json.loads(payload or b"{}")
        except ValueError:
            raise AwxLaunchError(f"{method} {path}: HTTP {status} with a body that is not JSON") from None


def _detail(payload: bytes) -> str:
    """AWX's own reason (`detail`, or the field errors of a 400), short."""
    try:
        data = json.loads(payload)
    except ValueError:
        return ""
    detail = data.get("detail", data) if isinstance(data, dict) else data
    return json.dumps(detail, ensure_ascii=False)[:300] if not isinstance(detail, str) else detail[:300]
