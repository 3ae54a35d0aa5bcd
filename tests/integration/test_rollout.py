"""The rollout on the lab: what each host serves and trusts after every fault issue 4 names, and issue 10's
integrity: hosts trust the approved-anchor registry only, drift is removed, one rollout per provider at a time."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible.module_utils.consulta import ConsultaError, consult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from labtools import ROOT, ansible_env, run
from sim import padron

sys.path.insert(0, str(ROOT / "tests"))
from providers import THIRD_PROVIDER, lab_providers  # noqa: E402  (tests/providers.py: the registry, and a third one)

pytestmark = pytest.mark.lab
PLAYBOOK = [str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/rollout.yml"]
BUNDLE = Path("etc-consulta/trust/renapo-bundle.pem")
TRUSTSTORE = Path("etc-consulta/trust/renapo-truststore.p12")
SAT_CERT = Path("etc-consulta/identity/sat/cert.pem")
SAT_KEY = Path("etc-consulta/identity/sat/key.pem")
# Each provider's backups apart (roles/consulta_cert): a restore of one never touches another's files.
RENAPO_BACKUPS = Path("backups/renapo")


# ------------------------------------------------------------------ helpers

def hosts(lab) -> list[str]:
    return sorted(p.name for p in (lab.STATE / "hosts").glob("consulta-*") if lab._read_pid(p.name))


def host_file(lab, host: str, rel: Path) -> Path:
    return lab.STATE / "hosts" / host / rel


def url(lab, host: str) -> str:
    return f"http://{lab.host_ip(int(host.rsplit('-', 1)[1]))}:{lab.GATEWAY_PORT}"


def serves(lab, host: str, service: str = "renapo") -> dict:
    """A real consultation through the host's gateway; raises ConsultaError naming the cause."""
    if service == "sat":
        return consult("rfc_opinion", url(lab, host), rfc=padron.check_rfc(lab.STATE), timeout=5)
    return consult("curp_soap", url(lab, host), curp=padron.check_curp(lab.STATE), usuario="DGTIC_LAB",
                   password="lab-renapo-pass", timeout=5)


def fingerprints(path: Path) -> list[str]:
    return [c.fingerprint(hashes.SHA256()).hex() for c in x509.load_pem_x509_certificates(path.read_bytes())]


def tree_checksums(lab) -> dict[str, str]:
    """sha256 of every file under every host's tree that the rollout may touch (certs, nginx config, backups)."""
    sums = {}
    for h in hosts(lab):
        base = lab.STATE / "hosts" / h
        for sub in ("etc-consulta", "etc-nginx", "backups"):
            for p in sorted((base / sub).rglob("*")):
                if p.is_file():
                    sums[str(p.relative_to(lab.STATE))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return sums


def publish(lab) -> tuple[Path, str, str]:
    """RENAPO publishes: (mailed certificate, fingerprint stated in its letter, new anchor's sha256 hex)."""
    pub = lab.pki.publish(lab.STATE)
    letter = (Path(pub["outbox"]) / "oficio.txt").read_text(encoding="utf-8")
    fp = re.search(r"((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", letter).group(1)
    return Path(pub["outbox"]) / f"renapo_ws_{pub['generation']}.pem", fp, fp.replace(":", "").lower()


def rollout(*extra: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([*PLAYBOOK, *extra], check=check, env=env)


def anchor_pems(lab, *gens: str) -> list[str]:
    """RENAPO's anchors as the registry's approved_pems would hold them (default: every generation of the lab)."""
    base = lab.STATE / "pki" / "renapo"
    gens = gens or tuple(sorted((p.name for p in base.glob("gen*")), key=lambda g: int(g[3:])))
    return [(base / g / "ca.pem").read_text() for g in gens]


def approved(lab, *gens: str, var: str = "rollout_approved_anchors") -> list[str]:
    """The approved anchors given explicitly, instead of the registry read (check.yml: check_approved_anchors)."""
    return ["-e", json.dumps({var: anchor_pems(lab, *gens)})]


def renapo_args(lab, cert: Path, fp: str | None = None) -> list[str]:
    """A RENAPO rollout of cert with every lab generation approved (fp: the letter's, only cross-checked)."""
    return ["-e", "rollout_service=renapo", "-e", f"rollout_certificate={cert}", *approved(lab),
            *(["-e", f"rollout_expected_fingerprint={fp}"] if fp else [])]


def store(lab) -> str:
    return str(lab.STATE / "procedure" / "tickets.db")


def adhoc(module: str, args: dict, check: bool = True) -> subprocess.CompletedProcess:
    """One module run on the controller, as an operator types it (the store's modules take the provider registry,
    as the inventory's procedure_providers gives it)."""
    args = {"providers": "{{ procedure_providers }}", **args}
    return run([str(ROOT / ".venv/bin/ansible"), "localhost", "-m", module, "-a", json.dumps(args)], check=check)


def lock_holder(lab) -> str | None:
    out = adhoc("trust_anchor_info", {"store": store(lab), "provider": "renapo"}).stdout
    lock = json.loads(out[out.index("{"):])["lock"]
    return lock and lock["holder"]


def plant(lab, host: str, cert: x509.Certificate) -> None:
    """A rogue anchor appended to one host's trust bundle, as an intruder (or a stray manual fix) would leave it."""
    bundle = host_file(lab, host, BUNDLE)
    bundle.write_bytes(bundle.read_bytes() + cert.public_bytes(serialization.Encoding.PEM))


def recap(stdout: str) -> dict[str, dict[str, int]]:
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+: (ok=.*)$", stdout, re.M)}


def self_signed(path: Path, cn: str, days: int, not_before_days: int = 0) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=not_before_days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=max(1, 30 - days)))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


# ------------------------------------------------------------------ the promise

def test_rollout_before_the_switch_means_zero_failed_consultations(fresh_lab, tmp_path):
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    old = {h: fingerprints(host_file(lab, h, BUNDLE)) for h in hosts(lab)}

    first = rollout(*renapo_args(lab, cert, fp))
    for h in hosts(lab):
        now = fingerprints(host_file(lab, h, BUNDLE))
        assert now == old[h] + [anchor], f"{h} must keep today's anchor and add the new one"
        assert serves(lab, h)["status_oper"] == "EXITOSO"
        manifests = list(host_file(lab, h, RENAPO_BACKUPS).glob("*/manifest.json"))
        assert len(manifests) == 1
        assert "PRIVATE KEY" not in manifests[0].read_text()
    assert "BEGIN" not in first.stdout and "PRIVATE" not in first.stdout

    # consulta-02 also keeps a Java truststore (host_vars): both anchors, as keytool (an independent reader) sees them.
    listing = subprocess.run(["keytool", "-list", "-storetype", "PKCS12", "-storepass", "changeit", "-keystore",
                              str(host_file(lab, "consulta-02", TRUSTSTORE))], capture_output=True, text=True).stdout
    held = {m.replace(":", "").lower() for m in re.findall(r"SHA-256\): ([0-9A-F:]+)", listing)}
    assert held == set(fingerprints(host_file(lab, "consulta-02", BUNDLE)))

    # Nothing to do, even from a fresh staging dir (as under AWX): the salted truststore is not rewritten either.
    rerun = rollout(*renapo_args(lab, cert, fp), "-e", f"delivery_validate_staging_dir={tmp_path / 'staging'}")
    assert all(r["changed"] == 0 for r in recap(rerun.stdout).values()), rerun.stdout[-2500:]

    # RENAPO switches under a continuous probe of every host: not one consultation may fail.
    failures, done, count = [], threading.Event(), [0]

    def probe():
        while not done.is_set():
            for h in hosts(lab):
                try:
                    serves(lab, h)
                    count[0] += 1
                except ConsultaError as e:
                    failures.append((h, str(e)))

    t = threading.Thread(target=probe)
    t.start()
    time.sleep(0.5)
    assert lab.pki.switch(lab.STATE) == "gen2"
    time.sleep(1.5)
    done.set()
    t.join()
    assert failures == []
    assert count[0] > 20
    for h in hosts(lab):
        assert serves(lab, h)["peer_serial"] is None  # through the gateway: nginx verified RENAPO, not us


def test_a_host_that_missed_the_rollout_fails_after_the_switch_and_a_rollout_fixes_it(fresh_lab):
    lab = fresh_lab
    cert, fp, _ = publish(lab)
    left_out = hosts(lab)[-1]
    rollout(*renapo_args(lab, cert, fp), "--limit", f"consulta_hosts:!{left_out}")
    lab.pki.switch(lab.STATE)
    with pytest.raises(ConsultaError) as err:
        serves(lab, left_out)
    assert err.value.kind == "gateway"
    log = host_file(lab, left_out, Path("log-nginx/error.log")).read_text()
    assert "upstream SSL certificate verify error" in log
    # The registry's approval is what counts, with or without the letter's fingerprint.
    rollout(*renapo_args(lab, cert), "--limit", left_out)
    assert serves(lab, left_out)["status_oper"] == "EXITOSO"


# ------------------------------------------------------------------ fault 1: bad deliveries touch nothing

@pytest.mark.parametrize("case", ["expired", "unapproved", "registry_without_it", "forged_letter",
                                  "fingerprint_mismatch", "sat_key_mismatch"])
def test_a_bad_delivery_touches_no_host(fresh_lab, tmp_path, case):
    lab = fresh_lab
    cert, fp, _ = publish(lab)
    before = tree_checksums(lab)
    if case == "expired":
        bad = tmp_path / "expired.pem"
        self_signed(bad, "renapo.lab", days=-2)
        args, code = ["-e", "rollout_service=renapo", "-e", f"rollout_certificate={bad}", *approved(lab)], "EXPIRED"
    elif case == "unapproved":  # RENAPO's genuine delivery, but nobody approved its anchor yet: the letter is no proof
        args, code = [*renapo_args(lab, cert, fp)[:4], *approved(lab, "gen1"), "-e",
                      f"rollout_expected_fingerprint={fp}"], "UNAPPROVED_ANCHOR"
    elif case == "registry_without_it":  # the real registry (day zero: gen1 only), read by the rollout itself
        args, code = ["-e", "rollout_service=renapo", "-e", f"rollout_certificate={cert}",
                      "-e", f"rollout_expected_fingerprint={fp}"], "is not approved in the trust-anchor registry"
    elif case == "forged_letter":  # the forger's own CA, and a letter stating the forger's own fingerprint
        rogue = tmp_path / "rogue.pem"
        forged = self_signed(rogue, "renapo.lab", days=365)
        args = ["-e", "rollout_service=renapo", "-e", f"rollout_certificate={rogue}", *approved(lab),
                "-e", f"rollout_expected_fingerprint={forged.fingerprint(hashes.SHA256()).hex(':').upper()}"]
        code = "UNAPPROVED_ANCHOR"
    elif case == "fingerprint_mismatch":
        rogue = tmp_path / "rogue.pem"
        self_signed(rogue, "renapo.lab", days=365)
        args, code = renapo_args(lab, rogue, fp), "FINGERPRINT_MISMATCH"
    else:
        c1, _ = lab.pki.issue_sat_client(lab.STATE, "renewal-a")
        _, k2 = lab.pki.issue_sat_client(lab.STATE, "renewal-b")
        args = ["-e", "rollout_service=sat", "-e", f"rollout_certificate={c1}", "-e", f"rollout_private_key={k2}"]
        code = "KEY_MISMATCH"
    p = rollout(*args, check=False)
    assert p.returncode != 0
    assert code in p.stdout, p.stdout[-3000:]
    assert tree_checksums(lab) == before
    for h in hosts(lab):
        assert serves(lab, h)["status_oper"] == "EXITOSO"
    assert lock_holder(lab) is None  # the refused run released the fleet lock it took
    assert not list((lab.STATE / "staging").glob("*/*"))  # and removed its staging directory


# ------------------------------------------------------------------ fault 2: config test fails on one host

def test_config_test_failure_restores_that_host_and_halts(fresh_lab):
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    h1, h2, h3 = hosts(lab)[:3]
    originals = {h: host_file(lab, h, BUNDLE).read_bytes() for h in (h1, h2, h3)}
    # A broken include planted on the second host: nginx keeps serving its loaded config, but `nginx -t` fails.
    host_file(lab, h2, Path("etc-nginx/conf.d/zz-broken.conf")).write_text("this is not nginx syntax;\n")
    p = rollout(*renapo_args(lab, cert, fp), check=False)
    assert p.returncode != 0
    assert re.search(rf"{h2}: step .* failed: config test failed", p.stdout), p.stdout[-3000:]
    assert "hosts not yet reached are untouched" in p.stdout
    assert "Restored to the previous state" in p.stdout
    assert anchor in fingerprints(host_file(lab, h1, BUNDLE))  # the canary went through
    assert host_file(lab, h2, BUNDLE).read_bytes() == originals[h2]  # restored byte for byte
    assert host_file(lab, h3, BUNDLE).read_bytes() == originals[h3]  # never reached
    assert not list(host_file(lab, h3, Path("backups")).iterdir())
    assert serves(lab, h2)["status_oper"] == "EXITOSO"


# ------------------------------------------------------------------ fault 3: consultation fails after reload

def test_consultation_failure_after_reload_rolls_the_host_back(fresh_lab, tmp_path):
    """A SAT identity from a CA that SAT does not accept: nginx loads it fine, SAT refuses it, the canary restores."""
    lab = fresh_lab
    rogue_ca = tmp_path / "rogue-ca.pem"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Not SAT CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=800))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    rogue_ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "consulta-client")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + rogue_ca.read_bytes())
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    canary = hosts(lab)[0]
    before = {h: (host_file(lab, h, SAT_CERT).read_bytes(), host_file(lab, h, SAT_KEY).read_bytes())
              for h in hosts(lab)}
    serial_before = serves(lab, canary, "sat")["client_serial"]
    p = rollout("-e", "rollout_service=sat", "-e", f"rollout_certificate={cert_file}",
                "-e", f"rollout_private_key={key_file}",
                "-e", json.dumps({"delivery_validate_trusted_roots": [str(rogue_ca)]}),
                check=False)
    assert p.returncode != 0
    assert re.search(rf"{canary}: step .*Consult.* failed", p.stdout), p.stdout[-3000:]
    assert "consultation after that: ok" in p.stdout
    for h in hosts(lab):
        assert (host_file(lab, h, SAT_CERT).read_bytes(), host_file(lab, h, SAT_KEY).read_bytes()) == before[h]
    assert serves(lab, canary, "sat")["client_serial"] == serial_before
    assert key_file.read_text().split("\n")[1][:40] not in p.stdout + p.stderr


# ------------------------------------------------------------------ fault 6: the SAT identity path

def test_sat_identity_is_presented_by_every_host(fresh_lab):
    lab = fresh_lab
    cert, key = lab.pki.issue_sat_client(lab.STATE, "renewed-identity")
    serial = format(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number, "X")
    p = rollout("-e", "rollout_service=sat", "-e", f"rollout_certificate={cert}", "-e", f"rollout_private_key={key}",
                "--diff")
    key_line = key.read_text().splitlines()[1]
    assert key_line not in p.stdout + p.stderr
    for h in hosts(lab):
        assert serves(lab, h, "sat")["client_serial"].lstrip("0") == serial.lstrip("0")
        assert oct(host_file(lab, h, SAT_KEY).stat().st_mode & 0o777) == "0o600"


# ------------------------------------------------------------------ check mode

def test_check_diff_touches_nothing_and_shows_fingerprints(fresh_lab):
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    before = tree_checksums(lab)
    p = rollout(*renapo_args(lab, cert, fp), "--check", "--diff")
    assert tree_checksums(lab) == before
    colon_fp = ":".join(anchor[i:i + 2] for i in range(0, 64, 2)).upper()
    assert colon_fp in p.stdout
    assert "BEGIN CERTIFICATE" not in p.stdout


# ------------------------------------------------------------------ issue 10: the registry, drift, the fleet lock

def test_a_rogue_anchor_planted_on_one_host_is_removed_there_and_added_nowhere(fresh_lab, tmp_path):
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    names = hosts(lab)
    target = names[1]
    rogue = self_signed(tmp_path / "rogue.pem", "renapo.lab", days=365)
    plant(lab, target, rogue)
    rogue_fp = rogue.fingerprint(hashes.SHA256()).hex()
    wanted = [x509.load_pem_x509_certificate(p.encode()).fingerprint(hashes.SHA256()).hex()
              for p in anchor_pems(lab)]

    # check.yml reads the real registry (day zero: gen1 approved) and names the drift on that host only.
    check = run([str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/check.yml"], check=False)
    assert check.returncode != 0 and recap(check.stdout)[target]["failed"] == 1, check.stdout[-3000:]
    assert all(recap(check.stdout)[h]["failed"] == 0 for h in names if h != target)
    assert re.search(rf"{target} trusts 1 certificate\(s\) (in \S+ )?the trust-anchor registry does not approve",
                     check.stdout), check.stdout[-3000:]
    assert rogue.fingerprint(hashes.SHA256()).hex(":").upper() in check.stdout

    p = rollout(*renapo_args(lab, cert, fp))
    for h in names:
        # Exactly the registry: the rogue anchor removed where it was, added nowhere.
        assert fingerprints(host_file(lab, h, BUNDLE)) == wanted, h
        assert rogue_fp not in fingerprints(host_file(lab, h, BUNDLE))
        assert serves(lab, h)["status_oper"] == "EXITOSO"
    assert anchor in wanted
    assert f"{target} trusts what the registry does not approve: renapo.lab" in p.stdout
    check = run([str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/check.yml",
                 *approved(lab, var="check_approved_anchors")])
    assert "drift (trusted, not approved): none" in check.stdout


def test_check_diff_shows_the_drift_removal_and_touches_nothing(fresh_lab, tmp_path):
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    target = hosts(lab)[0]
    rogue = self_signed(tmp_path / "rogue.pem", "rogue-ca.example", days=365)
    plant(lab, target, rogue)
    before = tree_checksums(lab)
    p = rollout(*renapo_args(lab, cert, fp), "--check", "--diff")
    assert tree_checksums(lab) == before
    rogue_colon = rogue.fingerprint(hashes.SHA256()).hex(":").upper()
    removed = re.findall(rf"(?m)^-serial [0-9A-F]+ · sha256 {rogue_colon} · CN=rogue-ca.example · .* · removed: (.*)$",
                         p.stdout)
    assert removed and set(removed) == {"not in the trust-anchor registry"}, p.stdout[-3000:]
    added = ":".join(anchor[i:i + 2] for i in range(0, 64, 2)).upper()
    assert re.search(rf"(?m)^\+serial [0-9A-F]+ · sha256 {added} ", p.stdout)
    assert lock_holder(lab) is None  # a dry run takes no lock


def test_rollout_reads_the_registry_and_holds_the_fleet_lock(fresh_lab):
    """No anchors given: the rollout reads the real registry (gen1 seeded; gen2 approved by an operator)."""
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    adhoc("trust_anchor", {"store": store(lab), "provider": "renapo", "state": "approved", "certificate": str(cert),
                           "actor": "jdoe", "evidence": [{"kind": "operator", "detail": "oficio firmado, folio 1"}],
                           "policy": {"accept": ["operator"]}})
    # Another rollout of RENAPO holds the lock: this one is refused naming it, before any host is touched.
    adhoc("fleet_lock", {"store": store(lab), "provider": "renapo", "holder": "awx-job-7 (mgarcia)", "ttl": 600})
    before = tree_checksums(lab)
    p = rollout("-e", "rollout_service=renapo", "-e", f"rollout_certificate={cert}", check=False)
    assert p.returncode != 0 and "awx-job-7 (mgarcia)" in p.stdout, p.stdout[-3000:]
    assert tree_checksums(lab) == before and lock_holder(lab) == "awx-job-7 (mgarcia)"
    adhoc("fleet_lock", {"store": store(lab), "provider": "renapo", "holder": "awx-job-7 (mgarcia)",
                         "state": "absent"})

    p = rollout("-e", "rollout_service=renapo", "-e", f"rollout_certificate={cert}",
                "-e", "rollout_lock_holder=operator jdoe")
    for h in hosts(lab):
        assert fingerprints(host_file(lab, h, BUNDLE))[-1] == anchor
    assert "Take or release the provider's fleet lock" in p.stdout
    assert lock_holder(lab) is None  # it took the lock, so it released it at the end
    assert not list((lab.STATE / "staging").glob("*/*"))  # its staging directory is gone too

    # A caller that already holds the lock (renew.yml) keeps it: the rollout did not take it, so it does not release.
    adhoc("fleet_lock", {"store": store(lab), "provider": "renapo", "holder": "DGTIC-RENAPO-2026-000001"})
    rollout("-e", "rollout_service=renapo", "-e", f"rollout_certificate={cert}",
            "-e", "rollout_lock_holder=DGTIC-RENAPO-2026-000001")
    assert lock_holder(lab) == "DGTIC-RENAPO-2026-000001"


# ------------------------------------------------------------------ faults 4 and 5: hosts and controller die

def _start_rollout(args: list[str]) -> subprocess.Popen:
    env = ansible_env()
    return subprocess.Popen([*PLAYBOOK, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _wait_for(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_a_host_going_down_mid_rollout_stops_the_play_cleanly(fresh_lab):
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    names = hosts(lab)
    originals = {h: host_file(lab, h, BUNDLE).read_bytes() for h in names}
    proc = _start_rollout(renapo_args(lab, cert, fp))
    # As soon as the canary has its new bundle, the last host dies.
    assert _wait_for(lambda: anchor in fingerprints(host_file(lab, names[0], BUNDLE)))
    lab.stop_host(names[-1])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out[-2000:]
    assert "UNREACHABLE" in out or "unreachable=1" in out
    for h in names[:-1]:
        data = host_file(lab, h, BUNDLE).read_bytes()
        if data != originals[h]:  # fully done means: new bundle, and it answers
            assert anchor in fingerprints(host_file(lab, h, BUNDLE))
        assert serves(lab, h)["status_oper"] == "EXITOSO"


def test_sigkill_of_ansible_leaves_every_host_old_or_new_and_a_rerun_converges(fresh_lab):
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    names = hosts(lab)
    originals = {h: host_file(lab, h, BUNDLE).read_bytes() for h in names}
    # The killed run cannot release its fleet lock: the rerun is the same holder (an operator retrying the same job).
    args = [*renapo_args(lab, cert, fp), "-e", "rollout_lock_holder=operator-retry"]
    proc = _start_rollout(args)
    # (a generator is always true: look for an actual entry, so the kill lands mid-rollout, not before it starts)
    assert _wait_for(lambda: any(next(host_file(lab, h, RENAPO_BACKUPS).glob("*"), None) for h in names))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    new_bytes = None
    for h in names:
        data = host_file(lab, h, BUNDLE).read_bytes()
        if data != originals[h]:
            new_bytes = new_bytes or data
            assert data == new_bytes and anchor in fingerprints(host_file(lab, h, BUNDLE))
        leftovers = [p.name for p in host_file(lab, h, BUNDLE).parent.iterdir()
                     if p.name not in (BUNDLE.name, TRUSTSTORE.name, "sat-ca.pem")]
        assert leftovers == [], f"{h} has half-written files: {leftovers}"
        assert serves(lab, h)["status_oper"] == "EXITOSO"
    assert lock_holder(lab) == "operator-retry"  # held until it expires, or its holder comes back
    rollout(*args)
    for h in names:
        assert anchor in fingerprints(host_file(lab, h, BUNDLE))


# ------------------------------------------------------------------ rollback.yml

def test_rollback_returns_hosts_to_the_backup_byte_for_byte(fresh_lab):
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    names = hosts(lab)
    originals = {h: host_file(lab, h, BUNDLE).read_bytes() for h in names}
    rollout(*renapo_args(lab, cert, fp))
    target = names[1]
    label = next(host_file(lab, target, RENAPO_BACKUPS).glob("*/manifest.json")).parent.name
    rollback = [str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/rollback.yml", "-e", "service=renapo"]
    run([*rollback, "--limit", target, "-e", f"rollback_backup={label}"])
    assert host_file(lab, target, BUNDLE).read_bytes() == originals[target]
    assert serves(lab, target)["status_oper"] == "EXITOSO"
    for h in names:
        if h != target:
            assert anchor in fingerprints(host_file(lab, h, BUNDLE))
    p = run([*rollback, "--limit", names[0], "-e", "rollback_backup=19990101T000000Z-nothere"], check=False)
    assert p.returncode != 0
    assert "19990101T000000Z-nothere" in p.stdout
    assert anchor in fingerprints(host_file(lab, names[0], BUNDLE))


def test_rollback_refuses_a_forged_backup_and_a_wrong_service_and_touches_nothing(fresh_lab, tmp_path):
    """Issue 14: a backup copy swapped for a rogue bundle with its checksum updated in the manifest is refused by
    its HMAC; a backup taken for RENAPO is not restored as SAT's; the host keeps its files throughout."""
    lab = fresh_lab
    cert, fp, anchor = publish(lab)
    names = hosts(lab)
    rollout(*renapo_args(lab, cert, fp))
    target = names[1]
    root = next(host_file(lab, target, RENAPO_BACKUPS).glob("*/manifest.json")).parent
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["service"] == "renapo" and len(manifest["hmac"]) == 64
    rollback = [str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/rollback.yml", "--limit", target]

    # RENAPO's backup moved among SAT's (AWX's survey names the provider rollback_service): its manifest says whose.
    moved = host_file(lab, target, Path("backups/sat")) / root.name
    shutil.copytree(root, moved)
    sat_before = host_file(lab, target, SAT_CERT).read_bytes()
    p = run([*rollback, "-e", f"rollback_backup={root.name}", "-e", "rollback_service=sat"], check=False)
    assert p.returncode != 0 and f"backup {root.name} was taken for service renapo, not sat" in p.stdout, p.stdout
    assert anchor in fingerprints(host_file(lab, target, BUNDLE))
    assert host_file(lab, target, SAT_CERT).read_bytes() == sat_before
    shutil.rmtree(moved)
    p = run([*rollback, "-e", "service=nosuch"], check=False)
    assert p.returncode != 0 and "'nosuch'" in p.stdout and "renapo, sat" in p.stdout, p.stdout[-2000:]

    rogue = self_signed(tmp_path / "rogue.pem", "Rogue CA", days=365)
    rogue_pem = rogue.public_bytes(serialization.Encoding.PEM)
    entry = next(e for e in manifest["files"] if e["path"].endswith("renapo-bundle.pem"))
    (root / entry["copy"]).write_bytes(rogue_pem)
    entry["sha256_before"] = hashlib.sha256(rogue_pem).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    before = host_file(lab, target, BUNDLE).read_bytes()
    p = run([*rollback, "-e", "service=renapo", "-e", f"rollback_backup={root.name}"], check=False)
    assert p.returncode != 0 and f"backup {root.name}: the manifest HMAC does not verify" in p.stdout, p.stdout
    assert host_file(lab, target, BUNDLE).read_bytes() == before
    assert rogue.fingerprint(hashes.SHA256()).hex() not in fingerprints(host_file(lab, target, BUNDLE))
    assert serves(lab, target)["status_oper"] == "EXITOSO"


# ------------------------------------------------------------------ issue 13: a host holds any number of providers

def files_of(lab, host: str, *rels: Path) -> dict[str, bytes | None]:
    """The bytes of every file under rels on the host (None when the path does not exist), keyed by path."""
    out = {}
    for rel in rels:
        p = host_file(lab, host, rel)
        if p.is_dir():
            out.update({str(f.relative_to(p.parent)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()})
        else:
            out[str(rel)] = p.read_bytes() if p.exists() else None
    return out


def test_two_trust_providers_on_one_host_never_touch_each_others_files(fresh_lab, tmp_path):
    """A third provider defined only in an inventory overlay (tests/providers.py THIRD_PROVIDER: INE, a trust provider
    whose consultation reuses RENAPO's strategy) gets its own bundle and backups beside RENAPO's on every host; a
    rollout or a rollback of either leaves the other's bytes exactly as they were."""
    lab = fresh_lab
    overlay = tmp_path / "providers-overlay.json"
    overlay.write_text(json.dumps({"procedure_providers": lab_providers(**THIRD_PROVIDER)}))
    names = hosts(lab)
    renapo_files = (BUNDLE, TRUSTSTORE, RENAPO_BACKUPS)
    ine_bundle, ine_backups = Path("etc-consulta/trust/ine-bundle.pem"), Path("backups/ine")
    sat_files = (SAT_CERT, SAT_KEY)

    # RENAPO's renewal first, so each host holds a full RENAPO set (consulta-02 its Java truststore too) and backups.
    cert, fp, anchor = publish(lab)
    rollout(*renapo_args(lab, cert, fp))
    renapo_before = {h: files_of(lab, h, *renapo_files) for h in names}
    sat_before = {h: files_of(lab, h, *sat_files) for h in names}
    assert renapo_before["consulta-02"][str(TRUSTSTORE)] and all(renapo_before[h][str(BUNDLE)] for h in names)

    ine_cert = self_signed(tmp_path / "ine.pem", "ine.lab", days=365)
    ine_fp = ine_cert.fingerprint(hashes.SHA256()).hex()
    # The anchor approved as the registry would (given here, without the lock); INE's consultation (curp_soap, no
    # base path of its own) goes through the lab gateway's CURP route, which proves the host still consults.
    ine_args = ["-e", f"@{overlay}", "-e", "service=ine", "-e", f"rollout_certificate={tmp_path / 'ine.pem'}",
                "-e", json.dumps({"rollout_approved_anchors": [(tmp_path / "ine.pem").read_text()],
                                  "rollout_lock": False})]
    p = rollout(*ine_args)
    assert "INE trust delivery accepted" in p.stdout, p.stdout[-3000:]
    for h in names:
        assert fingerprints(host_file(lab, h, ine_bundle)) == [ine_fp], h
        assert files_of(lab, h, *renapo_files) == renapo_before[h], f"{h}: the INE rollout changed RENAPO's files"
        assert files_of(lab, h, *sat_files) == sat_before[h]
        [manifest] = host_file(lab, h, ine_backups).glob("*/manifest.json")
        assert json.loads(manifest.read_text())["service"] == "ine"
        assert serves(lab, h)["status_oper"] == "EXITOSO"
    rerun = rollout(*ine_args)
    assert all(r["changed"] == 0 for r in recap(rerun.stdout).values()), rerun.stdout[-2500:]

    # RENAPO's rollback to the backup before its renewal: RENAPO's bundle goes back, INE's stays byte for byte.
    target = names[0]
    ine_now = files_of(lab, target, ine_bundle, ine_backups)
    run([str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/rollback.yml", "--limit", target,
         "-e", f"@{overlay}", "-e", "service=renapo"])
    assert anchor not in fingerprints(host_file(lab, target, BUNDLE))
    assert files_of(lab, target, ine_bundle, ine_backups) == ine_now

    # INE's rollback ("latest": before INE's first rollout, when the host had no INE bundle) removes INE's bundle
    # and nothing of RENAPO's.
    renapo_now = files_of(lab, target, *renapo_files)
    run([str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/rollback.yml", "--limit", target,
         "-e", f"@{overlay}", "-e", "service=ine"])
    assert not host_file(lab, target, ine_bundle).exists()
    assert files_of(lab, target, *renapo_files) == renapo_now

    # A provider the registry does not define is refused, naming the registry's providers; nothing is touched.
    before = tree_checksums(lab)
    p = rollout("-e", "service=ine", "-e", f"rollout_certificate={tmp_path / 'ine.pem'}", check=False)
    assert p.returncode != 0 and "'ine'" in p.stdout and "renapo, sat" in p.stdout, p.stdout[-2000:]
    assert tree_checksums(lab) == before
