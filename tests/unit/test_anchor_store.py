"""The approved-anchor registry, its evidence and audit, and the fleet lock in the ticket store, on a real SQLite
file and a real PostgreSQL server (every test on both); the v1 -> v2 migration keeps every ticket and audit row."""
import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from ansible.module_utils.sla import iso
from ansible.module_utils.ticket_store import (
    POSTGRESQL_MIGRATIONS,
    SQLITE_MIGRATIONS,
    AnchorNotApproved,
    AnchorNotFound,
    AnchorRegistryError,
    FleetLocked,
    PostgresTicketStore,
    SecretMaterialError,
    SqliteTicketStore,
    TicketStoreError,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.unit.stores import LAB, open_lab

pytest_plugins = ["tests.pg"]  # pg_server (session), pg_schema, store_dsn (sqlite | postgresql)

NOW = datetime.now(UTC).replace(microsecond=0)
ALL = {"accept": ["endpoint", "operator", "authenticated_mail"], "operators": 1}


# --- certificates (generated, EC P-256: fast) ----------------------------------------------------------------
def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn, days_before=30, days_after=3650, key=None):
    """A self-signed CA certificate valid from `days_before` days ago to `days_after` days ahead; (cert, key)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = datetime.now(UTC) - timedelta(days=days_before)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(datetime.now(UTC) + timedelta(days=days_after))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_leaf(cn, ca, ca_key, names=()):
    """A TLS server certificate for `names` issued by ca; (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(datetime.now(UTC) - timedelta(days=1))
            .not_valid_after(datetime.now(UTC) + timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names or [cn]]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def pem(*certs):
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def fp(cert):
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


@pytest.fixture(scope="module")
def pki():
    """Anchors of the tests: today's and the renewed RENAPO CA, a SAT CA, an expired CA, a leaf of the new CA."""
    old, old_key = make_ca("RENAPO CA 2024")
    new, new_key = make_ca("RENAPO CA 2026")
    sat, _ = make_ca("SAT CA")
    expired, _ = make_ca("RENAPO CA 2019", days_before=2000, days_after=-1)
    soon, _ = make_ca("RENAPO CA short", days_after=10)
    leaf, leaf_key = make_leaf("renapo.lab", new, new_key)
    return {"old": old, "old_key": old_key, "new": new, "new_key": new_key, "sat": sat, "expired": expired,
            "soon": soon, "leaf": leaf, "leaf_key": leaf_key}


def at(minutes):
    return NOW + timedelta(minutes=minutes)


def is_pg(dsn):
    return dsn.startswith("postgresql://")


@pytest.fixture
def db(store_dsn):
    return store_dsn


@pytest.fixture
def store(db):
    with open_lab(db) as s:
        yield s


def actions(store, provider="renapo"):
    return [(r["action"], r["actor"], r["from_state"], r["to_state"]) for r in store.registry_audit(provider)]


# --- registry ------------------------------------------------------------------------------------------------
def test_record_is_pending_and_idempotent(store, pki):
    anchor = store.anchor_record("renapo", pem(pki["new"]), actor="intake", now=at(0))
    assert anchor["changed"] is True and anchor["state"] == "pending"
    assert anchor["fingerprint"] == fp(pki["new"]) and anchor["subject"] == "CN=RENAPO CA 2026,O=Lab"
    assert anchor["pem"] == pem(pki["new"]) and anchor["evidence"] == [] and anchor["ticket"] is None
    assert anchor["not_after"] == iso(pki["new"].not_valid_after_utc)  # procedure zone
    assert (anchor["created_by"], anchor["approved_at"], anchor["retired_at"]) == ("intake", None, None)
    again = store.anchor_record("renapo", pem(pki["new"]), actor="intake", now=at(1))
    assert again["changed"] is False and again["created_at"] == anchor["created_at"]
    assert store.anchor("renapo", fp(pki["new"]).lower())["state"] == "pending"  # any fingerprint spelling
    assert actions(store) == [("recorded", "intake", None, "pending")]
    with pytest.raises(AnchorNotFound, match="no trust anchor"):
        store.anchor("renapo", fp(pki["old"]))
    with pytest.raises(AnchorNotFound):
        store.anchor("sat", fp(pki["new"]))  # registries are per provider


def test_record_refuses_what_is_not_an_anchor(store, pki):
    with pytest.raises(SecretMaterialError, match="never holds it"):
        store.anchor_record("renapo", pem(pki["new"]) + key_pem(pki["new_key"]), actor="t")
    with pytest.raises(AnchorRegistryError, match="not self-signed .*issued by 'CN=RENAPO CA 2026,O=Lab'"):
        store.anchor_record("renapo", pem(pki["leaf"]), actor="t")
    with pytest.raises(AnchorRegistryError, match="one certificate; the PEM holds 2"):
        store.anchor_record("renapo", pem(pki["leaf"], pki["new"]), actor="t")
    with pytest.raises(AnchorRegistryError, match="unknown provider 'imss'"):
        store.anchor_record("imss", pem(pki["new"]), actor="t")
    with pytest.raises(AnchorRegistryError, match="unknown evidence kind 'seed'"):
        store.anchor_record("renapo", pem(pki["new"]), actor="t", evidence=[{"kind": "seed", "detail": "x"}])
    with pytest.raises(AnchorRegistryError, match="not a SHA-256 fingerprint"):
        store.anchor_add_evidence("renapo", "AB:CD", "operator", "oficio", actor="ana")
    assert store.anchors() == [] and store.registry_audit() == []


def test_claim_never_approves(store, pki):
    store.anchor_record("renapo", pem(pki["new"]), actor="intake", now=at(0),
                        evidence=[{"kind": "claim", "detail": "letter of <x@renapo.example>", "message_id": "<m1@x>"}])
    with pytest.raises(AnchorNotApproved) as err:
        store.anchor_approve("renapo", fp(pki["new"]), actor="rollout", policy=ALL, now=at(1))
    message = str(err.value)
    assert "claim by intake" in message and "never evidence" in message
    assert err.value.missing == ["endpoint", "operator", "authenticated_mail"]
    assert store.anchor("renapo", fp(pki["new"]))["state"] == "pending"
    assert store.anchor("renapo", fp(pki["new"]))["evidence"][0]["message_id"] == "<m1@x>"
    assert actions(store)[-1] == ("approval_refused", "rollout", "pending", "pending")  # the attempt is on record


def test_authenticated_mail_approves_when_accepted(store, pki):
    mail = [{"kind": "authenticated_mail", "detail": "dkim=pass header.d=renapo.lab", "message_id": "<m2@renapo>"}]
    store.anchor_record("renapo", pem(pki["new"]), actor="intake", evidence=mail, now=at(0))
    with pytest.raises(AnchorNotApproved, match="policy does not accept it"):
        store.anchor_approve("renapo", fp(pki["new"]), actor="rollout", now=at(1),
                             policy={"accept": ["endpoint", "operator"]})
    approved = store.anchor_approve("renapo", fp(pki["new"]), actor="rollout", policy=ALL, now=at(2))
    assert approved["changed"] and approved["state"] == "approved" and approved["approved_by"] == "rollout"
    assert approved["approved_at"] == iso(at(2))
    again = store.anchor_approve("renapo", fp(pki["new"]), actor="rollout", policy=ALL, now=at(3))
    assert again["changed"] is False and again["approved_at"] == approved["approved_at"]


def test_one_operator_or_two_distinct_operators(store, pki):
    four_eyes = {"accept": ["operator"], "operators": 2}
    for cert in (pki["new"], pki["sat"]):
        provider = "renapo" if cert is pki["new"] else "sat"
        store.anchor_record(provider, pem(cert), actor="intake", now=at(0))
        store.anchor_add_evidence(provider, fp(cert), "operator", "oficio DG/123/2026", actor="ana", now=at(1))
    assert store.anchor_approve("sat", fp(pki["sat"]), actor="ana", policy={"accept": ["operator"]},
                                now=at(2))["state"] == "approved"
    store.anchor_add_evidence("renapo", fp(pki["new"]), "operator", "confirmado por teléfono", actor="ana", now=at(2))
    with pytest.raises(AnchorNotApproved, match="1 of 2 distinct operators") as err:
        store.anchor_approve("renapo", fp(pki["new"]), actor="ana", policy=four_eyes, now=at(3))
    assert "recorded so far by ana" in str(err.value)
    assert store.anchor_add_evidence("renapo", fp(pki["new"]), "operator", "oficio DG/123/2026", actor="ana",
                                     now=at(4))["changed"] is False  # the same evidence twice is recorded once
    store.anchor_add_evidence("renapo", fp(pki["new"]), "operator", "oficio DG/123/2026", actor="luis", now=at(5))
    approved = store.anchor_approve("renapo", fp(pki["new"]), actor="luis", policy=four_eyes, now=at(6))
    assert approved["state"] == "approved"
    assert [(e["kind"], e["actor"]) for e in approved["evidence"]] == [("operator", "ana"), ("operator", "ana"),
                                                                       ("operator", "luis")]


def test_evidence_before_the_certificate_arrives(store, pki):
    opened = store.create("renapo", actor="mesa", now=at(0)).ticket
    stub = store.anchor_add_evidence("renapo", fp(pki["new"]).replace(":", "").lower(), "operator",
                                     "huella leída del oficio firmado", actor="ana", ticket=str(opened["id"]),
                                     now=at(1))
    assert stub["state"] is None and stub["fingerprint"] == fp(pki["new"]) and stub["evidence"][0]["ticket"] == 1
    with pytest.raises(AnchorNotFound):
        store.anchor_approve("renapo", fp(pki["new"]), actor="ana", policy=ALL, now=at(2))
    store.transition(opened["id"], "folio_issued", actor="mesa", now=at(3))
    anchor = store.anchor_record("renapo", pem(pki["new"]), actor="intake", ticket=opened["id"], now=at(4))
    assert anchor["ticket"] == store.get(opened["id"])["folio"]
    assert anchor["evidence"][0]["ticket"] == anchor["ticket"]  # shown by folio once it has one
    assert store.anchor_approve("renapo", fp(pki["new"]), actor="ana", policy=ALL, now=at(5))["state"] == "approved"


def test_expired_certificate_is_refused(store, pki):
    store.anchor_record("renapo", pem(pki["expired"]), actor="intake", now=at(0),
                        evidence=[{"kind": "authenticated_mail", "detail": "dkim=pass"}])
    with pytest.raises(AnchorNotApproved, match="expired on .* never approved"):
        store.anchor_approve("renapo", fp(pki["expired"]), actor="ana", policy=ALL, now=at(1))


def test_approved_anchors_exclude_retired_and_expired(store, pki):
    mail = [{"kind": "authenticated_mail", "detail": "dkim=pass"}]
    for n, name in enumerate(("soon", "old", "new")):  # approved in this order
        store.anchor_record("renapo", pem(pki[name]), actor="intake", evidence=mail, now=at(n))
        store.anchor_approve("renapo", fp(pki[name]), actor="ana", policy=ALL, now=at(10 + n))
    store.anchor_record("renapo", pem(pki["sat"]), actor="intake", now=at(20))  # pending
    assert [a["fingerprint"] for a in store.approved_anchors("renapo", now=at(30))] == [
        fp(pki[n]) for n in ("soon", "old", "new")]  # oldest approval first
    retired = store.anchor_retire("renapo", fp(pki["old"]), actor="ana", reason="RENAPO dejó de usarlo", now=at(40))
    assert retired["state"] == "retired" and retired["retired_by"] == "ana" and retired["changed"]
    assert store.anchor_retire("renapo", fp(pki["old"]), actor="ana", reason="otra vez", now=at(41))["changed"] is False
    with pytest.raises(AnchorNotApproved, match="retired"):
        store.anchor_approve("renapo", fp(pki["old"]), actor="ana", policy=ALL, now=at(42))
    assert [a["fingerprint"] for a in store.approved_anchors("renapo", now=at(50))] == [fp(pki["soon"]),
                                                                                       fp(pki["new"])]
    eleven_days = NOW + timedelta(days=11)  # "soon" has expired by then
    assert [a["fingerprint"] for a in store.approved_anchors("renapo", now=eleven_days)] == [fp(pki["new"])]
    listed = store.anchors("renapo")
    assert [a["state"] for a in listed] == ["approved", "retired", "approved", "pending"]
    assert [a["state"] for a in store.anchors(states=["pending"])] == ["pending"]
    with pytest.raises(AnchorRegistryError, match="reason"):
        store.anchor_retire("renapo", fp(pki["new"]), actor="ana", reason=" ")


def test_seeding_is_one_time(store, pki):
    seeded = store.anchor_seed("renapo", [pem(pki["old"]), pem(pki["expired"]), pem(pki["old"])], actor="ana",
                               reason="registro inicial desde los hosts de hoy", now=at(0))
    assert [(a["subject"], a["state"]) for a in seeded] == [("CN=RENAPO CA 2024,O=Lab", "approved"),
                                                            ("CN=RENAPO CA 2019,O=Lab", "retired")]
    assert seeded[0]["evidence"][0]["kind"] == "seed" and seeded[0]["approved_by"] == "ana"
    assert [a["fingerprint"] for a in store.approved_anchors("renapo", now=at(1))] == [fp(pki["old"])]
    with pytest.raises(AnchorRegistryError, match="one-time action"):
        store.anchor_seed("renapo", [pem(pki["new"])], actor="ana", reason="otra vez", now=at(2))
    store.anchor_record("sat", pem(pki["sat"]), actor="intake", now=at(3))
    with pytest.raises(AnchorRegistryError, match="already has 1 entry"):
        store.anchor_seed("sat", [pem(pki["sat"])], actor="ana", reason="tarde", now=at(4))
    with pytest.raises(AnchorRegistryError, match="needs a reason"):
        store.anchor_seed("renapo", [pem(pki["new"])], actor="ana", reason="")
    assert [r["action"] for r in store.registry_audit("renapo")] == ["evidence", "seeded", "evidence", "seeded"]


def test_every_change_has_an_audit_row(store, pki):
    f = fp(pki["new"])
    store.anchor_add_evidence("renapo", f, "operator", "oficio", actor="ana", now=at(0))
    store.anchor_record("renapo", pem(pki["new"]), actor="intake", now=at(1),
                        evidence=[{"kind": "claim", "detail": "carta"}])
    store.anchor_record("renapo", pem(pki["new"]), actor="intake", now=at(2))  # no change, no row
    store.anchor_approve("renapo", f, actor="ana", policy=ALL, now=at(3))
    store.anchor_approve("renapo", f, actor="ana", policy=ALL, now=at(4))  # no change, no row
    store.anchor_retire("renapo", f, actor="luis", reason="comprometido", now=at(5))
    store.fleet_lock("renapo", "job-1", now=at(6))
    store.fleet_lock("renapo", "job-1", now=at(7))
    store.fleet_unlock("renapo", "job-1", now=at(8))
    assert actions(store) == [
        ("evidence", "ana", None, None), ("recorded", "intake", None, "pending"),
        ("evidence", "intake", "pending", "pending"), ("approved", "ana", "pending", "approved"),
        ("retired", "luis", "approved", "retired"), ("lock_acquired", "job-1", None, None),
        ("lock_extended", "job-1", None, None), ("lock_released", "job-1", None, None)]
    rows = store.registry_audit("renapo", f)
    assert {r["fingerprint"] for r in rows} == {f} and rows[-1]["detail"] == "comprometido"
    assert store.registry_audit("renapo")[3]["detail"] == "evidence: operator"


def test_registry_tables_are_append_only(store, db, pki):
    store.anchor_record("renapo", pem(pki["new"]), actor="intake", evidence=[{"kind": "claim", "detail": "c"}])
    tampering = ["UPDATE anchor_evidence SET kind = 'operator'", "DELETE FROM anchor_evidence",
                 "UPDATE registry_audit SET actor = 'mallory'", "DELETE FROM registry_audit"]
    if is_pg(db):
        import psycopg
        with psycopg.connect(db, autocommit=True) as raw:
            for sql in [*tampering, "TRUNCATE anchor_evidence", "TRUNCATE registry_audit"]:
                with pytest.raises(psycopg.errors.IntegrityError, match="append-only"):
                    raw.execute(sql)
            with pytest.raises(psycopg.errors.CheckViolation):
                raw.execute("UPDATE trust_anchors SET state = 'trusted'")
    else:
        raw = sqlite3.connect(db)
        for sql in tampering:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(sql)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            raw.execute("UPDATE trust_anchors SET state = 'trusted'")
        raw.close()
    assert store.anchor("renapo", fp(pki["new"]))["evidence"][0]["kind"] == "claim"


def test_transaction_previews_a_whole_task_in_check_mode(store, pki):
    with store.transaction(dry_run=True):
        store.anchor_record("renapo", pem(pki["new"]), actor="intake", now=at(0))
        store.anchor_add_evidence("renapo", fp(pki["new"]), "operator", "oficio", actor="ana", now=at(1))
        preview = store.anchor_approve("renapo", fp(pki["new"]), actor="ana", policy=ALL, now=at(2))
        assert preview["state"] == "approved" and preview["changed"]
    assert store.anchors() == [] and store.registry_audit() == []
    with store.transaction():
        store.anchor_record("renapo", pem(pki["new"]), actor="intake", now=at(3))
        with pytest.raises(TicketStoreError, match="do not nest"), store.transaction():
            pass
    assert store.anchor("renapo", fp(pki["new"]))["state"] == "pending"


# --- fleet lock ----------------------------------------------------------------------------------------------
def test_fleet_lock_holder_reentry_refusal_and_release(store):
    first = store.fleet_lock("renapo", "awx-job-41 (ana)", ttl=600, now=at(0))
    assert first == {"provider": "renapo", "holder": "awx-job-41 (ana)", "acquired_at": iso(at(0)),
                     "expires_at": iso(at(10)), "acquired": True}
    with pytest.raises(FleetLocked) as err:
        store.fleet_lock("renapo", "awx-job-42 (luis)", ttl=600, now=at(1))
    assert str(err.value) == (f"the fleet lock of renapo is held by awx-job-41 (ana) since {iso(at(0))}, "
                              f"expires {iso(at(10))}")
    assert (err.value.holder, err.value.since) == ("awx-job-41 (ana)", iso(at(0)))
    assert store.fleet_lock("sat", "awx-job-42 (luis)", now=at(1))["acquired"]  # one lock per provider
    again = store.fleet_lock("renapo", "awx-job-41 (ana)", ttl=600, now=at(5))
    assert again["acquired"] is False and again["acquired_at"] == iso(at(0))
    assert again["expires_at"] == iso(at(15))  # re-entry extends
    assert store.fleet_lock_info("renapo", now=at(6)) == {"provider": "renapo", "holder": "awx-job-41 (ana)",
                                                          "acquired_at": iso(at(0)),
                                                          "expires_at": iso(at(15)), "expired": False}
    with pytest.raises(FleetLocked, match="awx-job-42 .luis. does not hold the fleet lock of renapo: .*awx-job-41"):
        store.fleet_unlock("renapo", "awx-job-42 (luis)", now=at(7))
    assert store.fleet_unlock("renapo", "awx-job-41 (ana)", now=at(8)) == {
        "provider": "renapo", "holder": "awx-job-41 (ana)", "released": True, "forced": False}
    assert store.fleet_lock_info("renapo") is None
    assert store.fleet_unlock("renapo", "awx-job-41 (ana)")["released"] is False
    with pytest.raises(AnchorRegistryError, match="needs a holder"):
        store.fleet_lock("renapo", " ")


def test_fleet_lock_expired_is_taken_over_and_force_release_is_audited(store):
    store.fleet_lock("renapo", "job-dead", ttl=60, now=at(0))
    taken = store.fleet_lock("renapo", "job-new", ttl=60, now=at(2))
    assert taken["acquired"] and taken["holder"] == "job-new"
    last = store.registry_audit("renapo")[-1]
    assert last["action"] == "lock_taken_over" and "from job-dead" in last["detail"]
    store.fleet_unlock("renapo", "ana", force=True, now=at(3))
    last = store.registry_audit("renapo")[-1]
    assert (last["action"], last["actor"]) == ("lock_forced_release", "ana") and "lock of job-new" in last["detail"]
    assert store.fleet_lock_info("renapo") is None


def _race(dsn, holder, barrier, results):
    try:
        with open_lab(dsn) as s:
            barrier.wait(timeout=30)
            s.fleet_lock("renapo", holder, ttl=600)
        results.put((holder, "won"))
    except FleetLocked as e:
        results.put((holder, f"refused: {e}"))
    except Exception as e:  # reported to the parent, which fails the test with it
        results.put((holder, repr(e)))


def test_processes_racing_for_the_lock_exactly_one_wins(db):
    open_lab(db).close()  # the schema exists before the race: the race is for the lock, not the migration
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        barrier, results = ctx.Barrier(4), ctx.Queue()
        holders = [f"job-{round_}-{n}" for n in range(4)]
        procs = [ctx.Process(target=_race, args=(db, h, barrier, results)) for h in holders]
        for p in procs:
            p.start()
        outcomes = dict(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        winners = [h for h, outcome in outcomes.items() if outcome == "won"]
        assert len(winners) == 1, outcomes
        for holder, outcome in outcomes.items():
            if holder != winners[0]:
                assert outcome.startswith(f"refused: the fleet lock of renapo is held by {winners[0]} since ")
        with open_lab(db) as s:
            assert s.fleet_lock_info("renapo")["holder"] == winners[0]
            s.fleet_unlock("renapo", winners[0])


# --- migration v1 -> v2 ----------------------------------------------------------------------------------------
def open_v1(dsn):
    """A store that stops at schema version 1, as the product shipped it before the registry."""
    if is_pg(dsn):
        return type("V1", (PostgresTicketStore,), {"migrations": POSTGRESQL_MIGRATIONS[:1]})(dsn, providers=LAB)
    return type("V1", (SqliteTicketStore,), {"migrations": SQLITE_MIGRATIONS[:1]})(dsn, providers=LAB)


def test_upgrade_from_version_1_keeps_every_ticket_and_audit_row(db, pki):
    with open_v1(db) as old:
        assert old.schema_version == 1
        ids = [old.create(service, actor="mesa", source="mail", message_id=f"<{n}@m>", now=at(n)).ticket["id"]
               for n, service in enumerate(("renapo", "sat", "renapo"))]
        old.transition(ids[0], "folio_issued", actor="mesa", now=at(5))
        old.transition(ids[0], "requester_validated", actor="enlace", now=at(6))
        old.transition(ids[2], "observations", actor="mesa", note="falta el sistema", now=at(7))
        tickets = [old.get(i) for i in ids]
        audit = old._query("SELECT * FROM audit_log ORDER BY id")
        with pytest.raises((TicketStoreError, sqlite3.IntegrityError)):  # v1 refuses the new source
            old._query("INSERT INTO tickets (service, state, source, received_at, first_contact_due, created_at,"
                       " updated_at) VALUES ('renapo', 'received', 'provider', 'x', 'x', 'x', 'x')")
    with open_lab(db) as new:
        assert new.schema_version >= 2  # later migrations apply on top
        assert [new.get(i) for i in ids] == tickets
        assert new._query("SELECT * FROM audit_log ORDER BY id") == audit
        opened = new.create("renapo", actor="intake", source="provider", now=at(8)).ticket
        # No id is reused (PostgreSQL's sequence also spent one on the refused insert above: ids are not gap-free).
        assert opened["id"] == max(ids) + (2 if is_pg(db) else 1) and opened["source"] == "provider"
        new.transition(ids[2], "received", actor="mesa", now=at(9))  # the old tickets move on
        assert [a["to_state"] for a in new.audit(ids[2])] == ["received", "observations", "received"]
        anchor = new.anchor_record("renapo", pem(pki["new"]), actor="intake", ticket=tickets[0]["folio"])
        assert anchor["ticket"] == tickets[0]["folio"]
        # The provider list is the registry's, in the providers table (v5): the database refuses any other.
        with pytest.raises((TicketStoreError, sqlite3.IntegrityError)):
            new._query("UPDATE tickets SET service = 'imss' WHERE id = ?", (opened["id"],))
        with pytest.raises((TicketStoreError, sqlite3.IntegrityError)):
            new._query("INSERT INTO audit_log (ticket_id, at, actor, to_state) VALUES (999, 'x', 'x', 'received')")
        with pytest.raises((TicketStoreError, sqlite3.IntegrityError), match="append-only"):
            new._query("DELETE FROM audit_log")
        if not is_pg(db):
            assert new._query("PRAGMA foreign_keys")[0]["foreign_keys"] == 1
            assert new._query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    with open_lab(db) as again:  # reopening applies nothing twice
        assert again.schema_version >= 2 and len(again.find()) == 4
