"""Ticket store on real SQLite files and a real PostgreSQL server, every test on both: state machine, folios,
audit log, idempotence, secrets, migrations and concurrency."""
import base64
import multiprocessing
import random
import sqlite3
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from itertools import count

import pytest
from ansible.module_utils.sla import SlaPolicy
from ansible.module_utils.ticket_store import (
    MONITOR_TRANSITIONS,
    POSTGRESQL_MIGRATIONS,
    SQLITE_MIGRATIONS,
    STATES,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    PostgresTicketStore,
    ReopenRefused,
    SecretMaterialError,
    SqliteTicketStore,
    TicketConflict,
    TicketNotFound,
    TicketStoreError,
    open_store,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.providers import lab_providers

pytest_plugins = ["tests.pg"]  # pg_server (session), pg_schema, store_dsn / module_store_dsn (sqlite | postgresql)

CDMX = timezone(timedelta(hours=-6))
T0 = datetime(2026, 1, 30, 10, 0, tzinfo=CDMX)
# The request's machine (sources mail, manual, provider) and the expiry monitor's, by the source that follows each.
MACHINES = {"manual": TRANSITIONS, "monitor": MONITOR_TRANSITIONS}
ALLOWED = [(source, frm, to) for source, machine in MACHINES.items() for frm, targets in machine.items()
           for to in targets]
FORBIDDEN = [(source, frm, to) for source, machine in MACHINES.items() for frm in machine for to in STATES
             if to != frm and to not in machine[frm]]
# Data a real run records when it enters these states (closing needs every host verified; cancelling, reopening and
# closing an expiry ticket need a reason; a duplicate names its original, see `step`).
STEP_DATA = {"certificate_received": {"serial": "0A1B"}, "deploying": {"hosts": ["web01", "web02"]},
             "deployed": {"verified_hosts": ["web01", "web02"]}, "rejected": {"cause": "no es personal"},
             "cancelled": {"reason": "el solicitante retiró la solicitud"},
             "reopened": {"reason": "el solicitante reporta que la consulta sigue fallando"},
             "closed": {"reason": "concluido"}}


LAB = lab_providers()  # the lab inventory's provider registry


def open_lab(*args, **kwargs):
    """open_store() with the lab's provider registry (a store writes tickets only when it knows the registry)."""
    kwargs.setdefault("providers", LAB)
    return open_store(*args, **kwargs)


def ids_of(rows):
    return [f"{source}:{a}->{b}" for source, a, b in rows]


def shortest_path(target, machine=TRANSITIONS):
    """States from `received` to `target` through allowed transitions (BFS)."""
    paths, queue = {"received": []}, deque(["received"])
    while queue:
        state = queue.popleft()
        for nxt in machine[state]:
            if nxt not in paths:
                paths[nxt] = paths[state] + [nxt]
                queue.append(nxt)
    return paths[target]


class Clock:
    """Frozen time that moves one minute per call."""

    def __init__(self, start=T0):
        self.ticks = count()
        self.start = start

    def __call__(self):
        return self.start + timedelta(minutes=next(self.ticks))


def is_pg(dsn):
    return dsn.startswith("postgresql://")


LATEST = len(SQLITE_MIGRATIONS)  # the schema version a fresh store reaches (both backends have the same versions)
assert LATEST == len(POSTGRESQL_MIGRATIONS)


@pytest.fixture
def db(store_dsn):
    """Where the test's store lives: a SQLite file, or a fresh PostgreSQL schema."""
    return store_dsn


@pytest.fixture
def store(db):
    with open_lab(db) as s:
        yield s


def new_ticket(store, clock, service="renapo", **kw):
    return store.create(service, actor="mesa", requester={"name": "Ana López", "email": "ana@agricultura.gob.mx",
                                                          "unit": "DGP", "system": "Padrón"},
                        forwarded_by={"name": "Luis Pérez", "rank": "Director de Área"}, now=clock(), **kw).ticket


def step(store, clock, state):
    """What entering `state` records; a duplicate points to an original opened for it."""
    if state == "duplicate":
        return {"duplicate_of": str(new_ticket(store, clock)["id"])}
    return STEP_DATA.get(state, {})


def drive(store, clock, ticket_id, target, source="manual"):
    for state in shortest_path(target, MACHINES[source]):
        store.transition(ticket_id, state, actor="test", now=clock(), **step(store, clock, state))
    return store.get(ticket_id)


@pytest.fixture(scope="module")
def ticket_in_each_state(module_store_dsn):
    """One store with one ticket of each machine sitting in each of its states (built once per backend: forbidden
    attempts write nothing)."""
    path = module_store_dsn
    clock = Clock()
    with open_lab(path) as s:
        ids = {(source, state): drive(s, clock, new_ticket(s, clock, source=source)["id"], state, source)["id"]
               for source, machine in MACHINES.items() for state in machine}
    return path, ids


@pytest.mark.parametrize("source, frm, to", ALLOWED, ids=ids_of(ALLOWED))
def test_every_allowed_transition(store, source, frm, to):
    clock = Clock()
    ticket = drive(store, clock, new_ticket(store, clock, source=source)["id"], frm, source)
    assert ticket["state"] == frm
    ticket, changed, before = store.transition(ticket["id"], to, actor="test", now=clock(),
                                               **step(store, clock, to))
    assert changed and before["state"] == frm and ticket["state"] == to
    assert ticket["allowed_next"] == list(MACHINES[source][to])
    last = store.audit(ticket["id"])[-1]
    assert (last["from_state"], last["to_state"], last["actor"]) == (frm, to, "test")
    if to in ("cancelled", "duplicate", "reopened"):
        assert last["reason"]  # the Mesa's lifecycle always says why
    assert (ticket["closed_at"] is not None) == (to in TERMINAL)


@pytest.mark.parametrize("source, frm, to", FORBIDDEN, ids=ids_of(FORBIDDEN))
def test_forbidden_transition_lists_allowed(ticket_in_each_state, source, frm, to):
    path, ids = ticket_in_each_state
    allowed = list(MACHINES[source][frm])
    with open_lab(path) as s:
        audit_before = len(s.audit(ids[source, frm]))
        with pytest.raises(InvalidTransition) as err:
            s.transition(ids[source, frm], to, actor="test", now=T0, reason="x")
        assert err.value.allowed == allowed
        assert f"cannot go to '{to}'" in str(err.value)
        for state in allowed:
            assert state in str(err.value)
        if not allowed:
            assert "none (final state)" in str(err.value)
        assert s.get(ids[source, frm])["state"] == frm and len(s.audit(ids[source, frm])) == audit_before


def test_unknown_state_and_unknown_ticket(store):
    clock = Clock()
    ticket = new_ticket(store, clock)
    with pytest.raises(InvalidTransition, match="unknown ticket state 'done'"):
        store.transition(ticket["id"], "done", actor="t")
    with pytest.raises(TicketNotFound, match="DGTIC-RENAPO-2026-000999"):
        store.get("dgtic-renapo-2026-000999")
    with pytest.raises(TicketStoreError, match="unknown provider .imss.* registry .* has renapo, sat"):
        store.create("imss", actor="t")


def test_observations_loop_and_first_contact(store):
    clock = Clock()
    ticket = new_ticket(store, clock)
    ticket = store.transition(ticket["id"], "observations", actor="mesa", note="Falta el sistema", now=clock()).ticket
    assert ticket["first_contact_at"] and ticket["observations"][0]["note"] == "Falta el sistema"
    first_contact = ticket["first_contact_at"]
    ticket = store.transition(ticket["id"], "received", actor="mesa", reason="datos completos", now=clock()).ticket
    ticket = store.transition(ticket["id"], "folio_issued", actor="mesa", now=clock()).ticket
    assert ticket["first_contact_at"] == first_contact and ticket["folio"] == "DGTIC-RENAPO-2026-000001"
    assert [a["to_state"] for a in store.audit(ticket["folio"])] == [
        "received", "observations", "received", "folio_issued"]


def test_same_transition_twice_is_a_noop(store):
    clock = Clock()
    ticket = drive(store, clock, new_ticket(store, clock)["id"], "deploying")
    rows = len(store.audit(ticket["id"]))
    again = store.transition(ticket["id"], "deploying", actor="test", serial="0A1B", hosts=["web02", "web01"],
                             now=clock())
    assert again.changed is False and again.ticket == ticket
    assert store.annotate(ticket["id"], None, actor="t").changed is False
    assert len(store.audit(ticket["id"])) == rows


def test_same_state_with_new_hosts_merges_and_audits(store):
    clock = Clock()
    ticket = drive(store, clock, new_ticket(store, clock)["id"], "deploying")
    updated = store.transition(ticket["id"], "deploying", actor="slice-2", verified_hosts=["web03"], now=clock())
    assert updated.changed
    assert updated.ticket["hosts"] == ["web01", "web02", "web03"] and updated.ticket["verified_hosts"] == ["web03"]
    last = store.audit(ticket["id"])[-1]
    assert (last["from_state"], last["to_state"], last["hosts"]) == ("deploying", "deploying", ["web03"])
    with pytest.raises(TicketConflict, match="0A1B"):
        store.transition(ticket["id"], "deploying", actor="t", serial="FFFF")


def test_retry_with_new_serial_restarts_verification(store):
    clock = Clock()
    ticket = drive(store, clock, new_ticket(store, clock)["id"], "deploying")
    store.transition(ticket["id"], "rolled_back", actor="t", verified_hosts=["web01"], cause="nginx -t", now=clock())
    retry = store.transition(ticket["id"], "deploying", actor="t", serial="0C0D", now=clock()).ticket
    assert retry["deployed_serial"] == "0C0D" and retry["verified_hosts"] == [] and retry["cause"] == "nginx -t"


def test_close_requires_every_host_verified(store):
    clock = Clock()
    ticket = drive(store, clock, new_ticket(store, clock)["id"], "deploying")
    store.transition(ticket["id"], "deployed", actor="t", verified_hosts=["web01"], now=clock())
    store.transition(ticket["id"], "notified", actor="t", now=clock())
    with pytest.raises(InvalidTransition, match="hosts not verified: web02"):
        store.transition(ticket["id"], "closed", actor="t", now=clock())
    closed = store.transition(ticket["id"], "closed", actor="t", verified_hosts=["web02"], now=clock()).ticket
    assert closed["state"] == "closed"
    rejected = drive(store, clock, new_ticket(store, clock)["id"], "closed")  # via rejected: no hosts to verify
    assert rejected["state"] == "closed" and rejected["hosts"] == []


def test_folio_gap_free_per_service_and_year(store):
    clock = Clock()
    issued = []
    for service, start in [("renapo", T0), ("sat", T0), ("renapo", T0), ("sat", T0), ("renapo", T0),
                           ("renapo", T0.replace(year=2027)), ("sat", T0.replace(year=2027))]:
        ticket = new_ticket(store, clock, service)
        issued.append(store.transition(ticket["id"], "folio_issued", actor="t", now=start).ticket["folio"])
    assert issued == ["DGTIC-RENAPO-2026-000001", "DGTIC-SAT-2026-000001", "DGTIC-RENAPO-2026-000002",
                      "DGTIC-SAT-2026-000002", "DGTIC-RENAPO-2026-000003", "DGTIC-RENAPO-2027-000001",
                      "DGTIC-SAT-2027-000001"]


def test_dry_run_writes_nothing_and_consumes_no_folio(store):
    clock = Clock()
    ticket = new_ticket(store, clock)
    preview = store.transition(ticket["id"], "folio_issued", actor="t", now=clock(), dry_run=True)
    assert preview.changed and preview.ticket["folio"] == "DGTIC-RENAPO-2026-000001"
    assert store.get(ticket["id"])["state"] == "received" and len(store.audit(ticket["id"])) == 1
    assert store.transition(ticket["id"], "folio_issued", actor="t").ticket["folio"] == "DGTIC-RENAPO-2026-000001"
    created = store.create("sat", actor="t", message_id="<dry@run>", dry_run=True)
    assert created.changed and store.find(service="sat") == []


def test_failed_transition_gives_its_folio_back(store):
    clock = Clock()
    ticket = new_ticket(store, clock)
    with pytest.raises(SecretMaterialError):
        store.transition(ticket["id"], "folio_issued", actor="t", reason="-----BEGIN PRIVATE KEY-----\nMIIE")
    assert store.transition(ticket["id"], "folio_issued", actor="t").ticket["folio"].endswith("-000001")


def test_message_id_opens_one_ticket(store):
    first = store.create("renapo", actor="intake", source="mail", message_id="<1@mail>", now=T0)
    again = store.create("renapo", actor="intake", source="mail", message_id="<1@mail>", now=T0)
    assert first.changed and not again.changed and again.ticket["id"] == first.ticket["id"]
    assert len(store.find()) == 1 and len(store.audit(first.ticket["id"])) == 1


def test_audit_log_is_append_only(store, db):
    clock = Clock()
    drive(store, clock, new_ticket(store, clock)["id"], "folio_issued")
    tampering = ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log",
                 "UPDATE audit_log SET to_state = 'closed' WHERE id = 1"]
    if is_pg(db):  # a direct connection, as an operator with psql would have
        import psycopg
        with psycopg.connect(db, autocommit=True) as raw:
            for sql in [*tampering, "TRUNCATE audit_log"]:
                with pytest.raises(psycopg.errors.IntegrityError, match="append-only"):
                    raw.execute(sql)
    else:
        raw = sqlite3.connect(db)
        for sql in tampering:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(sql)
        raw.close()
    assert [a["actor"] for a in store.audit(1)] == ["mesa", "test"]


def test_schema_wal_and_reopen(db):
    with open_lab(db if is_pg(db) else f"sqlite:///{db}") as s:  # sqlite:////abs/path (SQLAlchemy style)
        assert s.schema_version == LATEST
        s.create("sat", actor="t", now=T0)
    with open_lab(db) as s:
        assert s.schema_version == LATEST and len(s.find(service="sat")) == 1
        if not is_pg(db):
            assert s._query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"


def _schema_version(dsn):
    with open_lab(dsn) as s:
        return s.schema_version


def test_first_open_by_many_at_once_migrates_once(db):
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(_schema_version, [db] * 8))
    assert versions == [LATEST] * 8
    with open_lab(db) as s:
        assert s._query("SELECT COUNT(*) AS n FROM schema_version")[0]["n"] == LATEST


def test_missing_file_opens_empty_without_creating_it(tmp_path):
    path = tmp_path / "absent.db"
    with open_lab(str(path), create=False) as s:
        assert s.find() == []
    assert not path.exists()
    with pytest.raises(TicketStoreError, match="cannot open the ticket store"):
        open_lab(str(tmp_path / "no" / "such" / "dir.db"))


def test_pg_schema_absent_reads_empty_and_creates_nothing(pg_schema):
    import psycopg
    with open_lab(pg_schema, create=False) as s:
        assert s.find() == [] and s.create("sat", actor="t", now=T0).changed  # check mode works on it
    with psycopg.connect(pg_schema) as raw:
        assert raw.execute("SELECT to_regclass('schema_version'), to_regclass('tickets')").fetchone() == (None, None)


def test_pg_unreachable_store_names_it_without_the_password(pg_server):
    for dsn in (pg_server.dsn(dbname="no_such_db", password="Hunter2-pw"),
                f"postgresql://postgres@127.0.0.1:{pg_server.port}/tickets?password=Hunter2-pw&connect_timeout=5"
                f"&options=-csearch_path%3Dt0&sslmode=bogus"):
        with pytest.raises(TicketStoreError, match="cannot open the ticket store postgresql://") as err:
            open_lab(dsn)
        assert "Hunter2" not in str(err.value) and "********" in str(err.value)


def test_sla_due_dates_and_breach_flags(store):
    ticket = store.create("renapo", actor="t", received_at=T0, now=T0).ticket
    # arrival Friday 10:00 (in hours): the 5th business day after it, Feb 2 (Constitución) skipped, at close
    assert ticket["first_contact_due"] == "2026-02-09T18:00:00-06:00"
    late = datetime(2026, 2, 10, 9, 0, tzinfo=CDMX)
    ticket = store.transition(ticket["id"], "folio_issued", actor="t", now=late).ticket
    assert ticket["sla_first_contact_breached"] is True
    ticket = store.transition(ticket["id"], "requester_validated", actor="t", now=late).ticket
    friday = datetime(2026, 3, 13, 17, 0, tzinfo=CDMX)
    ticket = store.transition(ticket["id"], "certificate_received", actor="t", now=friday).ticket
    assert ticket["attention_due"] == "2026-03-17T18:00:00-06:00"  # Juárez's day (Mar 16) skipped; at close
    ticket = store.transition(ticket["id"], "deploying", actor="t", hosts=["web01"],
                              now=datetime(2026, 3, 17, 16, 0, tzinfo=CDMX)).ticket
    assert ticket["sla_attention_breached"] is False
    ticket = store.transition(ticket["id"], "deployed", actor="t", verified_hosts=["web01"],
                              now=datetime(2026, 3, 17, 18, 1, tzinfo=CDMX)).ticket
    assert ticket["sla_attention_breached"] is True and ticket["attended_at"] == "2026-03-17T18:01:00-06:00"


def test_sla_policy_of_the_store_is_used(db):
    from ansible.module_utils.sla import SlaPolicy
    with open_lab(db, SlaPolicy.from_options({"renapo": {"first_contact": 1}}, ["2026-02-03"], providers=LAB)) as s:
        assert s.create("renapo", actor="t", now=T0).ticket["first_contact_due"] == "2026-02-04T18:00:00-06:00"


# --- the Mesa's lifecycle: cancel, duplicate-of, reopen, new delivery, expiry tickets, notices ------------------
def test_cancel_needs_a_reason_stops_the_clocks_and_is_final(store):
    ticket = store.create("renapo", actor="mesa", received_at=T0, now=T0).ticket  # first contact due Feb 9 18:00
    with pytest.raises(TicketStoreError, match="cancelling a ticket needs a reason"):
        store.transition(ticket["id"], "cancelled", actor="mesa", now=T0)
    at = datetime(2026, 2, 2, 12, 0, tzinfo=CDMX)
    cancelled = store.transition(ticket["id"], "cancelled", actor="mesa", reason="el solicitante la retiró",
                                 now=at).ticket
    assert cancelled["state"] == "cancelled" and cancelled["allowed_next"] == []
    assert cancelled["closed_at"] == "2026-02-02T12:00:00-06:00"
    assert cancelled["close_reason"] == "el solicitante la retiró"
    assert cancelled["first_contact_at"] is None  # a cancellation is no contact with the requester
    # the clock stopped before its term: no status, even long after the term
    clock = SlaPolicy().ticket_status(cancelled, datetime(2026, 3, 1, tzinfo=CDMX))["first_contact"]
    assert clock["status"] is None and clock["stopped_at"] == "2026-02-02T12:00:00-06:00"
    last = store.audit(ticket["id"])[-1]
    assert (last["from_state"], last["to_state"], last["reason"]) == ("received", "cancelled",
                                                                       "el solicitante la retiró")
    with pytest.raises(InvalidTransition, match="none \\(final state\\)"):
        store.transition(ticket["id"], "reopened", actor="mesa", reason="x", now=at)
    # cancelled after its term: the breach stays on record
    late = store.create("sat", actor="mesa", received_at=T0, now=T0).ticket
    late = store.transition(late["id"], "cancelled", actor="mesa", reason="sin respuesta",
                            now=datetime(2026, 2, 10, 9, 0, tzinfo=CDMX)).ticket
    assert late["sla_first_contact_breached"] is True
    assert SlaPolicy().ticket_status(late, datetime(2026, 3, 1, tzinfo=CDMX))["first_contact"]["status"] == "breached"


def test_cancel_from_deploying_is_allowed_and_audited(store):
    clock = Clock()
    ticket = drive(store, clock, new_ticket(store, clock)["id"], "deploying")
    cancelled = store.transition(ticket["id"], "cancelled", actor="mesa", reason="RENAPO retiró el certificado",
                                 now=clock()).ticket
    assert cancelled["state"] == "cancelled" and cancelled["hosts"] == ["web01", "web02"]


def test_duplicate_points_to_an_existing_original(store):
    clock = Clock()
    original = drive(store, clock, new_ticket(store, clock)["id"], "folio_issued")
    copy = new_ticket(store, clock)
    with pytest.raises(TicketStoreError, match="needs duplicate_of"):
        store.transition(copy["id"], "duplicate", actor="mesa", now=clock())
    with pytest.raises(TicketNotFound, match="no such ticket"):
        store.transition(copy["id"], "duplicate", actor="mesa", duplicate_of="DGTIC-RENAPO-2026-000999",
                         now=clock())
    with pytest.raises(TicketStoreError, match="duplicate of itself"):
        store.transition(copy["id"], "duplicate", actor="mesa", duplicate_of=str(copy["id"]), now=clock())
    with pytest.raises(TicketStoreError, match="names the original of a ticket marked 'duplicate'"):
        store.transition(copy["id"], "cancelled", actor="mesa", reason="x", duplicate_of="1", now=clock())
    marked = store.transition(copy["id"], "duplicate", actor="mesa", duplicate_of=original["folio"],
                              now=clock()).ticket
    assert marked["state"] == "duplicate" and marked["duplicate_of"] == original["id"]
    assert marked["close_reason"] == f"duplicado de {original['folio']}" and marked["allowed_next"] == []
    assert store.audit(copy["id"])[-1]["reason"] == f"duplicado de {original['folio']}"
    # a third copy pointing at the duplicate is sent to the original
    third = new_ticket(store, clock)
    with pytest.raises(TicketStoreError, match=f"is itself a duplicate of {original['folio']}"):
        store.transition(third["id"], "duplicate", actor="mesa", duplicate_of=str(copy["id"]), now=clock())
    assert store.get(third["id"])["state"] == "received"
    assert store.get(original["id"])["state"] == "folio_issued"  # the original is untouched


def closed_ticket(store, at):
    """A request closed at `at` through the rejection path (no hosts to verify)."""
    ticket = new_ticket(store, Clock(at - timedelta(hours=1)))
    for state in ("folio_issued", "rejected", "notified"):
        store.transition(ticket["id"], state, actor="mesa", now=at - timedelta(minutes=30), **STEP_DATA.get(state, {}))
    return store.transition(ticket["id"], "closed", actor="mesa", now=at).ticket


def test_reopen_within_ten_business_days_of_the_close(store):
    # Closed Friday 2026-12-18 17:00. Business days after it (by the calendar): Dec 21, 22, 23, 24 (1-4), Dec 25
    # Christmas, Dec 28, 29, 30, 31 (5-8), Jan 1 New Year, Jan 4 (9), Jan 5 (10): reopenable until Tuesday
    # 2027-01-05 18:00 local.
    closed = closed_ticket(store, datetime(2026, 12, 18, 17, 0, tzinfo=CDMX))
    assert closed["closed_at"] == "2026-12-18T17:00:00-06:00" and closed["allowed_next"] == ["reopened"]
    with pytest.raises(TicketStoreError, match="reopening a ticket needs a reason"):
        store.transition(closed["id"], "reopened", actor="mesa", now=datetime(2026, 12, 21, 10, 0, tzinfo=CDMX))
    late = datetime(2027, 1, 5, 18, 1, tzinfo=CDMX)
    with pytest.raises(ReopenRefused) as err:
        store.transition(closed["id"], "reopened", actor="mesa", reason="sigue fallando", now=late)
    assert "could be reopened until 2027-01-05T18:00:00-06:00 (10 business days" in str(err.value)
    assert "open a new ticket" in str(err.value) and isinstance(err.value, InvalidTransition)
    assert store.get(closed["id"])["state"] == "closed"
    reopened = store.transition(closed["id"], "reopened", actor="mesa", reason="sigue fallando",
                                now=datetime(2027, 1, 5, 17, 59, tzinfo=CDMX)).ticket
    assert reopened["state"] == "reopened" and reopened["closed_at"] is None and reopened["close_reason"] is None
    assert reopened["allowed_next"] == ["requester_validated", "certificate_received", "deploying", "notified",
                                        "cancelled", "duplicate"]
    assert [(a["from_state"], a["to_state"], a["reason"]) for a in store.audit(closed["id"])][-1] == (
        "closed", "reopened", "sigue fallando")
    store.transition(closed["id"], "notified", actor="mesa", now=datetime(2027, 1, 6, 10, 0, tzinfo=CDMX))
    again = store.transition(closed["id"], "closed", actor="mesa", now=datetime(2027, 1, 6, 11, 0, tzinfo=CDMX))
    assert again.ticket["closed_at"] == "2027-01-06T11:00:00-06:00"


def test_reopen_window_is_configurable(db):
    # No window: reopenable until close of business of the day it closed (Friday 2026-12-18 18:00).
    with open_lab(db, SlaPolicy.from_options(reopen_business_days=0)) as s:
        early = closed_ticket(s, datetime(2026, 12, 18, 17, 0, tzinfo=CDMX))
        late = closed_ticket(s, datetime(2026, 12, 18, 17, 10, tzinfo=CDMX))
        s.transition(early["id"], "reopened", actor="mesa", reason="r", now=datetime(2026, 12, 18, 17, 30, tzinfo=CDMX))
        with pytest.raises(ReopenRefused, match="until 2026-12-18T18:00:00-06:00 \\(0 business days"):
            s.transition(late["id"], "reopened", actor="mesa", reason="r",
                         now=datetime(2026, 12, 21, 9, 0, tzinfo=CDMX))


def test_new_delivery_after_a_rollback_starts_a_new_attention_clock(store):
    clock = Clock()
    ticket = drive(store, clock, new_ticket(store, clock)["id"], "deploying")
    store.transition(ticket["id"], "rolled_back", actor="renew", verified_hosts=["web01"], cause="cadena incompleta",
                     now=clock())
    at = datetime(2026, 2, 3, 10, 0, tzinfo=CDMX)  # Tuesday: attention (1 day) due Wednesday at close
    redelivered = store.transition(ticket["id"], "certificate_received", actor="intake", serial="0C0D",
                                   now=at).ticket
    assert redelivered["state"] == "certificate_received" and redelivered["deployed_serial"] == "0C0D"
    assert redelivered["certificate_received_at"] == "2026-02-03T10:00:00-06:00"
    assert redelivered["attention_due"] == "2026-02-04T18:00:00-06:00"
    assert redelivered["verified_hosts"] == []  # verification belongs to the old certificate
    assert redelivered["allowed_next"] == ["deploying", "cancelled", "duplicate"]
    assert store.audit(ticket["id"])[-1]["serial"] == "0C0D"


def test_expiry_ticket_short_path_and_reason(store):
    ticket = store.create("renapo", actor="monitor", source="monitor", hosts=["consulta-01"], now=T0).ticket
    assert ticket["allowed_next"] == ["acknowledged", "closed", "cancelled", "duplicate"]
    with pytest.raises(InvalidTransition, match="allowed next: acknowledged, closed, cancelled, duplicate"):
        store.transition(ticket["id"], "folio_issued", actor="mesa", now=T0)
    acknowledged = store.transition(ticket["id"], "acknowledged", actor="mesa", now=T0 + timedelta(hours=1)).ticket
    assert acknowledged["first_contact_at"] == "2026-01-30T11:00:00-06:00"  # acknowledging is the first contact
    with pytest.raises(TicketStoreError, match="closing expiry ticket #1 needs a reason"):
        store.transition(ticket["id"], "closed", actor="mesa", now=T0 + timedelta(hours=2))
    closed = store.transition(ticket["id"], "closed", actor="mesa", reason="renovado en consulta-01",
                              now=T0 + timedelta(hours=2)).ticket
    assert closed["close_reason"] == "renovado en consulta-01" and closed["allowed_next"] == ["reopened"]
    # or straight from received, as the scan does
    direct = store.create("renapo", actor="monitor", source="monitor", now=T0).ticket
    assert store.transition(direct["id"], "closed", actor="monitor", reason="retirado del registro",
                            now=T0).ticket["state"] == "closed"


def test_one_open_ticket_per_event(store):
    key = "expiry:renapo:" + "ab" * 32
    first = store.create("renapo", actor="monitor", source="monitor", event_key=key, hosts=["consulta-01"],
                         reason="umbral 30", now=T0)
    again = store.create("renapo", actor="monitor", source="monitor", event_key=key, hosts=["consulta-01"],
                         now=T0 + timedelta(days=1))
    assert first.changed and not again.changed and again.ticket["id"] == first.ticket["id"]
    more = store.create("renapo", actor="monitor", source="monitor", event_key=key,
                        hosts=["consulta-02", "consulta-01"], note="umbral 15", now=T0 + timedelta(days=2))
    assert more.changed and more.ticket["id"] == first.ticket["id"]
    assert more.ticket["hosts"] == ["consulta-01", "consulta-02"] and more.ticket["event_key"] == key
    assert [a["to_state"] for a in store.audit(first.ticket["id"])] == ["received", "received"]
    assert len(store.find(event_key=key)) == 1
    store.transition(first.ticket["id"], "closed", actor="monitor", reason="renovado",
                     now=T0 + timedelta(days=3))
    # the event came back after its ticket closed: a new ticket; the old one cannot be reopened beside it
    recurrence = store.create("renapo", actor="monitor", source="monitor", event_key=key, now=T0 + timedelta(days=4))
    assert recurrence.changed and recurrence.ticket["id"] != first.ticket["id"]
    with pytest.raises(ReopenRefused, match=f"is open for the same event \\({key}\\)"):
        store.transition(first.ticket["id"], "reopened", actor="mesa", reason="r", now=T0 + timedelta(days=4))
    assert [t["id"] for t in store.find(source="monitor", open_only=True)] == [recurrence.ticket["id"]]


def test_a_notice_is_recorded_once(store):
    clock = Clock()
    ticket = new_ticket(store, clock)
    key = "sla:first_contact:due_soon:2026-02-09T18:00:00-06:00"
    sent = store.record_notice(ticket["id"], key, actor="sla.watch", detail="aviso a la Mesa", now=clock())
    assert sent.changed and [n["key"] for n in sent.ticket["notices"]] == [key]
    assert store.record_notice(ticket["id"], key, actor="sla.watch", now=clock()).changed is False
    last = store.audit(ticket["id"])[-1]
    assert (last["from_state"], last["to_state"], last["reason"]) == ("received", "received", "aviso a la Mesa")
    assert len(store.audit(ticket["id"])) == 2


# --- migration v2 -> v3 --------------------------------------------------------------------------------------
def open_v2(dsn):
    """A store that stops at schema version 2, as the product shipped it before the service desk's lifecycle."""
    if is_pg(dsn):
        return type("V2", (PostgresTicketStore,), {"migrations": POSTGRESQL_MIGRATIONS[:2]})(dsn, providers=LAB)
    return type("V2", (SqliteTicketStore,), {"migrations": SQLITE_MIGRATIONS[:2]})(dsn, providers=LAB)


def test_upgrade_from_version_2_keeps_every_ticket_and_keys_the_expiry_events(db):
    sha = "cd" * 32
    with open_v2(db) as old:
        assert old.schema_version == 2
        clock = Clock()
        request = drive(old, clock, new_ticket(old, clock, message_id="<r@m>")["id"], "notified")
        # v2 kept one expiry ticket per threshold crossing
        crossings = [old.create("renapo", actor="monitor", source="monitor", message_id=f"expiry:renapo:{sha}:{t}",
                                hosts=["consulta-01"], now=clock()).ticket["id"] for t in (30, 15)]
        # v2 closed a ticket by its own code: the state and one audit row
        closing = datetime(2026, 12, 18, 17, 0, tzinfo=CDMX).isoformat()
        old._query("UPDATE tickets SET state = 'closed', updated_at = ? WHERE id = ?", (closing, request["id"]))
        old._query("INSERT INTO audit_log (ticket_id, at, actor, from_state, to_state, reason, hosts)"
                   " VALUES (?, ?, 'mesa', 'notified', 'closed', NULL, '[]')", (request["id"], closing))
        before = {t["id"]: t for t in old.find()}
        audit = old._query("SELECT * FROM audit_log ORDER BY id")
    with open_lab(db) as new:
        assert new.schema_version == LATEST == 5
        assert new._query("SELECT * FROM audit_log ORDER BY id") == audit
        lifecycle = ("closed_at", "close_reason", "duplicate_of", "event_key", "notices", "allowed_next")
        for ticket in new.find():
            assert {k: v for k, v in ticket.items() if k not in lifecycle} == {
                k: v for k, v in before[ticket["id"]].items() if k not in lifecycle}
        upgraded = new.get(request["id"])
        assert upgraded["closed_at"] == "2026-12-18T17:00:00-06:00" and upgraded["allowed_next"] == ["reopened"]
        assert [new.get(i)["event_key"] for i in crossings] == [f"expiry:renapo:{sha}"] * 2
        assert upgraded["event_key"] is None and upgraded["notices"] == []
        # the closed ticket's window runs from its recorded close (Friday 2026-12-18 -> Tuesday 2027-01-05)
        with pytest.raises(ReopenRefused, match="until 2027-01-05T18:00:00-06:00"):
            new.transition(request["id"], "reopened", actor="mesa", reason="r",
                           now=datetime(2027, 1, 6, 9, 0, tzinfo=CDMX))
        new.transition(request["id"], "reopened", actor="mesa", reason="r", now=datetime(2027, 1, 5, 9, tzinfo=CDMX))
        # the scan finds the event's newest open ticket instead of opening another
        found = new.create("renapo", actor="monitor", source="monitor", event_key=f"expiry:renapo:{sha}",
                           hosts=["consulta-02"], now=clock())
        assert found.ticket["id"] == crossings[-1] and found.ticket["hosts"] == ["consulta-01", "consulta-02"]
    with open_lab(db) as again:  # reopening applies nothing twice
        assert again.schema_version == LATEST and len(again.find()) == 3


# --- secrets -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def key_material():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "consulta.example")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime(2026, 1, 1)).not_valid_after(datetime(2027, 1, 1))
            .sign(key, hashes.SHA256()))
    p12 = pkcs12.serialize_key_and_certificates(b"x", key, cert, None, serialization.BestAvailableEncryption(b"pw"))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"pw")).decode()
    sec1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()
    return {"pem": pem, "encrypted": encrypted, "sec1": sec1, "p12": p12, "p12_b64": base64.b64encode(p12).decode()}


SECRET_CASES = [
    ("note", "pem"), ("reason", "encrypted"), ("cause", "sec1"), ("note", "p12_b64"), ("reason", "p12"),
]


@pytest.mark.parametrize("field, kind", SECRET_CASES)
def test_store_refuses_key_material(store, db, key_material, field, kind):
    ticket = new_ticket(store, Clock())
    with pytest.raises(SecretMaterialError) as err:
        store.transition(ticket["id"], "folio_issued", actor="t", **{field: key_material[kind]})
    assert "never" in str(err.value) and "MII" not in str(err.value)
    with pytest.raises(SecretMaterialError):
        store.create("renapo", actor="t", note=key_material[kind])
    assert store.get(ticket["id"])["state"] == "received"


@pytest.mark.parametrize("requester", [{"name": "Ana", "password": "hunter2"}, {"name": "Ana", "passphrase": "x"},
                                       {"name": "Ana", "p12_password": "x"}, {"name": "Ana", "private_key": "x"}])
def test_store_refuses_secret_field_names(store, requester):
    with pytest.raises(SecretMaterialError, match="never holds passphrases"):
        store.create("renapo", actor="t", requester=requester)
    assert store.find() == []


def test_no_key_bytes_reach_the_file(store, db, key_material, request):
    ticket = new_ticket(store, Clock())
    for value in key_material.values():
        with pytest.raises(SecretMaterialError):
            store.annotate(ticket["id"], value, actor="t")
    store.close()
    from pathlib import Path
    if is_pg(db):  # every file of the cluster: tables, WAL, logs
        files = Path(request.getfixturevalue("pg_server").base).rglob("*")
    else:
        files = Path(db).parent.glob("tickets.db*")
    blob = b"".join(p.read_bytes() for p in files if p.is_file())
    assert b"PRIVATE KEY" not in blob and key_material["p12_b64"][:40].encode() not in blob


# --- concurrency: OS processes, 200 transitions each --------------------------------------------------------
STEPS = ["folio_issued", "requester_validated", "certificate_received", "deploying", "deployed"]
TICKETS_PER_WORKER, SHARED_UPDATES = 30, 50  # 30 x 5 transitions + 50 shared-ticket updates = 200 writes


def _worker(path, worker, shared_id, barrier, results):
    rng = random.Random(worker)
    try:
        with open_lab(path) as s:
            barrier.wait(timeout=30)
            ids = [s.create("renapo" if i % 2 == 0 else "sat", actor=f"w{worker}", now=T0,
                            message_id=f"<w{worker}-{i}@test>").ticket["id"] for i in range(TICKETS_PER_WORKER)]
            ticket_ops = [(tid, step) for step in STEPS for tid in ids]
            shared = iter(range(SHARED_UPDATES))
            for n, (tid, step) in enumerate(ticket_ops):
                data = {"hosts": [f"w{worker}-t{tid}"]} if step == "deploying" else {}
                if step == "deployed":
                    data = {"verified_hosts": [f"w{worker}-t{tid}"]}
                time.sleep(rng.uniform(0, 0.002))  # a playbook does work between transitions; lets writers interleave
                s.transition(tid, step, actor=f"w{worker}", now=T0, **data)
                if n % 3 == 2:  # interleave the read-modify-write of the shared ticket's host lists
                    i = next(shared)
                    s.transition(shared_id, "deploying", actor=f"w{worker}", now=T0,
                                 verified_hosts=[f"w{worker}-h{i}"])
            for i in shared:
                s.transition(shared_id, "deploying", actor=f"w{worker}", now=T0, verified_hosts=[f"w{worker}-h{i}"])
        results.put((worker, "ok"))
    except Exception as e:  # reported to the parent, which fails the test with it
        results.put((worker, repr(e)))


def run_writers(db, workers):
    """`workers` processes drive their own tickets and the shared one at once; assert that nothing was lost."""
    clock = Clock()
    with open_lab(db) as s:
        shared = drive(s, clock, new_ticket(s, clock)["id"], "deploying")
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    numbers = range(1, workers + 1)
    procs = [ctx.Process(target=_worker, args=(db, w, shared["id"], barrier, results)) for w in numbers]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert outcomes == {w: "ok" for w in numbers}

    with open_lab(db) as s:
        tickets = s.find()
        assert len(tickets) == 1 + workers * TICKETS_PER_WORKER
        worker_tickets = [t for t in tickets if t["id"] != shared["id"]]
        assert all(t["state"] == "deployed" for t in worker_tickets)
        assert all(t["verified_hosts"] == t["hosts"] and len(t["hosts"]) == 1 for t in worker_tickets)
        per_service = workers * TICKETS_PER_WORKER // 2  # workers alternate renapo / sat
        for service, n in (("renapo", per_service + 1), ("sat", per_service)):
            folios = sorted(t["folio"] for t in tickets if t["service"] == service)
            assert folios == [f"DGTIC-{service.upper()}-2026-{i:06d}" for i in range(1, n + 1)]  # no gap, no dup
        hub = s.get(shared["id"])
        expected = {f"w{w}-h{i}" for w in numbers for i in range(SHARED_UPDATES)}
        assert set(hub["verified_hosts"]) == expected and len(hub["verified_hosts"]) == len(expected)  # no lost
        audit_rows = s._query("SELECT COUNT(*) AS n FROM audit_log")[0]["n"]
        setup = 1 + len(shortest_path("deploying"))  # the shared ticket's create and its way to deploying
        # each worker: 30 creates + 150 ticket transitions + 50 shared-ticket updates
        assert audit_rows == setup + workers * (TICKETS_PER_WORKER + len(STEPS) * TICKETS_PER_WORKER + SHARED_UPDATES)
        assert len(s.audit(shared["id"])) == setup + workers * SHARED_UPDATES
        actors = [r["actor"] for r in s._query("SELECT actor FROM audit_log WHERE actor LIKE 'w_' ORDER BY id")]
        switches = sum(a != b for a, b in zip(actors, actors[1:], strict=False))
        assert switches > 10, f"the two writers barely overlapped ({switches} switches); not a concurrency test"


def test_two_processes_200_transitions_each(db):
    run_writers(db, 2)


def test_four_processes_200_transitions_each_on_postgresql(pg_schema):
    run_writers(pg_schema, 4)
