"""renew.yml resumes, on the lab's real mail host, ticket store and hosts: SIGKILLed mid-rollout and run again, the
ticket closes with every host verified and the fleet lock released; with SAT's encrypted key, neither the passphrase
nor the decrypted key is in any file of the lab's state tree or /tmp after the kill, nor after the rerun; SMTP down
at the notification leaves the ticket deployed, and the rerun with SMTP up notifies and closes."""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from ansible.parsing.vault import VaultLib, VaultSecret
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from labtools import ROOT, ansible_env, run

sys.path.insert(0, str(ROOT / "scripts"))
import demo_procedure as procedure  # noqa: E402
from ansible.module_utils.consulta import consult  # noqa: E402
from test_procedure_sat import sat_delivery  # noqa: E402

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
BUNDLE = Path("etc-consulta/trust/renapo-bundle.pem")
SAT_CERT, SAT_KEY = Path("etc-consulta/identity/sat/cert.pem"), Path("etc-consulta/identity/sat/key.pem")


def playbook(name, *args, check=True):
    return run([PLAYBOOK, f"playbooks/{name}", *args], check=check)


def host_trees(lab):
    return sorted((lab.STATE / "hosts").glob("consulta-*"))


def checksums(lab, rel):
    return {t.name: hashlib.sha256((t / rel).read_bytes()).hexdigest() for t in host_trees(lab)}


def renew_killed_mid_rollout(lab, folio, watched, *args, timeout=300):
    """Starts renew.yml in its own process group and SIGKILLs the whole group as soon as one host's `watched` file
    changed. Returns (hosts changed at the kill, renew's output until then)."""
    before = checksums(lab, watched)
    proc = subprocess.Popen([PLAYBOOK, "playbooks/renew.yml", "-e", f"folio={folio}", *args], cwd=ROOT,
                            env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            now = checksums(lab, watched)
            changed = sorted(h for h in now if now[h] != before[h])
            if changed:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                reader.join(10)
                return changed, b"".join(out).decode(errors="replace")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    raise AssertionError(f"renew ended (rc {proc.returncode}) before any host changed:\n"
                         f"{b''.join(out).decode(errors='replace')[-4000:]}")


def changed_states(ticket_id):
    with procedure.store() as s:
        return [a["to_state"] for a in s.audit(ticket_id) if a["from_state"] != a["to_state"]]


def renapo_ticket(lab):
    """A RENAPO ticket in certificate_received: the request, then RENAPO's DKIM-signed publication (no folio)."""
    procedure.deliver(procedure.request_mail(procedure.STAFF))
    playbook("intake.yml")
    published = lab.pki.publish(lab.STATE)
    lab.mailhost.wait_for(lab.mailhost.mail_publication(lab.STATE, published))
    playbook("intake.yml")
    with procedure.store() as s:
        [ticket] = s.find()
    assert ticket["state"] == "certificate_received"
    return ticket, published


def anchors_on(tree):
    return {c.fingerprint(hashes.SHA256()).hex(":").upper()
            for c in x509.load_pem_x509_certificates((tree / BUNDLE).read_bytes())}


def assert_closed_everywhere(lab, ticket, folio_dir):
    hosts = [t.name for t in host_trees(lab)]
    with procedure.store() as s:
        done = s.get(ticket["id"])
        assert s.fleet_lock_info(ticket["service"]) is None  # released
    assert done["state"] == "closed" and sorted(done["verified_hosts"]) == hosts == sorted(done["hosts"])
    assert not (folio_dir / "staged").exists() and not (folio_dir / "rollout-vars.json").exists()
    return done


def test_renapo_renew_killed_mid_rollout_resumes_and_closes(fresh_lab):
    lab = fresh_lab
    ticket, published = renapo_ticket(lab)
    changed, _ = renew_killed_mid_rollout(lab, ticket["folio"], BUNDLE)
    assert len(changed) >= 1
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "deploying"
        assert s.fleet_lock_info("renapo")["holder"] == f"renew:{ticket['folio']}"  # the killed run's lock

    out = playbook("renew.yml", "-e", f"folio={ticket['folio']}").stdout
    assert "a run stopped mid-rollout" in out
    assert_closed_everywhere(lab, ticket, lab.STATE / "procedure" / "entregas" / ticket["folio"])
    assert all(published["fingerprint_sha256"] in anchors_on(t) for t in host_trees(lab))
    assert changed_states(ticket["id"]) == ["received", "folio_issued", "requester_validated", "certificate_received",
                                            "deploying", "deployed", "notified", "closed"]
    assert len([m for m in procedure.sink()
                if procedure.subject(m).startswith("Actualización de certificado concluida")]) == 1


def secret_needles(key, passphrase: str) -> dict[str, bytes]:
    """Byte strings only a copy of the passphrase or of the decrypted key holds (never its public half, which the
    certificate carries): the passphrase, the private scalar (in any DER), the first body line of its PKCS#8 and SEC1
    PEM (header and scalar), and that line's base64 as a fact (key_b64) would carry it."""
    numbers = key.private_numbers()
    scalar = numbers.private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    pem8, pem1 = (key.private_bytes(serialization.Encoding.PEM, f, serialization.NoEncryption())
                  for f in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL))
    return {"passphrase": passphrase.encode(), "private scalar": scalar,
            "PKCS#8 PEM": pem8.splitlines()[1], "SEC1 PEM": pem1.splitlines()[1],
            "base64 of the PKCS#8 PEM": base64.b64encode(pem8)[40:120]}


def files_holding(roots, needles: dict[str, bytes], allowed: set[Path]) -> list[str]:
    """'path: what' for every regular file under roots (symlinks not followed) holding any needle."""
    found, overlap = [], max(len(n) for n in needles.values())
    for root in roots:
        for directory, _dirs, names in os.walk(root):
            for name in names:
                path = Path(directory) / name
                try:
                    if not stat.S_ISREG(path.lstat().st_mode) or path in allowed:
                        continue
                    with open(path, "rb") as f:
                        tail = b""
                        while chunk := f.read(1 << 20):
                            data = tail + chunk
                            found += [f"{path}: {what}" for what, n in needles.items() if n in data]
                            tail = data[-overlap:]
                except OSError:
                    continue
    return sorted(set(found))


def test_sat_renew_killed_mid_rollout_leaves_no_secret_on_disk(fresh_lab):
    lab = fresh_lab
    procedure.deliver(procedure.request_mail(procedure.STAFF, service="SAT"))
    playbook("intake.yml")
    with procedure.store() as s:
        [ticket] = s.find()
    cert_path, key_path = lab.pki.issue_sat_client(lab.STATE, f"efirma-{secrets.token_hex(3)}")
    leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    key_path.unlink()  # SAT's own copy, which the lab's PKI keeps for it: never ours
    passphrase = f"frase-{secrets.token_urlsafe(12)}"
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(passphrase.encode()))
    procedure.deliver(sat_delivery(ticket["folio"], leaf.public_bytes(serialization.Encoding.DER), key_der))
    playbook("intake.yml")
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "certificate_received"

    # The passphrase as an operator keeps it: an ansible-vault file (-e @vault-sat.yml), never in clear on disk.
    vault_password = secrets.token_urlsafe(16)
    (lab.STATE / "vault-pass").write_text(vault_password)
    vault = VaultLib([("default", VaultSecret(vault_password.encode()))])
    (lab.STATE / "vault-sat.yml").write_bytes(vault.encrypt(f"renew_private_key_passphrase: {passphrase}\n"))
    args = ("-e", f"@{lab.STATE / 'vault-sat.yml'}", "--vault-password-file", str(lab.STATE / "vault-pass"))

    # The hosts' own key files are where the key must be once installed: the only place it may be.
    needles = secret_needles(key, passphrase)
    allowed = {t / SAT_KEY for t in host_trees(lab)}
    changed, out = renew_killed_mid_rollout(lab, ticket["folio"], SAT_CERT, *args)
    assert passphrase not in out
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "deploying"
    assert files_holding([lab.STATE, Path("/tmp")], needles, allowed) == []
    # The needles do find a copy of the key: the one installed on the host that changed.
    assert files_holding([lab.STATE / "hosts" / changed[0]], needles, set()) == [
        f"{lab.STATE / 'hosts' / changed[0] / SAT_KEY}: PKCS#8 PEM"]

    rerun = playbook("renew.yml", "-e", f"folio={ticket['folio']}", *args)
    assert passphrase not in rerun.stdout + rerun.stderr
    assert_closed_everywhere(lab, ticket, lab.STATE / "procedure" / "entregas" / ticket["folio"])
    serial = format(leaf.serial_number, "X").lstrip("0")
    for tree in host_trees(lab):
        url = f"http://{lab.host_ip(int(tree.name.rsplit('-', 1)[1]))}:{lab.GATEWAY_PORT}"
        seen = consult("rfc_opinion", url, rfc=procedure.padron.check_rfc(lab.STATE), timeout=5)["client_serial"]
        assert seen.lstrip("0") == serial, tree.name
    assert files_holding([lab.STATE, Path("/tmp")], needles, allowed) == []


def test_smtp_down_at_the_notification_leaves_the_ticket_deployed_until_the_rerun(fresh_lab):
    lab = fresh_lab
    ticket, published = renapo_ticket(lab)
    down = playbook("renew.yml", "-e", f"folio={ticket['folio']}", "-e", "procedure_smtp_port=1", check=False)
    assert down.returncode != 0
    with procedure.store() as s:
        deployed = s.get(ticket["id"])
        assert s.fleet_lock_info("renapo") is None  # released although the run failed
    assert deployed["state"] == "deployed", down.stdout[-3000:]
    assert sorted(deployed["verified_hosts"]) == [t.name for t in host_trees(lab)]
    assert not (lab.STATE / "procedure" / "entregas" / ticket["folio"] / "staged").exists()
    before = checksums(lab, BUNDLE)

    out = playbook("renew.yml", "-e", f"folio={ticket['folio']}").stdout
    assert "every host was verified; the Mesa de Servicios is notified" in out
    assert_closed_everywhere(lab, ticket, lab.STATE / "procedure" / "entregas" / ticket["folio"])
    assert checksums(lab, BUNDLE) == before  # no host touched again
    assert changed_states(ticket["id"])[-4:] == ["deploying", "deployed", "notified", "closed"]
    subjects = [procedure.subject(m) for m in procedure.sink()]
    assert sum(s.startswith("Actualización de certificado concluida") for s in subjects) == 1
    assert sum(s.startswith("Cierre del ticket") for s in subjects) == 1
