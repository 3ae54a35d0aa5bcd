"""awx_launch and the intake's hook: a ticket that reaches certificate_received launches the renew job template
through a real HTTP server speaking AWX's launch contract, or reports the command to run. The token never leaks."""
from __future__ import annotations

import json

import pytest
from ansible.module_utils.awx_launch import AwxLauncher, renew_command
from ansible.module_utils.procedure import RENEW_LAUNCHED, Intake

from tests.awx_server import AwxServer
from tests.unit.stores import LAB, open_lab

TOKEN = "awx-pat-3f9c2b7e1d"  # a throw-away value; the point is that it never shows up anywhere
RENEW = "Renovación de certificado (renew)"
FOLIO = "DGTIC-RENAPO-2026-000007"


@pytest.fixture(scope="module")
def awx():
    with AwxServer(TOKEN, {12: RENEW, 13: "Otro"}) as server:
        yield server


@pytest.mark.parametrize(("case", "url", "token", "template", "launched", "reason"), [
    ("by id", "awx", TOKEN, "12", True, None),
    ("by name", "awx", TOKEN, RENEW, True, None),
    ("trailing slash in the URL", "awx/", TOKEN, RENEW, True, None),
    ("not configured", None, None, RENEW, False, "AWX no configurado"),
    ("URL without a token", "awx", "", RENEW, False, "AWX no configurado"),
    ("wrong token", "awx", "not-the-token", "12", False, "HTTP 401 Authentication credentials"),
    ("unknown template name", "awx", TOKEN, "No existe", False, "0 job templates named 'No existe'"),
    ("unknown template id", "awx", TOKEN, "99", False, "HTTP 404"),
    ("AWX down", "http://127.0.0.1:9", TOKEN, "12", False, "Connection refused"),
    ("not http", "ftp://awx.example", TOKEN, "12", False, "must be http(s)://"),
])
def test_launch_outcomes(awx, case, url, token, template, launched, reason):
    url = awx.url + url[3:] if url and url.startswith("awx") else url
    before = len(awx.launches)
    result = AwxLauncher(url, token, template, timeout=5)({"folio": FOLIO})
    assert result["launched"] is launched, result
    assert result["folio"] == FOLIO and result["command"] == renew_command(FOLIO)
    if launched:
        assert result["template_id"] == 12 and result["job"] == awx.launches[-1]["job"]
        assert result["job_url"] == f"{awx.url}/api/v2/jobs/{result['job']}/"
        assert awx.launches[-1]["extra_vars"] == {"folio": FOLIO}
    else:
        assert reason in result["reason"] and result["reason"].endswith("ejecute el comando")
        assert len(awx.launches) == before
    assert TOKEN not in json.dumps(result)


def test_the_request_is_the_documented_launch_call(awx):
    AwxLauncher(awx.url, TOKEN, "12")({"folio": FOLIO})
    post = [r for r in awx.requests if r["method"] == "POST"][-1]
    assert post["path"] == "/api/v2/job_templates/12/launch/"
    assert post["authorization"] == f"Bearer {TOKEN}" and post["body"] == {"extra_vars": {"folio": FOLIO}}


def test_survey_answer_missing_is_named(awx):
    result = AwxLauncher(awx.url, TOKEN, "12")({"folio": ""})
    assert not result["launched"] and "variables_needed_to_start" in result["reason"]


def test_operator_command_quotes_the_folio():
    assert renew_command("A B") == "ansible-playbook playbooks/renew.yml -e folio='A B'"


def _ticket_with_certificate(store):
    ticket = store.create("renapo", actor="t", requester={"name": "Ana", "email": "ana@agricultura.gob.mx"}).ticket
    for state in ("folio_issued", "requester_validated", "certificate_received"):
        ticket = store.transition(ticket["id"], state, actor="t").ticket
    return ticket


def test_intake_hook_launches_once_per_ticket_and_notes_it(awx, tmp_path):
    with open_lab(str(tmp_path / "tickets.db")) as store:
        ticket = _ticket_with_certificate(store)
        intake = Intake(store, None, {}, None, "mesa@x", "enlace@x", str(tmp_path), str(tmp_path),
                        on_certificate_received=AwxLauncher(awx.url, TOKEN, RENEW), providers=LAB)
        first, again = {}, {}
        ticket = intake._launch_renew(ticket, first)
        intake._launch_renew(store.get(ticket["id"]), again)  # a resumed run must not launch a second job
        assert first["renew"]["launched"] and "renew" not in again
        [note] = [n["note"] for n in store.get(ticket["id"])["observations"] if n["note"].startswith(RENEW_LAUNCHED)]
        assert f"job {first['renew']['job']}" in note and TOKEN not in json.dumps(store.get(ticket["id"]))
        assert sum(1 for launch in awx.launches if launch["extra_vars"]["folio"] == ticket["folio"]) == 1


def test_intake_hook_without_awx_reports_the_command_and_notes_nothing(tmp_path):
    with open_lab(str(tmp_path / "tickets.db")) as store:
        ticket = _ticket_with_certificate(store)
        intake = Intake(store, None, {}, None, "mesa@x", "enlace@x", str(tmp_path), str(tmp_path),
                        on_certificate_received=AwxLauncher(None, None, RENEW), providers=LAB)
        outcome = {}
        intake._launch_renew(ticket, outcome)
        assert outcome["renew"]["command"] == renew_command(ticket["folio"]) and not outcome["renew"]["launched"]
        assert not any(n["note"].startswith(RENEW_LAUNCHED) for n in store.get(ticket["id"])["observations"])
