"""The ticket store learns the provider registry (schema v5), on a real SQLite file and a real PostgreSQL server:
the providers table, the database's own refusal of an unregistered provider, the refusal to forget a provider that
has rows, a third provider defined in inventory only, and the upgrade of a v4 store that keeps every row and the
audit chain."""
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from ansible.module_utils.ticket_store import (
    POSTGRESQL_MIGRATIONS,
    SQLITE_MIGRATIONS,
    AnchorRegistryError,
    PostgresTicketStore,
    SqliteTicketStore,
    TicketStoreError,
    open_store,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.providers import THIRD_PROVIDER, lab_providers

pytest_plugins = ["tests.pg"]  # pg_server (session), store_dsn (sqlite | postgresql)

CDMX = timezone(timedelta(hours=-6))
T0 = datetime(2026, 12, 18, 17, 0, tzinfo=CDMX)  # Friday, within business hours
LAB = lab_providers()
WITH_INE = lab_providers(**THIRD_PROVIDER)
REFUSED = (TicketStoreError, sqlite3.IntegrityError)


def is_pg(dsn):
    return dsn.startswith("postgresql://")


@pytest.fixture
def db(store_dsn):
    return store_dsn


def anchor_pem(cn="INE Raíz 2026"):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(11).not_valid_before(T0 - timedelta(days=1)).not_valid_after(T0 + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_fresh_store_registers_the_inventory_registry(db):
    with open_store(db, providers=LAB) as store:
        assert store.schema_version == len(SQLITE_MIGRATIONS) == len(POSTGRESQL_MIGRATIONS) == 5
        registered = store.registered_providers()
        assert {name: p["kind"] for name, p in registered.items()} == {"renapo": "trust", "sat": "identity"}
        assert store.register_providers(LAB) == {"added": [], "updated": [], "removed": []}  # idempotent
        assert store.register_providers(WITH_INE) == {"added": ["ine"], "updated": [], "removed": []}
        changed = lab_providers(ine={**THIRD_PROVIDER["ine"], "kind": "identity"})
        assert store.register_providers(changed) == {"added": [], "updated": ["ine"], "removed": []}
        assert store.register_providers(LAB) == {"added": [], "updated": [], "removed": ["ine"]}  # no rows: forgotten
        assert set(store.registered_providers()) == {"renapo", "sat"}


def test_a_third_provider_defined_in_inventory_only(db):
    with open_store(db, providers=WITH_INE) as store:
        ticket = store.create("ine", actor="mesa", now=T0, received_at=T0).ticket
        # INE's own days (inventory): first contact 3 business days after Friday 18 Dec 2026: Mon 21, Tue 22, Wed 23.
        assert ticket["first_contact_due"] == "2026-12-23T18:00:00-06:00"
        issued = store.transition(ticket["id"], "folio_issued", actor="mesa", now=T0).ticket
        assert issued["folio"] == "DGTIC-INE-2026-000001"
        store.transition(ticket["id"], "requester_validated", actor="enlace", now=T0)
        # Attention 2 business days after Monday 21 Dec 10:00: Tue 22, Wed 23 -> Wednesday 23 Dec 18:00.
        received = store.transition(ticket["id"], "certificate_received", actor="intake", serial="0B0C",
                                    now=datetime(2026, 12, 21, 10, 0, tzinfo=CDMX)).ticket
        assert received["attention_due"] == "2026-12-23T18:00:00-06:00"
        anchor = store.anchor_record("ine", anchor_pem(), actor="intake", ticket=issued["folio"])
        assert anchor["provider"] == "ine" and anchor["state"] == "pending"
        assert store.fleet_lock("ine", "job-1 (ana)", now=T0)["acquired"]
        assert store.verify_audit() is None
    # Dropping INE from the inventory is refused while the store holds its rows, naming them.
    with pytest.raises(TicketStoreError, match=r"no longer has 'ine' \(1 in tickets, 1 in trust_anchors, .*1 in "
                                               r"fleet_locks\).* registry has renapo, sat"):
        open_store(db, providers=LAB)


def test_a_provider_nobody_registered_is_refused_by_the_code_and_by_the_database(db):
    with open_store(db, providers=LAB) as store:
        with pytest.raises(TicketStoreError, match=r"unknown provider 'ine' for a ticket; the provider registry "
                                                   r"\(procedure_providers\) has renapo, sat"):
            store.create("ine", actor="mesa", now=T0)
        ticket = store.create("renapo", actor="mesa", now=T0).ticket
        with pytest.raises(TicketStoreError, match="unknown provider 'ine'"):
            store.transition(ticket["id"], "received", actor="mesa", request={"service": "ine"}, now=T0)
        with pytest.raises(AnchorRegistryError, match="unknown provider 'ine'; the provider registry"):
            store.fleet_lock("ine", "job-1", now=T0)
        # Written around the store's API, the database itself refuses it (foreign keys to providers).
        for sql, params in (
                ("UPDATE tickets SET service = 'ine' WHERE id = ?", (ticket["id"],)),
                ("INSERT INTO fleet_locks (provider, holder, acquired_at, expires_at) VALUES ('ine', 'x', 'x', 'x')",
                 ()),
                ("INSERT INTO trust_anchors (provider, fingerprint, subject, not_before, not_after, pem, state,"
                 " created_at, created_by) VALUES ('ine', ?, 's', 'x', 'x', 'x', 'pending', 'x', 'x')",
                 (":".join(["AB"] * 32),))):
            with pytest.raises(REFUSED, match="(?i)foreign key"):
                store._query(sql, params)
        assert store.get(ticket["id"])["service"] == "renapo"


def test_without_the_registry_the_store_reads_but_writes_no_ticket(db):
    with open_store(db, providers=LAB) as store:
        store.create("sat", actor="mesa", now=T0)
    with open_store(db) as reader:
        assert [t["service"] for t in reader.find()] == ["sat"]
        with pytest.raises(TicketStoreError, match="needs the provider registry: open the store with providers="):
            reader.create("sat", actor="mesa", now=T0)
        # Anchors and locks of a provider registered before are still recorded (the table knows it).
        assert reader.fleet_lock("sat", "job-2", now=T0)["acquired"]
        with pytest.raises(AnchorRegistryError, match="the store's registered providers has renapo, sat"):
            reader.fleet_lock("ine", "job-2", now=T0)


def test_check_mode_registers_nothing(db):
    with open_store(db, providers=LAB) as store:
        store.create("renapo", actor="mesa", now=T0)
    with open_store(db, providers=WITH_INE, create=False) as preview:
        assert "ine" not in preview.registered_providers()  # a read-only open writes no registration
        assert preview.create("ine", actor="mesa", now=T0, dry_run=True).changed  # a dry run sees it in its tx
        assert "ine" not in preview.registered_providers()
    with open_store(db, providers=LAB) as store:
        assert set(store.registered_providers()) == {"renapo", "sat"} and len(store.find()) == 1


# --- migration v4 -> v5 ----------------------------------------------------------------------------------------
def open_v4(dsn):
    """A store that stops at schema version 4 (the audit chain, before the providers table)."""
    if is_pg(dsn):
        return type("V4", (PostgresTicketStore,), {"migrations": POSTGRESQL_MIGRATIONS[:4]})(dsn, providers=LAB)
    return type("V4", (SqliteTicketStore,), {"migrations": SQLITE_MIGRATIONS[:4]})(dsn, providers=LAB)


def test_upgrade_from_version_4_keeps_every_row_and_the_audit_chain(db):
    with open_v4(db) as old:
        assert old.schema_version == 4
        first = old.create("renapo", actor="mesa", source="mail", message_id="<a@m>", now=T0).ticket
        old.transition(first["id"], "folio_issued", actor="mesa", now=T0)
        old.create("sat", actor="mesa", now=T0)
        old.anchor_record("renapo", anchor_pem("RENAPO Raíz"), actor="intake",
                          evidence=[{"kind": "operator", "detail": "leído en el oficio"}], now=T0)
        old.fleet_lock("sat", "job-9 (luis)", now=T0)
        before = {table: old._query(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608 - constant names
                  for table in ("tickets", "audit_log", "trust_anchors", "anchor_evidence", "registry_audit",
                                "fleet_locks", "audit_chain", "folio_counters")}
        head = old.audit_head()
        assert old.verify_audit() is None
    with open_store(db) as new:  # the migration alone: the providers the rows name, kind unknown until registered
        assert new.schema_version == 5
        assert new.registered_providers().keys() == {"renapo", "sat"}
        assert {p["kind"] for p in new.registered_providers().values()} == {None}
        for table, rows in before.items():
            assert new._query(f"SELECT * FROM {table} ORDER BY 1") == rows, table  # noqa: S608
        assert new.audit_head() == head and new.verify_audit() is None
        if not is_pg(db):
            assert new._query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
            assert new._query("PRAGMA foreign_key_check") == []
            names = {r["name"] for r in new._query("SELECT name FROM sqlite_master WHERE tbl_name = 'tickets'")}
            assert {"tickets_state_audited", "tickets_no_replace", "tickets_service_state", "tickets_event"} <= names
    with open_store(db, providers=LAB) as again:  # the registry fills in the kinds; the chain goes on
        assert {n: p["kind"] for n, p in again.registered_providers().items()} == {"renapo": "trust",
                                                                                   "sat": "identity"}
        again.transition(first["id"], "requester_validated", actor="enlace", now=T0)
        next_id = again.create("renapo", actor="mesa", now=T0).ticket["id"]
        assert next_id > max(t["id"] for t in before["tickets"])  # no id reused after the table rebuild
        assert again.verify_audit() is None and again.audit_head()["entries"] == head["entries"] + 2
        with pytest.raises(REFUSED, match="(?i)foreign key"):
            again._query("UPDATE tickets SET service = 'imss' WHERE id = ?", (first["id"],))
        if not is_pg(db):  # the rebuilt table keeps its guard: a state change the audit does not announce
            with pytest.raises(sqlite3.IntegrityError, match="only through the ticket store"):
                again._query("UPDATE tickets SET state = 'closed' WHERE id = ?", (first["id"],))
