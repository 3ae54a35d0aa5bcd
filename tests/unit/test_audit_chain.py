"""The tamper-evident audit chain and the secret detector of the ticket store, attacked on real SQLite files and a
real PostgreSQL server; the ANSIBLE_DEBUG refusal and audit_verify run through ansible as ops run them."""
# ruff: noqa: S608 - the attacks are SQL written by hand, ids from the test itself
import base64
import json
import os
import re
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from ansible.module_utils.ticket_store import (
    POSTGRESQL_MIGRATIONS,
    SQLITE_MIGRATIONS,
    PostgresTicketStore,
    SecretMaterialError,
    SqliteTicketStore,
    TicketStoreError,
    chain_hash,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.unit.stores import LAB, open_lab

pytest_plugins = ["tests.pg"]

ROOT = Path(__file__).resolve().parents[2]
CDMX = timezone(timedelta(hours=-6))
T0 = datetime(2026, 1, 30, 10, 0, tzinfo=CDMX)


def at(minutes):
    return T0 + timedelta(minutes=minutes)


def is_pg(dsn):
    return dsn.startswith("postgresql://")


def self_signed(cn="RENAPO CA 2026"):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(T0 - timedelta(days=1)).not_valid_after(T0 + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def populate(store):
    """A ticket taken to `deploying`, another one opened, and an anchor recorded with evidence."""
    first = store.create("renapo", actor="mesa", source="mail", message_id="<a@m>", now=at(0)).ticket["id"]
    for n, state in enumerate(("folio_issued", "requester_validated", "certificate_received", "deploying"), 1):
        store.transition(first, state, actor="mesa", now=at(n), **({"serial": "0A1B"} if n == 3 else {}))
    second = store.create("sat", actor="mesa", now=at(6)).ticket["id"]
    _, cert = self_signed()
    store.anchor_record("renapo", cert.public_bytes(serialization.Encoding.PEM).decode(), actor="intake",
                        evidence=[{"kind": "operator", "detail": "leído en el portal"}], now=at(7))
    return first, second


@pytest.fixture
def db(store_dsn):
    return store_dsn


@pytest.fixture
def store(db):
    with open_lab(db) as s:
        yield s


def count(store, table):
    return store._query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]  # noqa: S608 - test constant


def test_every_audit_entry_is_chained_and_verifies(store):
    populate(store)
    assert store.verify_audit() is None
    head = store.audit_head()
    assert head["entries"] == count(store, "audit_log") + count(store, "registry_audit") > 7
    assert re.fullmatch(r"[0-9a-f]{64}", head["head"])


# --- SQLite: REPLACE and direct state writes are refused; a wholesale rewrite is evident ----------------------
def test_sqlite_refuses_replace_on_audit_tables_and_tickets(db):
    if is_pg(db):
        pytest.skip("REPLACE is SQLite's")
    with open_lab(db) as store:
        first, _ = populate(store)
        audit = store._query("SELECT * FROM audit_log ORDER BY id")
    conn = sqlite3.connect(db)  # as the sqlite3 CLI would
    attacks = [
        "REPLACE INTO audit_log (id, ticket_id, at, actor, from_state, to_state, reason, serial, hosts)"
        " VALUES (1, 1, 'x', 'mallory', NULL, 'received', 'forged', NULL, '[]')",
        "INSERT OR REPLACE INTO audit_log (id, ticket_id, at, actor, from_state, to_state, reason, serial, hosts)"
        " VALUES (2, 1, 'x', 'mallory', 'received', 'folio_issued', 'forged', NULL, '[]')",
        "REPLACE INTO registry_audit (id, at, actor, provider, action) VALUES (1, 'x', 'mallory', 'renapo', 'x')",
        "REPLACE INTO audit_chain (id, tbl, entry_id, entry_hash) VALUES (1, 'audit_log', 1, 'x')",
        "REPLACE INTO tickets (id, service, state, source, received_at, first_contact_due, created_at, updated_at)"
        f" VALUES ({first}, 'renapo', 'closed', 'mail', 'x', 'x', 'x', 'x')",
        f"UPDATE tickets SET state = 'closed' WHERE id = {first}",
        "UPDATE audit_chain SET entry_hash = 'x'", "DELETE FROM audit_chain",
    ]
    for sql in attacks:
        with pytest.raises(sqlite3.DatabaseError, match="never replaced|only through the ticket store|append-only"):
            conn.execute(sql)
    conn.close()
    with open_lab(db) as store:
        assert store._query("SELECT * FROM audit_log ORDER BY id") == audit
        assert store.get(first)["state"] == "deploying" and store.verify_audit() is None


def test_sqlite_direct_state_write_with_a_forged_audit_row_is_refused_or_evident(db):
    if is_pg(db):
        pytest.skip("the trigger is SQLite's")
    with open_lab(db) as store:
        first, _ = populate(store)
    conn = sqlite3.connect(db)
    # an audit row inserted by hand has no chain link: the state write is refused
    conn.execute("INSERT INTO audit_log (ticket_id, at, actor, from_state, to_state, reason, hosts)"
                 f" VALUES ({first}, 'x', 'mallory', 'deploying', 'deployed', 'forged', '[]')")
    with pytest.raises(sqlite3.DatabaseError, match="only through the ticket store"):
        conn.execute(f"UPDATE tickets SET state = 'deployed' WHERE id = {first}")
    conn.commit()
    conn.close()
    with open_lab(db) as store:
        forged = store._query("SELECT MAX(id) AS id FROM audit_log")[0]["id"]
        assert store.verify_audit() == {"table": "audit_log", "id": forged,
                                        "problem": "entry has no chain link (inserted outside the store's API)"}


def test_sqlite_file_rewritten_wholesale_is_evident(db):
    """The documented limit: whoever can open the file can drop the triggers. The chain still shows it."""
    if is_pg(db):
        pytest.skip("SQLite file")
    with open_lab(db) as store:
        first, _ = populate(store)
    conn = sqlite3.connect(db)
    triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    for name in triggers:
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("REPLACE INTO audit_log (id, ticket_id, at, actor, from_state, to_state, reason, serial, hosts)"
                 " SELECT id, ticket_id, at, 'mallory', from_state, to_state, reason, serial, hosts FROM audit_log"
                 " WHERE id = 2")
    conn.commit()
    conn.close()
    with open_lab(db) as store:
        broken = store.verify_audit()
        assert (broken["table"], broken["id"]) == ("audit_log", 2) and "hash does not match" in broken["problem"]


def test_sqlite_direct_state_write_without_triggers_is_named(db):
    if is_pg(db):
        pytest.skip("SQLite file")
    with open_lab(db) as store:
        first, second = populate(store)
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER tickets_state_audited")
    conn.execute(f"UPDATE tickets SET state = 'closed' WHERE id = {second}")
    conn.commit()
    conn.close()
    with open_lab(db) as store:
        assert store.verify_audit() == {
            "table": "tickets", "id": second,
            "problem": "state is 'closed' but its last audit entry says 'received': changed outside the store's API"}


# --- PostgreSQL: a direct UPDATE and a superuser's edit are named ---------------------------------------------
def test_postgres_direct_state_update_is_named(db):
    if not is_pg(db):
        pytest.skip("PostgreSQL")
    import psycopg
    with open_lab(db) as store:
        first, _ = populate(store)
    with psycopg.connect(db, autocommit=True) as conn:  # psql as the application role, bypassing the API
        with pytest.raises(psycopg.errors.RestrictViolation, match="only through the ticket store"):
            conn.execute("UPDATE tickets SET state = 'closed' WHERE id = %s", (first,))
        # an audit row inserted by hand in the same transaction has no chain link: still refused
        with pytest.raises(psycopg.errors.RestrictViolation), conn.transaction():
            conn.execute("INSERT INTO audit_log (ticket_id, at, actor, from_state, to_state, hosts)"
                         " VALUES (%s, 'x', 'mallory', 'deploying', 'closed', '[]')", (first,))
            conn.execute("UPDATE tickets SET state = 'closed' WHERE id = %s", (first,))
        # the table owner (or a superuser) can drop the trigger: verify_audit names the ticket
        with conn.transaction():
            conn.execute("ALTER TABLE tickets DISABLE TRIGGER tickets_state_audited")
            conn.execute("UPDATE tickets SET state = 'closed' WHERE id = %s", (first,))
            conn.execute("ALTER TABLE tickets ENABLE TRIGGER tickets_state_audited")
    with open_lab(db) as store:
        broken = store.verify_audit()
    assert (broken["table"], broken["id"]) == ("tickets", first) and "'closed'" in broken["problem"]


def test_postgres_superuser_edit_of_an_audit_row_is_named(db):
    if not is_pg(db):
        pytest.skip("PostgreSQL")
    import psycopg
    with open_lab(db) as store:
        populate(store)
    with psycopg.connect(db, autocommit=True) as conn:  # the superuser can switch the append-only trigger off
        with conn.transaction():
            conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 2")
            conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    with open_lab(db) as store:
        broken = store.verify_audit()
    assert (broken["table"], broken["id"]) == ("audit_log", 2) and "hash does not match" in broken["problem"]


# --- HMAC: a chain recomputed without the key is evident ------------------------------------------------------
def test_chain_recomputed_without_the_key_fails_the_hmac(db, tmp_path):
    key = os.urandom(32)
    with open_lab(db, audit_key=key) as store:
        populate(store)
        assert store.verify_audit() is None
    with open_lab(db, audit_key=b"another key of 32 bytes........") as other:
        broken = other.verify_audit()
        assert broken["id"] == 1 and "HMAC" in broken["problem"]
    # the insider rewrites row 2 and recomputes every hash after it (possible without the key)
    with open_lab(db, audit_key=key) as store:
        links = store._query("SELECT * FROM audit_chain ORDER BY id")
        rows = {(t, r["id"]): r for t in ("audit_log", "registry_audit")
                for r in store._query(f"SELECT * FROM {t}")}  # noqa: S608 - test constant
        rows[("audit_log", 2)]["actor"] = "mallory"
        previous, rewritten = None, []
        for link in links:
            previous = chain_hash(previous, link["tbl"], rows[(link["tbl"], link["entry_id"])])
            rewritten.append((previous, link["id"]))
        if is_pg(db):
            store._query("ALTER TABLE audit_log DISABLE TRIGGER USER")
            store._query("ALTER TABLE audit_chain DISABLE TRIGGER USER")
        else:
            for name in ("audit_log_no_update", "audit_chain_no_update"):
                store._query(f"DROP TRIGGER {name}")
        store._query("UPDATE audit_log SET actor = 'mallory' WHERE id = 2")
        for entry_hash, link_id in rewritten:
            store._query("UPDATE audit_chain SET entry_hash = ? WHERE id = ?", (entry_hash, link_id))
        if is_pg(db):
            store._query("ALTER TABLE audit_log ENABLE TRIGGER USER")
            store._query("ALTER TABLE audit_chain ENABLE TRIGGER USER")
    with open_lab(db, audit_key=None) as keyless:
        assert keyless.verify_audit() is None  # hashes alone cannot tell: that is what the key is for
    with open_lab(db, audit_key=key) as store:
        broken = store.verify_audit()
        assert (broken["table"], broken["id"]) == ("audit_log", 2) and "HMAC" in broken["problem"]


# --- migration v3 -> v4 ---------------------------------------------------------------------------------------
def open_v3(dsn):
    if is_pg(dsn):
        return type("V3", (PostgresTicketStore,), {"migrations": POSTGRESQL_MIGRATIONS[:3]})(dsn, providers=LAB)
    return type("V3", (SqliteTicketStore,), {"migrations": SQLITE_MIGRATIONS[:3]})(dsn, providers=LAB)


def test_migration_v3_to_v4_chains_existing_rows(db):
    with open_v3(db) as old:
        assert old.schema_version == 3
        first, _ = populate(old)
        audit = old._query("SELECT * FROM audit_log ORDER BY id")
        registry = old._query("SELECT * FROM registry_audit ORDER BY id")
    with open_lab(db) as new:
        assert new.schema_version == len(SQLITE_MIGRATIONS)  # v4, and every later one
        assert new._query("SELECT * FROM audit_log ORDER BY id") == audit
        assert new._query("SELECT * FROM registry_audit ORDER BY id") == registry
        links = new._query("SELECT tbl, entry_id FROM audit_chain ORDER BY id")
        assert links == ([{"tbl": "audit_log", "entry_id": r["id"]} for r in audit]
                         + [{"tbl": "registry_audit", "entry_id": r["id"]} for r in registry])
        assert new.verify_audit() is None
        new.transition(first, "deployed", actor="mesa", now=at(20))  # the chain goes on
        assert new.verify_audit() is None and new.audit_head()["entries"] == len(links) + 1


# --- secrets: every encoding of a key in a note is refused, the value never repeated --------------------------
@pytest.fixture(scope="module")
def keys():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key, cert = self_signed("p12")
    der = rsa_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    ec_der = ec_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    p12 = pkcs12.serialize_key_and_certificates(b"x", ec_key, cert, None, serialization.BestAvailableEncryption(b"pw"))
    b64 = base64.b64encode(der).decode()
    return {
        "pem": rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode(),
        "base64_der": "llave: " + b64,
        "base64_der_cut_4": "ver " + b64[4:],
        "base64_der_cut_1": "ver " + b64[1:200],
        "base64_wrapped": "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)),
        "base64_p12": "adjunto " + base64.b64encode(p12).decode()[7:],
        "hex_der": "hex " + der.hex(),
        "hex_der_spaced": "hex " + " ".join(f"{b:02x}" for b in ec_der),
        "hex_der_colons": ":".join(f"{b:02X}" for b in ec_der[3:]),
        "passphrase": "passphrase=hunter2",
        "password": "la password: Hunter2!",
        "contrasena": "contraseña: hunter2",
    }


@pytest.mark.parametrize("kind", ["pem", "base64_der", "base64_der_cut_4", "base64_der_cut_1", "base64_wrapped",
                                  "base64_p12", "hex_der", "hex_der_spaced", "hex_der_colons", "passphrase",
                                  "password", "contrasena"])
def test_each_key_encoding_is_refused_everywhere(store, keys, kind):
    value = keys[kind]
    ticket = store.create("renapo", actor="mesa", now=at(0)).ticket["id"]
    attempts = [
        lambda: store.annotate(ticket, value, actor="mesa", now=at(1)),
        lambda: store.transition(ticket, "cancelled", actor="mesa", reason=value, now=at(1)),
        lambda: store.transition(ticket, "observations", actor="mesa", cause=value, now=at(1)),
        lambda: store.create("renapo", actor="mesa", message_id=f"<{value}@x>", now=at(1)),
        lambda: store.create("renapo", actor="mesa", requester={"name": "Ana", "unit": value}, now=at(1)),
        lambda: store.anchor_add_evidence("renapo", "AB" * 32, "operator", value, actor="mesa", now=at(1)),
    ]
    words = {"passphrase", "password", "contraseña", "adjunto"}
    secret_bits = [part for part in re.split(r"[\s:=]+", value) if len(part) >= 6 and part not in words]
    for attempt in attempts:
        with pytest.raises(SecretMaterialError) as err:
            attempt()
        message = str(err.value)
        assert "never holds" in message and not any(bit in message for bit in secret_bits), message
    assert len(store.find()) == 1 and store.get(ticket)["state"] == "received"
    assert store.get(ticket)["observations"] == [] and store.anchor_evidence("renapo", "AB" * 32) == []


@pytest.mark.parametrize("text", [
    "La consulta por CURP falla desde el 3 de marzo; el solicitante adjunta captura.",
    "huella SHA-256 " + ":".join(["AB"] * 32),
    "huellas " + "ab" * 32 + " y " + "cd" * 32,
    "expiry:renapo:" + "cd" * 32,
    "ver https://consultas.curp.gob.mx/CurpSP/gobmx/inicio.jsp?id=12345 y el oficio DGTIC/SOAS/0042/2026",
    "la contraseña se entrega por otro canal",
])
def test_ordinary_texts_are_kept(store, text):
    ticket = store.create("renapo", actor="mesa", note=text, now=at(0)).ticket
    assert ticket["observations"][0]["note"] == text


# --- ANSIBLE_DEBUG: a play that handles a key refuses to run -------------------------------------------------
def ad_hoc(module, args, *flags, **env):
    """(status word, result) of `ansible localhost -m module`, as ops run it from the project root."""
    proc = subprocess.run([str(ROOT / ".venv/bin/ansible"), "localhost", "-m", module, "-a", json.dumps(args),
                           *flags], cwd=ROOT,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", **env),
                          capture_output=True, text=True, timeout=120)
    match = re.search(r"^localhost \| (\w+!?) => (\{.*?^\})", proc.stdout, re.M | re.S)
    assert match, proc.stdout + proc.stderr
    return match.group(1).rstrip("!"), json.loads(match.group(2))


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("identity")
    key, cert = self_signed("consulta.example")
    (tmp / "client.cer").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "client.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw1")))
    return tmp


def test_ansible_debug_refuses_cert_validate_with_a_passphrase(identity):
    args = {"kind": "identity", "certificate": str(identity / "client.cer"),
            "private_key": str(identity / "client.key"), "private_key_passphrase": "pw1"}
    status, result = ad_hoc("cert_validate", args, ANSIBLE_DEBUG="1")
    assert status == "FAILED" and "ANSIBLE_DEBUG" in result["msg"] and "in clear" in result["msg"]
    status, result = ad_hoc("cert_validate", args, ANSIBLE_DEBUG="0")
    assert "ANSIBLE_DEBUG" not in result.get("msg", "")  # without debug the module does its work


def test_ansible_debug_refuses_cert_deploy_of_a_secret_file(tmp_path):
    target = tmp_path / "client.key"
    args = {"files": [{"path": str(target), "content": base64.b64encode(b"not really a key").decode(),
                       "mode": "0600", "secret": True}], "backup_dir": str(tmp_path / "backups"),
            "backup_key": "k" * 32, "service": "renapo"}
    status, result = ad_hoc("cert_deploy", args, "-e", "ansible_python_interpreter=/usr/bin/python3",
                            ANSIBLE_DEBUG="1")
    assert status == "FAILED" and "ANSIBLE_DEBUG" in result["msg"] and not target.exists()


# --- audit_verify: the module names the first broken link -----------------------------------------------------
def test_audit_verify_module(tmp_path):
    db = str(tmp_path / "tickets.db")
    keyfile = tmp_path / "audit.key"
    keyfile.write_bytes(os.urandom(32).hex().encode())
    key = keyfile.read_bytes()
    with open_lab(db, audit_key=key) as store:
        first, second = populate(store)
        entries = store.audit_head()["entries"]
    status, result = ad_hoc("audit_verify", {"store": db, "hmac_key_file": str(keyfile)})
    assert status == "SUCCESS" and result["entries"] == entries and not result["changed"]
    status, result = ad_hoc("audit_verify", {"store": db, "hmac_key_file": str(tmp_path / "missing.key")})
    assert status == "FAILED" and "cannot read the audit key file" in result["msg"]
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER tickets_state_audited")
    conn.execute(f"UPDATE tickets SET state = 'closed' WHERE id = {second}")
    conn.commit()
    conn.close()
    status, result = ad_hoc("audit_verify", {"store": db, "hmac_key_file": str(keyfile)})
    assert status == "FAILED" and result["broken"]["table"] == "tickets" and result["broken"]["id"] == second
    assert f"audit chain broken at tickets id {second}" in result["msg"]


def test_a_short_audit_key_is_refused(tmp_path):
    short = tmp_path / "k"
    short.write_text("short")
    from ansible.module_utils.ticket_store import read_audit_key
    with pytest.raises(TicketStoreError, match="too short"):
        read_audit_key(str(short))
