"""trust_anchor, trust_anchor_info and fleet_lock run the way operators run them (`ansible localhost -m ...`), on a
SQLite file and a real PostgreSQL server; endpoint evidence comes from a real local TLS server that picks its
certificate by SNI."""
import json
import os
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_anchor_store import fp, key_pem, make_ca, make_leaf, pem

from tests.providers import THIRD_PROVIDER, lab_providers
from tests.unit.stores import LAB, open_lab

pytest_plugins = ["tests.pg"]  # pg_server (session), store_dsn (sqlite | postgresql)
ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = str(ROOT / ".venv" / "bin" / "ansible")
ENDPOINT_ONLY = {"accept": ["endpoint"], "operators": 1}


def ansible(module, args, *flags):
    """Run one ad-hoc task on localhost (with the lab's provider registry); return (rc, result dict, full stdout and
    stderr)."""
    args = {"providers": LAB, **args}
    proc = subprocess.run([ANSIBLE, "localhost", "-m", module, "-a", json.dumps(args), *flags], cwd=ROOT,
                          env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
                          capture_output=True, text=True, timeout=120)
    stdout = proc.stdout
    start = stdout.index("localhost | ")
    return proc.returncode, json.loads(stdout[stdout.index("=>", start) + 2:]), stdout + proc.stderr


class SniTlsServer:
    """A real TLS server on 127.0.0.1 that presents `chains[server_name]`, or `chains[None]` for any other SNI (or
    none); it records the SNI names it was asked for."""

    def __init__(self, chains):
        self.contexts = {}
        for name, (chain_file, key_file) in chains.items():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(chain_file, key_file)
            self.contexts[name] = ctx
        self.contexts[None].sni_callback = self._select
        self.seen = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _select(self, tls, server_name, _ctx):
        self.seen.append(server_name)
        if server_name in self.contexts:
            tls.context = self.contexts[server_name]

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.contexts[None].wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)  # the client only handshakes and closes
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Anchors, chains and bundles on disk, as deliveries and today's hosts hold them."""
    d = tmp_path_factory.mktemp("pki")
    old, old_key = make_ca("RENAPO CA 2024")
    new, new_key = make_ca("RENAPO CA 2026")
    expired, _ = make_ca("RENAPO CA 2019", days_before=2000, days_after=-1)
    short, _ = make_ca("RENAPO CA corto", days_before=40, days_after=-2)  # expired two days ago
    leaf_new, leaf_new_key = make_leaf("renapo.lab", new, new_key)
    leaf_old, leaf_old_key = make_leaf("renapo-old.lab", old, old_key)
    out = {"old_fp": fp(old), "new_fp": fp(new), "expired_fp": fp(expired), "short_fp": fp(short),
           "new_pem": pem(new), "old_pem": pem(old)}
    for name, text in {"old": pem(old), "new": pem(new), "expired": pem(expired), "short": pem(short),
                       "chain": pem(leaf_new, new), "leaf": pem(leaf_new),
                       "bundle": pem(old, expired, leaf_old), "two_roots": pem(old, new),
                       "served_new": pem(leaf_new, new), "served_new_key": key_pem(leaf_new_key),
                       "served_old": pem(leaf_old, old), "served_old_key": key_pem(leaf_old_key)}.items():
        (d / f"{name}.pem").write_text(text)
        out[name] = str(d / f"{name}.pem")
    return out


@pytest.fixture(scope="module")
def server(files):
    """Presents the new CA's chain to SNI renapo.lab, today's (old CA) chain to anything else."""
    srv = SniTlsServer({"renapo.lab": (files["served_new"], files["served_new_key"]),
                        None: (files["served_old"], files["served_old_key"])})
    yield srv
    srv.stop()


@pytest.fixture
def db(store_dsn):
    return store_dsn


def test_endpoint_evidence_only_with_the_right_sni(db, files, server):
    base = {"store": db, "provider": "renapo", "actor": "jdoe", "certificate": files["new"]}
    rc, recorded, _ = ansible("trust_anchor", {**base, "actor": "intake",
                                               "evidence": [{"kind": "claim", "detail": "carta del correo"}]})
    assert rc == 0 and recorded["changed"] and recorded["anchor"]["state"] == "pending"
    assert recorded["fingerprint"] == files["new_fp"] and recorded["approved"] is False

    for server_name in (None, "otro.lab"):  # no SNI (an IP) or another name: today's chain is presented
        args = {**base, "state": "approved", "policy": ENDPOINT_ONLY, "endpoint": server.endpoint}
        rc, refused, _ = ansible("trust_anchor", {**args, **({"server_name": server_name} if server_name else {})})
        assert rc != 0 and refused["approved"] is False and refused["endpoint_check"]["confirmed"] is False
        assert refused["endpoint_check"]["presented"] == ["CN=renapo-old.lab,O=Lab", "CN=RENAPO CA 2024,O=Lab"]
        assert "which does not end in this anchor" in refused["msg"]
        assert "playbooks/anchor.yml -e provider=renapo -e op=approve" in refused["msg"]
    with open_lab(db) as store:
        assert [e["kind"] for e in store.anchor("renapo", files["new_fp"])["evidence"]] == ["claim"]

    rc, approved, _ = ansible("trust_anchor", {**base, "state": "approved", "policy": ENDPOINT_ONLY,
                                               "endpoint": server.endpoint, "server_name": "renapo.lab"})
    assert rc == 0 and approved["changed"] and approved["approved"] is True
    assert approved["endpoint_check"]["confirmed"] is True
    endpoint = approved["anchor"]["evidence"][-1]
    assert endpoint["kind"] == "endpoint" and endpoint["actor"] == "jdoe"
    assert endpoint["detail"].startswith(f"{server.endpoint} (SNI renapo.lab) presented a chain ending in this anchor")
    assert "renapo.lab" in server.seen and "otro.lab" in server.seen
    with open_lab(db) as store:
        assert [r["action"] for r in store.registry_audit("renapo")] == [
            "recorded", "evidence", "approval_refused", "approval_refused", "evidence", "approved"]


def test_refusal_names_the_missing_evidence_and_the_commands(db, files):
    args = {"store": db, "provider": "renapo", "actor": "jdoe", "certificate": files["new"], "state": "approved",
            "policy": {"accept": ["operator", "authenticated_mail"], "operators": 2},
            "evidence": [{"kind": "claim", "detail": "carta del correo <1@renapo.example>"}]}
    rc, refused, _ = ansible("trust_anchor", args)
    assert rc != 0 and refused["changed"] is True  # the anchor and the claim are recorded, and the refusal audited
    assert "claim by jdoe" in refused["msg"] and "never evidence" in refused["msg"]
    assert (f"ansible-playbook playbooks/anchor.yml -e provider=renapo -e fingerprint={files['new_fp']} "
            "-e operator=<you> -e channel=oficio") in refused["msg"]
    assert f"-e op=approve -e certificate={files['new']} -e operator=<you>" in refused["msg"]
    assert "ansible-playbook playbooks/intake.yml" in refused["msg"]
    for n, (operator, approved) in enumerate((("ana", False), ("ana", False), ("luis", True))):  # four eyes
        rc, result, _ = ansible("trust_anchor", {
            "store": db, "provider": "renapo", "actor": operator, "fingerprint": files["new_fp"].lower(),
            "state": "approved", "policy": {"accept": ["operator"], "operators": 2},
            "evidence": [{"kind": "operator", "detail": f"oficio DG/123/2026, lectura {n}"}]})
        assert result["approved"] is approved and (rc == 0) is approved
        if not approved:  # ana twice is still one operator
            assert "recorded so far by ana (1 of 2)" in result["msg"]
    with open_lab(db) as store:
        audit = [r["action"] for r in store.registry_audit("renapo")]
        assert audit.count("approval_refused") == 3 and audit[-1] == "approved"


def test_fingerprint_first_then_certificate_then_info(files, tmp_path):
    db = str(tmp_path / "tickets.db")
    rc, stub, _ = ansible("trust_anchor", {"store": db, "provider": "renapo", "actor": "ana",
                                           "fingerprint": files["new_fp"].replace(":", ""),
                                           "evidence": [{"kind": "operator", "detail": "oficio firmado"}]})
    assert rc == 0 and stub["changed"] and stub["anchor"]["state"] is None
    assert stub["anchor"]["evidence"][0]["kind"] == "operator"
    rc, missing, _ = ansible("trust_anchor", {"store": db, "provider": "renapo", "actor": "ana",
                                              "fingerprint": files["new_fp"], "state": "approved"})
    assert rc != 0 and "record its certificate first" in missing["msg"]
    rc, approved, stdout = ansible("trust_anchor", {"store": db, "provider": "renapo", "actor": "ana",
                                                    "certificate": files["chain"], "state": "approved"}, "--diff")
    assert rc == 0 and approved["approved"] and approved["fingerprint"] == files["new_fp"]  # the chain's top
    assert '"state": "approved"' in stdout
    rc, again, _ = ansible("trust_anchor", {"store": db, "provider": "renapo", "actor": "ana",
                                            "certificate": files["chain"], "state": "approved"})
    assert rc == 0 and again["changed"] is False and again["approved"]

    rc, info, _ = ansible("trust_anchor_info", {"store": db, "provider": "renapo"})
    assert rc == 0 and info["changed"] is False and info["lock"] is None
    assert info["approved_pems"] == [files["new_pem"]] and info["anchors"][0]["pem"] == files["new_pem"]
    assert info["anchors"][0]["evidence"][0]["actor"] == "ana"
    rc, pending, _ = ansible("trust_anchor_info", {"store": db, "states": ["pending"]})
    assert pending["anchors"] == [] and pending["approved_pems"] == []


def test_certificate_defects_are_named(files, tmp_path):
    base = {"store": str(tmp_path / "t.db"), "provider": "renapo", "actor": "ana"}
    rc, leaf, _ = ansible("trust_anchor", {**base, "certificate": files["leaf"]})
    assert rc != 0 and "incomplete chain: 'CN=renapo.lab,O=Lab' is issued by 'CN=RENAPO CA 2026,O=Lab'" in leaf["msg"]
    rc, two, _ = ansible("trust_anchor", {**base, "certificate": files["two_roots"]})
    assert rc != 0 and "holds 2 self-signed certificates" in two["msg"]
    rc, other, _ = ansible("trust_anchor", {**base, "certificate": files["new"], "fingerprint": files["old_fp"]})
    assert rc != 0 and f"not the given fingerprint {files['old_fp']}" in other["msg"]
    rc, hand, _ = ansible("trust_anchor", {**base, "certificate": files["new"],
                                           "evidence": [{"kind": "endpoint", "detail": "lo vi"}]})
    assert rc != 0 and "value of kind must be one of: operator, authenticated_mail, claim" in hand["msg"]
    assert not (tmp_path / "t.db").exists()  # every defect is found before the store is opened


def test_seeding_retiring_and_expiry(files, tmp_path):
    db = str(tmp_path / "tickets.db")
    seed = {"store": db, "provider": "renapo", "actor": "ana", "state": "seeded",
            "certificates": [files["bundle"]], "reason": "alta inicial desde los servidores"}
    rc, seeded, stdout = ansible("trust_anchor", seed)
    assert rc == 0 and seeded["changed"] and "not seeded:" in stdout and "not self-signed" in stdout
    assert [(a["fingerprint"], a["state"]) for a in seeded["anchors"]] == [(files["old_fp"], "approved"),
                                                                          (files["expired_fp"], "retired")]
    rc, again, _ = ansible("trust_anchor", seed)
    assert rc != 0 and "one-time action" in again["msg"]

    # An anchor approved while valid drops out of approved_pems once it expires.
    ten_days_ago = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    rc, short, _ = ansible("trust_anchor", {"store": db, "provider": "renapo", "actor": "ana", "state": "approved",
                                            "certificate": files["short"], "now": ten_days_ago,
                                            "evidence": [{"kind": "operator", "detail": "oficio"}]})
    assert rc == 0 and short["approved"]
    rc, new, _ = ansible("trust_anchor", {"store": db, "provider": "renapo", "actor": "ana", "state": "approved",
                                          "certificate": files["new"],
                                          "evidence": [{"kind": "authenticated_mail", "detail": "dkim=pass"}]})
    assert rc == 0 and new["approved"]
    rc, info, _ = ansible("trust_anchor_info", {"store": db, "provider": "renapo"})
    assert info["approved_pems"] == [files["old_pem"], files["new_pem"]]  # oldest approval first; short expired
    assert {a["fingerprint"] for a in info["anchors"] if a["state"] == "approved"} == {
        files["old_fp"], files["short_fp"], files["new_fp"]}

    rc, retired, _ = ansible("trust_anchor", {"store": db, "provider": "renapo", "actor": "luis", "state": "retired",
                                              "fingerprint": files["old_fp"], "reason": "RENAPO ya no lo presenta"})
    assert rc == 0 and retired["changed"] and retired["anchor"]["state"] == "retired"
    rc, info, _ = ansible("trust_anchor_info", {"store": db, "provider": "renapo"})
    assert info["approved_pems"] == [files["new_pem"]]


def test_check_mode_writes_nothing(files, tmp_path):
    absent = tmp_path / "absent.db"
    args = {"store": str(absent), "provider": "renapo", "actor": "ana", "state": "approved",
            "certificate": files["new"], "evidence": [{"kind": "operator", "detail": "oficio"}]}
    rc, preview, _ = ansible("trust_anchor", args, "--check")
    assert rc == 0 and preview["changed"] and preview["approved"]  # record + evidence + approval, previewed together
    assert not absent.exists()
    rc, info, _ = ansible("trust_anchor_info", {"store": str(absent), "provider": "renapo"})
    assert rc == 0 and info["anchors"] == [] and info["approved_pems"] == [] and info["lock"] is None
    assert not absent.exists()
    db = tmp_path / "tickets.db"
    open_lab(str(db)).close()
    rc, preview, _ = ansible("trust_anchor", {**args, "store": str(db)}, "--check")
    assert rc == 0 and preview["changed"] and preview["approved"]
    rc, lock, _ = ansible("fleet_lock", {"store": str(db), "provider": "renapo", "holder": "job-1"}, "--check")
    assert rc == 0 and lock["changed"] and lock["acquired"]
    with open_lab(str(db)) as store:
        assert store.anchors() == [] and store.registry_audit() == [] and store.fleet_lock_info("renapo") is None


def test_fleet_lock_module(db):
    base = {"store": db, "provider": "renapo"}
    rc, first, _ = ansible("fleet_lock", {**base, "holder": "awx-job-41 (ana)", "ttl": 600})
    assert rc == 0 and first["changed"] and first["acquired"] and first["holder"] == "awx-job-41 (ana)"
    rc, refused, _ = ansible("fleet_lock", {**base, "holder": "awx-job-42 (luis)"})
    assert rc != 0 and refused["holder"] == "awx-job-41 (ana)"
    assert (f"held by awx-job-41 (ana) since {first['acquired_at']}, expires {first['expires_at']}"
            in refused["msg"])
    assert "ansible localhost -m fleet_lock -a" in refused["msg"] and "state=absent force=true" in refused["msg"]
    rc, again, _ = ansible("fleet_lock", {**base, "holder": "awx-job-41 (ana)", "ttl": 900})
    assert rc == 0 and again["acquired"] is False and again["acquired_at"] == first["acquired_at"]
    rc, info, _ = ansible("trust_anchor_info", {**base})
    assert info["lock"]["holder"] == "awx-job-41 (ana)" and info["lock"]["expires_at"] == again["expires_at"]
    rc, not_yours, _ = ansible("fleet_lock", {**base, "holder": "awx-job-42 (luis)", "state": "absent"})
    assert rc != 0 and "awx-job-42 (luis) does not hold the fleet lock of renapo" in not_yours["msg"]
    rc, forced, _ = ansible("fleet_lock", {**base, "holder": "luis", "state": "absent", "force": True})
    assert rc == 0 and forced["changed"] and forced["released"] and forced["forced"]
    assert forced["holder"] == "awx-job-41 (ana)"
    rc, free, _ = ansible("fleet_lock", {**base, "holder": "luis", "state": "absent"})
    assert rc == 0 and free["changed"] is False and free["released"] is False
    with open_lab(db) as store:
        assert [(r["action"], r["actor"]) for r in store.registry_audit("renapo")] == [
            ("lock_acquired", "awx-job-41 (ana)"), ("lock_extended", "awx-job-41 (ana)"),
            ("lock_forced_release", "luis")]


def test_seeding_leaves_out_an_anchor_held_by_one_host_only(files, tmp_path):
    """A rogue anchor planted on one host must not become trusted fleet-wide by the day-one seed."""
    planted = tmp_path / "host2.pem"
    planted.write_text(files["old_pem"] + files["new_pem"])
    clean = tmp_path / "host1.pem"
    clean.write_text(files["old_pem"])
    db = str(tmp_path / "tickets.db")
    rc, seeded, stdout = ansible("trust_anchor", {"store": db, "provider": "renapo", "actor": "ana", "state": "seeded",
                                                  "certificates": [str(clean), str(planted)], "reason": "alta"})
    assert rc == 0 and [a["fingerprint"] for a in seeded["anchors"]] == [files["old_fp"]]
    assert "held by some of the files only" in stdout


def test_only_the_registry_trust_providers_have_anchors(tmp_path):
    args = {"store": str(tmp_path / "t.db"), "actor": "ana", "state": "pending", "fingerprint": ":".join(["AB"] * 32),
            "evidence": [{"kind": "operator", "detail": "confirmada por teléfono"}]}
    rc, refused, _ = ansible("trust_anchor", {**args, "provider": "sat"})
    assert rc != 0 and refused["msg"] == ("provider 'sat' has no trust anchors: the trust providers of the registry "
                                          "(procedure_providers) are renapo")
    # A trust provider defined in inventory only: its evidence is recorded with no code change.
    with_ine = lab_providers(**THIRD_PROVIDER)
    rc, recorded, _ = ansible("trust_anchor", {**args, "provider": "ine", "providers": with_ine})
    assert rc == 0 and recorded["changed"] and recorded["anchor"]["provider"] == "ine"
    assert recorded["anchor"]["evidence"][0]["kind"] == "operator"
