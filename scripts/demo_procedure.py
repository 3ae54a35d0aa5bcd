#!/usr/bin/env python3
"""The procedure part of `make demo`: from the request e-mail to the closed ticket, on the lab of $LAB_SLOT.

1. Ana (staff) asks for the RENAPO renewal by e-mail -> intake: ticket, folio, requester validated.
2. RENAPO publishes; its e-mail (certificate attached, fingerprint in the letter) lands -> certificate_received.
3. renew.yml -> every host verified -> notices in the SMTP sink -> ticket closed; RENAPO switches under a probe:
   no consultation fails.
4. A request from someone outside the Secretaría -> oficio de respuesta -> ticket closed.
5. A forged delivery (a rogue certificate under RENAPO's genuine letter) -> refused, quarantined; no host touched.
Each ticket's timeline (audit log) is printed at the end. `run(n_hosts)` is what scripts/demo.py calls.

The helpers that write e-mails into the Mesa de Servicios inbox are shared with tests/integration/test_procedure.py.
"""
from __future__ import annotations

import datetime as dt
import email.header
import email.utils
import hashlib
import json
import mailbox
import os
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import conftest  # noqa: E402,F401  (ansible.module_utils.<project module> importable)

sys.path.insert(0, str(ROOT / "lab"))
import labctl  # noqa: E402
from ansible.module_utils.consulta import ConsultaError, consult  # noqa: E402
from ansible.module_utils.ticket_store import open_store  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from sim import padron  # noqa: E402

STAFF = {"name": "Ana López Ruiz", "email": "ana.lopez@agricultura.gob.mx",
         "unit": "Dirección General de Padrones y Registros"}
OUTSIDER = {"name": "Pedro Gálvez Ortega", "email": "pedro.galvez@agricultura.gob.mx",
            "unit": "Dirección General de Padrones y Registros"}
RENAPO_SENDER = "Dirección de Servicios de Consulta RENAPO <servicios.consulta@renapo.gob.mx>"


# ---- e-mails into the Mesa de Servicios inbox -------------------------------------------------------------------

def deliver(msg: EmailMessage) -> str:
    """Drops a message into the lab's Mesa de Servicios inbox (new/), as the mail server would."""
    if "Message-ID" not in msg:
        msg["Message-ID"] = email.utils.make_msgid(domain=msg["From"].rpartition("@")[2].rstrip(">"))
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["To"] = "mesa.servicios@agricultura.gob.mx"
    mailbox.Maildir(labctl.STATE / "mail" / "mesa", create=True).add(msg.as_bytes())
    return msg["Message-ID"]


def request_mail(person: dict, system: str = "Padrón de Productores", service: str = "RENAPO",
                 rank: str | None = "Director de Área", forwarded_by: str = "Luis Pérez Gómez") -> EmailMessage:
    """A renewal request as a person writes it: one field per line."""
    msg = EmailMessage()
    msg["From"] = f"{person['name']} <{person['email']}>"
    msg["Subject"] = f"Solicitud de actualización de certificado {service}"
    lines = [f"Solicitante: {person['name']}", f"Correo: {person['email']}",
             f"Unidad Administrativa: {person['unit']}", f"Sistema: {system}", f"Servicio: {service}",
             f"Turnado por: {forwarded_by}"] + ([f"Cargo: {rank}"] if rank else [])
    msg.set_content("Buenos días:\n\nSolicito la actualización del certificado del servicio de consultas.\n\n"
                    + "\n".join(lines) + "\n\nSaludos cordiales.\n")
    return msg


def reply_mail(person: dict, ticket_id: int, **fields) -> EmailMessage:
    """The requester's answer to an observations notice, quoting [Ticket #N]."""
    msg = EmailMessage()
    msg["From"] = f"{person['name']} <{person['email']}>"
    msg["Subject"] = f"RE: Observaciones a su solicitud de actualización de certificado [Ticket #{ticket_id}]"
    labels = {"rank": "Cargo", "system": "Sistema", "service": "Servicio", "forwarded_by": "Turnado por"}
    msg.set_content("Envío los datos corregidos:\n\n" + "\n".join(f"{labels[k]}: {v}" for k, v in fields.items())
                    + "\n\n> Estimado(a) solicitante:\n> La Mesa de Servicios revisó su solicitud...\n")
    return msg


def delivery_mail(folio: str, outbox: Path, files: list[Path] | None = None, letter: str | None = None) -> EmailMessage:
    """RENAPO's e-mail: the letter (oficio.txt) as the body, the certificate files attached, the folio quoted."""
    msg = EmailMessage()
    msg["From"] = RENAPO_SENDER
    msg["Subject"] = f"Renovación del certificado del servicio ConsultaPorCurp - folio {folio}"
    msg.set_content(letter if letter is not None else (outbox / "oficio.txt").read_text(encoding="utf-8"))
    for path in files if files is not None else sorted(p for p in outbox.iterdir() if p.suffix in (".pem", ".cer")):
        msg.add_attachment(path.read_bytes(), maintype="application", subtype="x-x509-ca-cert", filename=path.name)
    return msg


def rogue_certificate(dest: Path, like: Path) -> Path:
    """A self-signed certificate with the same subject as RENAPO's new root: what a forger would attach."""
    genuine = x509.load_der_x509_certificate(like.read_bytes())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(genuine.subject).issuer_name(genuine.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=730))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    dest.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return dest


# ---- running the procedure -----------------------------------------------------------------------------------------

def env() -> dict:
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_INVENTORY=str(labctl.INVENTORY),
                ANSIBLE_NOCOLOR="1", PATH=f"{ROOT / '.venv/bin'}:{os.environ.get('PATH', '')}")


def playbook(name: str, *args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), f"playbooks/{name}", *args], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=600)
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(p.stdout + p.stderr)
    return p


def store():
    return open_store(str(labctl.STATE / "procedure" / "tickets.db"))


def sink() -> list[email.message.Message]:
    """Every message the lab's SMTP sink received, oldest first."""
    box = mailbox.Maildir(labctl.STATE / "mail" / "sink", create=True)
    return sorted((box.get_message(k) for k in box.keys()), key=lambda m: m.get_date() or 0)


def subject(msg) -> str:
    return str(email.header.make_header(email.header.decode_header(msg["Subject"])))


def bundle_checksums() -> dict:
    """sha256 of each host's trust bundle, read from the host's own tree."""
    out = {}
    for tree in sorted((labctl.STATE / "hosts").glob("consulta-*")):
        bundle = tree / "etc-consulta" / "trust" / "renapo-bundle.pem"
        out[tree.name] = hashlib.sha256(bundle.read_bytes()).hexdigest() if bundle.exists() else None
    return out


class Probe(threading.Thread):
    """Consults every host continuously (the switch must not fail one consultation)."""

    def __init__(self, urls: list[str], curp: str):
        super().__init__(daemon=True)
        self.urls, self.curp, self.ok, self.failed, self.stop = urls, curp, 0, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for url in self.urls:
                try:
                    consult("renapo", url, curp=self.curp, usuario="DGTIC_LAB", password="lab-renapo-pass",  # noqa: S106 - lab-only credentials
                            timeout=5)
                    self.ok += 1
                except ConsultaError as e:
                    self.failed.append(f"{url}: {e}")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def step(name: str, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    log = labctl.STATE / "demo" / f"procedure-{name.replace('.yml', '')}-{int(time.time() * 1000)}.log"
    t0 = time.monotonic()
    p = playbook(name, *args, log=log)
    print(f"   $ ansible-playbook playbooks/{name} {' '.join(args)}  ({time.monotonic() - t0:.1f}s, rc={p.returncode},"
          f" log {log.relative_to(ROOT)})", flush=True)
    if expect_ok and p.returncode != 0:
        print(p.stdout[-3000:], p.stderr[-2000:])
        raise SystemExit(f"{name} failed")
    return p


def timeline(ticket_id: int) -> None:
    with store() as s:
        t = s.get(ticket_id)
        print(f"\n   Ticket #{t['id']} {t['folio'] or '(sin folio)'} — {t['requester']['name']} — {t['state']}")
        for a in s.audit(ticket_id):
            if a["from_state"] == a["to_state"] and not (a["reason"] or "").startswith("Entrega rechazada"):
                continue  # bookkeeping notes (notices sent, messages processed) stay in the ticket
            print(f"     {a['at'][:19]}  {a['actor']:<22} {a['from_state'] or '—':>20} -> {a['to_state']:<20}"
                  f" {(a['reason'] or '')[:70]}")


def run(n_hosts: int = 5) -> int:
    """The procedure end to end on the lab slot in $LAB_SLOT (started fresh here); returns an exit code."""
    say(f"Procedure: lab slot {labctl.SLOT}, {n_hosts} hosts, fresh state")
    labctl.up(n_hosts, fresh=True)
    urls = [f"http://{labctl.host_ip(i)}:{labctl.GATEWAY_PORT}" for i in range(1, n_hosts + 1)]
    curp = padron.check_curp(labctl.STATE)

    say("1.1–3.2  Ana's request lands in the Mesa de Servicios inbox -> intake")
    deliver(request_mail(STAFF))
    step("intake.yml")
    with store() as s:
        first = s.find()[0]
    print(f"   ticket #{first['id']} folio {first['folio']} state {first['state']}")

    say("4.2  RENAPO publishes its renewal and mails it (certificate attached, fingerprint in the letter)")
    published = labctl.pki.publish(labctl.STATE)
    deliver(delivery_mail(first["folio"], published["outbox"]))
    step("intake.yml")

    say("4.1, 5.1, 5.2  renew.yml: validate, roll out host by host, verify, notify, close")
    before = bundle_checksums()
    step("renew.yml", "-e", f"folio={first['folio']}")
    with store() as s:
        first = s.get(first["id"])
    print(f"   ticket {first['folio']}: {first['state']}, serial {first['deployed_serial']}, "
          f"verified {', '.join(first['verified_hosts'])}")
    changed = [h for h, c in bundle_checksums().items() if c != before.get(h)]
    print(f"   hosts whose trust bundle changed: {', '.join(changed)}")

    say("RENAPO switches to the new certificate while a probe consults every host")
    probe = Probe(urls, curp)
    probe.start()
    time.sleep(1.0)
    labctl.pki.switch(labctl.STATE)
    time.sleep(2.0)
    probe.stop.set()
    probe.join()
    print(f"   consultations during the switch: {probe.ok} ok, {len(probe.failed)} failed")

    say("3.2  A request from someone outside the Secretaría")
    deliver(request_mail(OUTSIDER))
    step("intake.yml")

    say("Forged delivery: a rogue certificate under RENAPO's genuine letter, for a validated ticket")
    deliver(request_mail(STAFF, service="RENAPO", system="Sistema de Apoyos a la Comercialización"))
    step("intake.yml")
    with store() as s:
        third = [t for t in s.find() if t["state"] == "requester_validated"][-1]
    rogue = rogue_certificate(labctl.STATE / "demo" / "renapo_raiz_falsa.pem",
                              published["outbox"] / f"renapo_raiz_{published['generation']}.cer")
    before = bundle_checksums()
    deliver(delivery_mail(third["folio"], published["outbox"], files=[rogue]))
    step("intake.yml")
    refused = step("renew.yml", "-e", f"folio={third['folio']}", expect_ok=False)
    print(f"   renew.yml for {third['folio']}: rc={refused.returncode} (ticket not in certificate_received)")
    quarantined = sorted((labctl.STATE / "procedure" / "cuarentena" / "new").iterdir())
    print(f"   quarantine: {len(quarantined)} message(s); hosts' trust bundles unchanged: "
          f"{bundle_checksums() == before}")

    say("Notices in the SMTP sink")
    for msg in sink():
        print(f"   {msg['X-Lab-Rcpt-To'][:60]:<60} {subject(msg)[:90]}")

    say("Timelines (audit log)")
    with store() as s:
        ids = [t["id"] for t in s.find()]
    for ticket_id in ids:
        timeline(ticket_id)
    with store() as s:
        states = {t["id"]: t["state"] for t in s.find()}
    ok = (states.get(1) == "closed" and not probe.failed and states.get(2) == "closed"
          and states.get(third["id"]) == "requester_validated" and bundle_checksums() == before)
    print(f"\n   procedure demo: {'OK' if ok else 'FAILED'} — states {json.dumps(states)}")
    return 0 if ok else 1


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=int(os.environ.get("HOSTS", 3)))
    sys.exit(run(ap.parse_args().hosts))
