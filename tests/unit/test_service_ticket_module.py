"""service_ticket and service_ticket_info run the way operators run them: `ansible localhost -m ...`, on a SQLite
file and on a real PostgreSQL server."""
import json
import os
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils.ticket_store import open_store

pytest_plugins = ["tests.pg"]  # pg_server (session), store_dsn (sqlite | postgresql)
ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = str(ROOT / ".venv" / "bin" / "ansible")
NOW = "2026-01-30T10:00:00-06:00"
REQUEST = {"service": "renapo", "source": "mail", "message_id": "<req-1@agricultura.gob.mx>", "actor": "mesa",
           "requester": {"name": "Ana López", "email": "ana@agricultura.gob.mx", "unit": "DGP", "system": "Padrón"},
           "forwarded_by": {"name": "Luis Pérez", "rank": "Director de Área"}, "now": NOW}


def ansible(module, args, *flags):
    """Run one ad-hoc task on localhost; return (rc, result dict, full stdout)."""
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
    assert opened["allowed_next"] == ["observations", "folio_issued"]

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
    assert "cannot go to 'closed'" in refused["msg"] and "requester_validated, rejected" in refused["msg"]
    assert refused["allowed_next"] == ["requester_validated", "rejected"]

    with open_store(db) as store:
        assert [a["to_state"] for a in store.audit(1)] == ["received", "folio_issued"]


def test_check_mode_and_diff_write_nothing(db, request):
    with open_store(db) as store:
        store.create("sat", actor="mesa", now=NOW)
    rc, preview, stdout = ansible("service_ticket", {"store": db, "ticket": "1", "state": "folio_issued",
                                                     "now": NOW}, "--check", "--diff")
    assert rc == 0 and preview["changed"] is True and preview["ticket"]["folio"] == "DGTIC-SAT-2026-000001"
    assert '-    "state": "received"' in stdout and '+    "state": "folio_issued"' in stdout
    with open_store(db) as store:
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
    with open_store(db) as store:
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


def test_module_refuses_key_material_and_names_the_defect(db):
    with open_store(db) as store:
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
    (tmp_path / "vars.json").write_text(json.dumps(dsns))
    (tmp_path / "play.yml").write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - service_ticket: {store: "{{ dsn }}", service: renapo, actor: mesa}
    - service_ticket_info: {store: "{{ dsn }}", ticket: "1"}
    - service_ticket: {store: "{{ bad_dsn }}", ticket: "1", state: folio_issued}
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
