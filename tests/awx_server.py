"""A small real HTTP server that speaks the part of AWX's API v2 the intake uses to launch the renew job template.

`GET /api/v2/job_templates/?name=<name>` lists the templates of that name; `POST /api/v2/job_templates/<id>/launch/`
checks `Authorization: Bearer <token>` (401 otherwise, as AWX answers), requires `extra_vars.folio` when the
template has the folio survey (400 otherwise) and answers 201 with a new job id. Every request is recorded.
Tests import it: `from tests.awx_server import AwxServer`.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class AwxServer:
    """`with AwxServer(token, {12: "Renovación de certificado (renew)"}) as awx:` -> awx.url, awx.launches."""

    def __init__(self, token: str, templates: dict[int, str], first_job: int = 100):
        self.token, self.templates, self.next_job = token, templates, first_job
        self.requests: list[dict] = []  # method, path, authorization, body
        self.launches: list[dict] = []  # template, job, extra_vars
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        awx = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _answer(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self, body=None):
                with awx._lock:
                    awx.requests.append({"method": self.command, "path": self.path, "body": body,
                                         "authorization": self.headers.get("Authorization")})
                if self.headers.get("Authorization") != f"Bearer {awx.token}":
                    self._answer(401, {"detail": "Authentication credentials were not provided."})
                    return False
                return True

            def do_GET(self):  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                if not self._authorised():
                    return
                if url.path != "/api/v2/job_templates/":
                    return self._answer(404, {"detail": "Not found."})
                name = parse_qs(url.query).get("name", [None])[0]
                results = [{"id": i, "name": n, "type": "job_template"} for i, n in awx.templates.items()
                           if name in (None, n)]
                self._answer(200, {"count": len(results), "next": None, "previous": None, "results": results})

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = None
                if not self._authorised(body):
                    return
                m = re.fullmatch(r"/api/v2/job_templates/(\d+)/launch/", urlsplit(self.path).path)
                if not m or int(m[1]) not in awx.templates:
                    return self._answer(404, {"detail": "Not found."})
                extra_vars = (body or {}).get("extra_vars") or {}
                if not extra_vars.get("folio"):
                    return self._answer(400, {"variables_needed_to_start": ["'folio' value missing"]})
                with awx._lock:
                    job = awx.next_job
                    awx.next_job += 1
                    awx.launches.append({"template": int(m[1]), "job": job, "extra_vars": extra_vars})
                self._answer(201, {"job": job, "id": job, "type": "job", "status": "pending",
                                   "ignored_fields": {}, "url": f"/api/v2/jobs/{job}/"})

        return Handler
