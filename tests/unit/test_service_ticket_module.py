"""service_ticket and service_ticket_info run the way operators run them: `ansible localhost -m ...`, on a SQLite
file and on a real PostgreSQL server."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.providers import THIRD_PROVIDER, lab_providers
from tests.unit.stores import LAB, open_lab

pytest_plugins = ["tests.pg"]  # pg_server (session), store_dsn (sqlite | postgresql)
ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = str(ROOT / ".venv" / "bin" / "ansible")
NOW = "2026-01-30T10:00:00-06:00"
REQUEST = {"service": "renapo", "source": "mail", "message_id": "<req-1@agricultura.gob.mx>", "actor": "mesa",
           "requester": {"name": "Ana López", "email": "ana@agricultura.gob.mx", "unit": "DGP", "system": "Padrón"},
           "forwarded_by": {"name": "Luis Pérez", "rank": "Director de Área"}, "now": NOW}


def ansible(module, args, *flags):
    """Run one ad-hoc task on localhost (with the lab's provider registry); return (rc, result dict, full stdout)."""
    args = {"providers": LAB, **args}
    proc = subprocess.run([ANSIBLE, "localhost", "-m", module, "-a", json.dumps(args), *flags], cwd=ROOT,
                          env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
                          capture_output=True, text=True, timeout=120)
    stdout = proc.stdout
    start = stdout.index("localhost | ")
    return proc.returncode, json.loads(stdout[stdout.index("=>", start) + 2:]), stdout


@pytest.fixture
def db(store_dsn):
    """Where the test's store lives: a SQLite file, or a fresh PostgreSQL schema."""
    return store_dsn


def test_create_transition_and_invalid_transition(db):
    rc, opened, _ = ansible("service_ticket", {"store": db, **REQUEST})
    assert rc == 0 and opened["changed"] is True
    ticket = opened["ticket"]
    assert ticket["state"] == "received" and ticket["requester"]["name"] == "Ana López"
    assert ticket["first_contact_due"] == "2026-02-09T18:00:00-06:00"
    assert opened["allowed_next"] == ["observations", "folio_issued", "cancelled", "duplicate"]

    rc, again, _ = ansible("service_ticket", {"store": db, **REQUEST})
    assert rc == 0 and again["changed"] is False and again["ticket"]["id"] == ticket["id"]

    rc, issued, _ = ansible("service_ticket", {"store": db, "ticket": str(ticket["id"]), "state": "folio_issued",
                                               "actor": "mesa", "now": "2026-01-30T11:00:00-06:00"})
    assert rc == 0 and issued["changed"] and issued["ticket"]["folio"] == "DGTIC-RENAPO-2026-000001"
    rc, same, _ = ansible("service_ticket", {"store": db, "ticket": "DGTIC-RENAPO-2026-000001",
                                             "state": "folio_issued"})
    assert rc == 0 and same["changed"] is False

    rc, refused, out = ansible("service_ticket", {"store": db, "ticket": "DGTIC-RENAPO-2026-000001",
                                                  "state": "closed"})
    assert rc != 0 and "FAILED!" in out
    assert "cannot go to 'closed'" in refused["msg"]
    assert "requester_validated, rejected, cancelled, duplicate" in refused["msg"]
    assert refused["allowed_next"] == ["requester_validated", "rejected", "cancelled", "duplicate"]

    with open_lab(db) as store:
        assert [a["to_state"] for a in store.audit(1)] == ["received", "folio_issued"]


def test_check_mode_and_diff_write_nothing(db, request):
    with open_lab(db) as store:
        store.create("sat", actor="mesa", now=NOW)
    rc, preview, stdout = ansible("service_ticket", {"store": db, "ticket": "1", "state": "folio_issued",
                                                     "now": NOW}, "--check", "--diff")
    assert rc == 0 and preview["changed"] is True and preview["ticket"]["folio"] == "DGTIC-SAT-2026-000001"
    assert '-    "state": "received"' in stdout and '+    "state": "folio_issued"' in stdout
    with open_lab(db) as store:
        assert store.get(1)["state"] == "received" and len(store.audit(1)) == 1

    if db.startswith("postgresql://"):  # a database without the ticket schema stays without it
        import psycopg
        empty = request.getfixturevalue("pg_server").create_schema()
        rc, created, _ = ansible("service_ticket", {"store": empty, **REQUEST}, "--check")
        assert rc == 0 and created["changed"] is True
        with psycopg.connect(empty) as raw:
            assert raw.execute("SELECT to_regclass('tickets'), to_regclass('schema_version')").fetchone() == (None,
                                                                                                            None)
        return
    absent = Path(db).with_name("absent.db")
    rc, created, _ = ansible("service_ticket", {"store": str(absent), **REQUEST}, "--check")
    assert rc == 0 and created["changed"] is True and not absent.exists()


def test_info_with_sla_status_audit_and_filters(db):
    with open_lab(db) as store:
        late = store.create("renapo", actor="mesa", now=NOW).ticket
        store.transition(late["id"], "folio_issued", actor="mesa", now="2026-02-10T09:00:00-06:00")
    # DOF suspension days given when the ticket opens shift its stored due date (Feb 10-11 skipped).
    ansible("service_ticket", {"store": db, "service": "sat", "now": "2026-02-09T09:00:00-06:00",
                               "non_working_days": ["2026-02-10", "2026-02-11"]})
    args = {"store": db, "now": "2026-02-10T12:00:00-06:00"}

    rc, one, _ = ansible("service_ticket_info", {**args, "ticket": "DGTIC-RENAPO-2026-000001"})
    assert rc == 0 and one["changed"] is False
    assert one["ticket"]["sla"]["first_contact"]["status"] == "breached" and one["ticket"]["sla_first_contact_breached"]
    assert [a["to_state"] for a in one["ticket"]["audit"]] == ["received", "folio_issued"]

    rc, listed, _ = ansible("service_ticket_info", args)
    assert [t["service"] for t in listed["tickets"]] == ["renapo", "sat"]
    assert listed["tickets"][1]["sla"]["first_contact"]["status"] == "on_time"
    rc, breached, _ = ansible("service_ticket_info", {**args, "breached_only": True, "audit": False})
    assert [t["id"] for t in breached["tickets"]] == [late["id"]] and "audit" not in breached["tickets"][0]
    rc, filtered, _ = ansible("service_ticket_info", {**args, "service": "sat", "state": ["received"]})
    assert [t["service"] for t in filtered["tickets"]] == ["sat"]
    assert filtered["tickets"][0]["sla"]["first_contact"]["due"] == "2026-02-18T18:00:00-06:00"


def test_lifecycle_cancel_duplicate_reopen_and_notices(db):
    base = {"store": db, "actor": "mesa"}
    rc, first, _ = ansible("service_ticket", {**base, "service": "renapo", "now": NOW})
    rc, second, _ = ansible("service_ticket", {**base, "service": "renapo", "now": NOW})
    rc, refused, _ = ansible("service_ticket", {**base, "ticket": "2", "state": "cancelled", "now": NOW})
    assert rc != 0 and "cancelling a ticket needs a reason" in refused["msg"]
    rc, dup, _ = ansible("service_ticket", {**base, "ticket": "2", "state": "duplicate", "duplicate_of": "1",
                                            "now": NOW})
    assert rc == 0 and dup["ticket"]["duplicate_of"] == 1 and dup["ticket"]["close_reason"] == "duplicado de #1"
    assert dup["allowed_next"] == [] and dup["sla"]["first_contact"]["stopped_at"] == "2026-01-30T10:00:00-06:00"
    rc, cancelled, _ = ansible("service_ticket", {**base, "ticket": "1", "state": "cancelled", "now": NOW,
                                                  "reason": "el solicitante la retiró"})
    assert rc == 0 and cancelled["ticket"]["state"] == "cancelled" and cancelled["ticket"]["closed_at"] == NOW
    rc, final, _ = ansible("service_ticket", {**base, "ticket": "1", "state": "reopened", "reason": "r"})
    assert rc != 0 and "none (final state)" in final["msg"] and final["allowed_next"] == []

    with open_lab(db) as store:  # a request closed on Friday 2026-12-18 17:00 through the rejection path
        ticket = store.create("sat", actor="mesa", now="2026-12-18T09:00:00-06:00").ticket
        for state in ("folio_issued", "rejected", "notified", "closed"):
            store.transition(ticket["id"], state, actor="mesa", now="2026-12-18T17:00:00-06:00")
    # 3 business days after Friday 18: Mon 21, Tue 22, Wed 23 -> reopenable until Wednesday 23 at 18:00
    args = {**base, "ticket": str(ticket["id"]), "state": "reopened", "reason": "sigue fallando",
            "reopen_business_days": 3}
    rc, late, _ = ansible("service_ticket", {**args, "now": "2026-12-23T18:30:00-06:00"})
    assert rc != 0 and "could be reopened until 2026-12-23T18:00:00-06:00 (3 business days" in late["msg"]
    rc, reopened, _ = ansible("service_ticket", {**args, "now": "2026-12-23T17:30:00-06:00"})
    assert rc == 0 and reopened["ticket"]["state"] == "reopened" and reopened["ticket"]["closed_at"] is None

    notice = {**base, "ticket": str(ticket["id"]), "notice_sent": "sla:attention:due_soon:x", "now": NOW}
    rc, sent, _ = ansible("service_ticket", notice)
    rc, again, _ = ansible("service_ticket", notice)
    assert sent["changed"] and not again["changed"] and [n["key"] for n in again["ticket"]["notices"]] == [
        "sla:attention:due_soon:x"]


def test_expiry_ticket_one_per_event_acknowledged_and_closed(db):
    key = "expiry:renapo:" + "ab" * 32
    event = {"store": db, "service": "renapo", "source": "monitor", "event_key": key, "actor": "monitor",
             "now": NOW}
    rc, opened, _ = ansible("service_ticket", {**event, "hosts": ["consulta-01"]})
    rc, merged, _ = ansible("service_ticket", {**event, "hosts": ["consulta-02"]})
    assert merged["changed"] and merged["ticket"]["id"] == opened["ticket"]["id"]
    assert merged["ticket"]["hosts"] == ["consulta-01", "consulta-02"]
    assert merged["allowed_next"] == ["acknowledged", "closed", "cancelled", "duplicate"]
    ticket = str(opened["ticket"]["id"])
    rc, ack, _ = ansible("service_ticket", {"store": db, "ticket": ticket, "state": "acknowledged", "now": NOW})
    assert rc == 0 and ack["allowed_next"] == ["closed", "cancelled", "duplicate"]
    rc, refused, _ = ansible("service_ticket", {"store": db, "ticket": ticket, "state": "closed", "now": NOW})
    assert rc != 0 and "needs a reason" in refused["msg"]
    rc, closed, _ = ansible("service_ticket", {"store": db, "ticket": ticket, "state": "closed", "now": NOW,
                                               "reason": "renovado en consulta-01 y consulta-02"})
    assert closed["ticket"]["close_reason"] == "renovado en consulta-01 y consulta-02"
    rc, info, _ = ansible("service_ticket_info", {"store": db, "source": "monitor", "open_only": True})
    assert rc == 0 and info["tickets"] == []


def run_module(module, args):
    args = {"providers": LAB, **args}
    proc = subprocess.run([ANSIBLE, "localhost", "-m", module, "-a", json.dumps(args)], cwd=ROOT,
                          env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "TZ": "UTC"},
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    return proc.returncode, json.loads(out[out.index("=>", out.index("localhost | ")) + 2:]), out + proc.stderr


# Monday 2027-03-22 10:00; Semana Santa 2027: Holy Thursday 25, Good Friday 26 (Easter Sunday 28). Counted by hand:
# first contact 5 business days after Monday -> Tue 23, Wed 24, Mon 29, Tue 30, Wed 31 -> Wednesday 31 at close.
@pytest.mark.parametrize("options, received, due", [
    ({}, "2027-03-22T10:00:00-06:00", "2027-03-31T18:00:00-06:00"),
    ({"semana_santa": False}, "2027-03-22T10:00:00-06:00", "2027-03-29T18:00:00-06:00"),
    ({"semana_santa": {"2027": False}}, "2027-03-22T10:00:00-06:00", "2027-03-29T18:00:00-06:00"),
    # a DOF day on Tuesday 23: Wed 24, Mon 29, Tue 30, Wed 31, Thu Apr 1
    ({"non_working_days": {"2027": ["2027-03-23"]}}, "2027-03-22T10:00:00-06:00", "2027-04-01T18:00:00-06:00"),
    ({"non_working_days": ["2027-03-23"]}, "2027-03-22T10:00:00-06:00", "2027-04-01T18:00:00-06:00"),
    # arrival after a 08:00-15:00 close: the clock starts Tuesday 08:00; 5 days after Tuesday -> Thu Apr 1 15:00
    ({"business_hours": "08:00-15:00"}, "2027-03-22T16:00:00-06:00", "2027-04-01T15:00:00-06:00"),
    # Cancún is UTC-5 all year: same local days, its own offset; a naive arrival is read in that zone
    ({"timezone": "America/Cancun"}, "2027-03-22T10:00:00", "2027-03-31T18:00:00-05:00"),
])
def test_clock_options_on_a_utc_controller(tmp_path, options, received, due):
    db = str(tmp_path / "tickets.db")  # the calendar is the same on both backends
    rc, opened, _ = run_module("service_ticket", {"store": db, "service": "renapo", "received_at": received,
                                                  "now": received, **options})
    assert rc == 0 and opened["ticket"]["first_contact_due"] == due
    assert opened["sla"]["first_contact"]["due"] == due and opened["sla"]["first_contact"]["status"] == "on_time"
    rc, info, _ = run_module("service_ticket_info", {"store": db, "ticket": "1", "now": received, **options})
    assert info["ticket"]["sla"]["first_contact"]["due"] == due


def test_dof_warning_and_sla_notices_in_local_time(db):
    args = {"store": db, "service": "sat", "received_at": "2027-03-22T10:00:00-06:00",
            "now": "2027-03-22T10:00:00-06:00"}
    rc, opened, output = run_module("service_ticket", args)
    [warning] = opened["sla_warnings"]
    assert warning.startswith("No hay lista de días inhábiles del DOF para 2027") and "No hay lista" in output
    rc, listed, _ = run_module("service_ticket", {"store": db, "ticket": "1", "now": args["now"],
                                                  "non_working_days": {"2027": []}})
    assert listed["changed"] is False and listed["sla_warnings"] == []
    # Tuesday 30 at 10:00 UTC (04:00 in Mexico City): Tuesday's 9 h + Wednesday's 9 h left -> on time;
    # Wednesday 31 00:30 UTC is still Tuesday 18:30 there: only Wednesday's 9 h left -> due soon
    info = {"store": db, "open_only": True, "audit": False, "non_working_days": {"2027": []}}
    rc, early, _ = run_module("service_ticket_info", {**info, "now": "2027-03-30T10:00:00+00:00"})
    assert early["sla_notices"] == [] and early["now"] == "2027-03-30T04:00:00-06:00"
    rc, soon, _ = run_module("service_ticket_info", {**info, "now": "2027-03-31T00:30:00+00:00"})
    [notice] = soon["sla_notices"]
    assert notice["key"] == "sla:first_contact:due_soon:2027-03-31T18:00:00-06:00"
    assert notice["due_text"] == "miércoles 31 de marzo de 2027 a las 18:00 h" and notice["notice"] == "sla_due_soon"


def test_module_refuses_key_material_and_names_the_defect(db):
    with open_lab(db) as store:
        store.create("renapo", actor="mesa", now=NOW)
    note = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQww\n"
    rc, refused, _ = ansible("service_ticket", {"store": db, "ticket": "1", "annotate": note})
    assert rc != 0 and "never holds it" in refused["msg"] and "MIIF" not in refused["msg"]
    rc, missing, _ = ansible("service_ticket", {"store": db, "state": "deploying", "service": "renapo"})
    assert rc != 0 and "give its id or folio in 'ticket'" in missing["msg"]



def test_password_in_the_dsn_never_shows(pg_server, tmp_path):
    # A playbook, as ops and AWX run it (an ad-hoc `ansible -a` echoes its literal arguments when a task fails).
    password = "Sup3r-S3cret-pw"
    dsns = {"dsn": pg_server.create_schema(password=password),  # trust auth ignores it; the modules must hide it
            "bad_dsn": pg_server.dsn(dbname="no_such_db", password=password)}
    (tmp_path / "vars.json").write_text(json.dumps({**dsns, "procedure_providers": LAB}))
    (tmp_path / "play.yml").write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - service_ticket: {store: "{{ dsn }}", providers: "{{ procedure_providers }}", service: renapo, actor: mesa}
    - service_ticket_info: {store: "{{ dsn }}", providers: "{{ procedure_providers }}", ticket: "1"}
    - service_ticket: {store: "{{ bad_dsn }}", providers: "{{ procedure_providers }}", ticket: "1",
                       state: folio_issued}
      ignore_errors: true
""")
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), str(tmp_path / "play.yml"),
                           "-e", f"@{tmp_path / 'vars.json'}", "-vvv"], cwd=ROOT,
                          env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok=3" in proc.stdout and "ignored=1" in proc.stdout
    assert password not in proc.stdout + proc.stderr
    assert "postgres:********@127.0.0.1" in proc.stdout  # -vvv shows the invocation, masked
    assert 'database \\"no_such_db\\" does not exist' in proc.stdout


def test_service_is_checked_against_the_registry_and_a_third_provider_needs_no_code(db):
    rc, refused, _ = ansible("service_ticket", {**REQUEST, "store": db, "service": "ine"})
    assert rc != 0 and refused["msg"] == ("unknown service 'ine'; the provider registry (procedure_providers) has "
                                          "renapo, sat")
    with_ine = lab_providers(**THIRD_PROVIDER)
    rc, opened, _ = ansible("service_ticket", {**REQUEST, "store": db, "service": "ine", "providers": with_ine})
    assert rc == 0 and opened["ticket"]["service"] == "ine"
    # INE's own SLA days (first contact 3): Friday 30 Jan 2026 10:00 -> (Mon 2 Feb holiday) Tue 3, Wed 4, Thu 5.
    assert opened["ticket"]["first_contact_due"] == "2026-02-05T18:00:00-06:00"
    ref = str(opened["ticket"]["id"])
    rc, issued, _ = ansible("service_ticket", {"store": db, "providers": with_ine, "ticket": ref,
                                               "state": "folio_issued", "actor": "mesa", "now": NOW})
    assert rc == 0 and issued["ticket"]["folio"] == "DGTIC-INE-2026-000001"
    rc, found, _ = ansible("service_ticket_info", {"store": db, "providers": with_ine, "service": "ine", "now": NOW})
    assert rc == 0 and [t["folio"] for t in found["tickets"]] == ["DGTIC-INE-2026-000001"]
    # The store remembers INE (the providers table): an inventory that drops it is refused while it has tickets.
    rc, dropped, _ = ansible("service_ticket", {**REQUEST, "store": db, "message_id": "<other@x>"})
    assert rc != 0 and "no longer has 'ine' (1 in tickets)" in dropped["msg"]
