#!/usr/bin/env python3
"""The procedure part of `make demo`: from the request e-mail to the closed ticket, on the lab of $LAB_SLOT.

Every e-mail goes through the lab's real mail host (Postfix, OpenDKIM, dnsmasq) into the Mesa's IMAP mailbox.
0. An operator seeds the anchor registry once from what the hosts trust (playbooks/anchor.yml -e op=seed).
1. Ana (staff) asks for the RENAPO renewal by e-mail (DKIM-signed) -> intake: ticket, folio, requester validated.
2. Forged deliveries (RENAPO's real address unsigned with a planted Authentication-Results, a look-alike domain, Ana's
   address unsigned), each with the forger's own CA and a letter stating its fingerprint -> quarantined, recorded
   only as claims; no host touched, no rogue entry in the registry.
3. RENAPO publishes; its DKIM-signed e-mail (no folio of ours) lands -> attached to Ana's ticket.
4. renew.yml -> the new anchor approved on the authenticated letter (evidence printed) -> every host verified ->
   notices in the SMTP sink -> ticket closed; RENAPO switches under a probe: no consultation fails.
5. A request from someone outside the Secretaría -> oficio de respuesta -> ticket closed.
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
import re
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
import mailhost  # noqa: E402
import yaml  # noqa: E402
from ansible.module_utils.consulta import ConsultaError, consult  # noqa: E402
from ansible.module_utils.ticket_store import open_store  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from sim import padron  # noqa: E402


def lab_registry() -> dict:
    """The lab inventory's provider registry (procedure_providers), as the playbooks pass it to the store."""
    path = ROOT / "inventories" / "lab" / "group_vars" / "all" / "providers.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))["procedure_providers"]

STAFF = {"name": "Ana López Ruiz", "email": "ana.lopez@agricultura.gob.mx",
         "unit": "Dirección General de Padrones y Registros"}
MESA = mailhost.MESA_ADDRESS
OUTSIDER = {"name": "Pedro Gálvez Ortega", "email": "pedro.galvez@agricultura.gob.mx",
            "unit": "Dirección General de Padrones y Registros"}
RENAPO_SENDER = "Dirección de Servicios de Consulta RENAPO <servicios.consulta@renapo.gob.mx>"


# ---- e-mails into the Mesa de Servicios inbox -------------------------------------------------------------------

def deliver(msg: EmailMessage, via: str | None = None) -> str:
    """Mails a message to the Mesa de Servicios through the lab's real mail host and waits until it is in the IMAP
    mailbox. via: the signing MTA of the From: domain (RENAPO, SAT, the Secretaría) when it has one, else "external"
    (straight to the Secretaría's MX, unsigned, as any outside sender or forger)."""
    if "Message-ID" not in msg:
        msg["Message-ID"] = email.utils.make_msgid(domain=msg["From"].rpartition("@")[2].rstrip(">"))
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["To"] = "mesa.servicios@agricultura.gob.mx"
    if via is None:
        domain = email.utils.parseaddr(msg["From"])[1].rpartition("@")[2].lower()
        via = next((name for name, d in mailhost.SIGNING_DOMAINS.items() if d == domain), "external")
    message_id = mailhost.send(msg, via)
    mailhost.wait_for(message_id)
    return message_id


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
    data = like.read_bytes()
    genuine = (x509.load_pem_x509_certificate if b"-----BEGIN" in data else x509.load_der_x509_certificate)(data)
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
    return open_store(str(labctl.STATE / "procedure" / "tickets.db"), providers=lab_registry())


def mail_settled(timeout: float = 20) -> bool:
    """Waits until the lab mail host's Postfix queues (outbound MTA and MX) are empty, i.e. every notice the
    procedure submitted is in the SMTP sink or the Mesa's mailbox; False if mail is still queued after timeout."""
    queues = [mailhost._dir(labctl.STATE) / f"postfix-{role}" / "queue" for role in ("out", "mx")]
    deadline = time.monotonic() + timeout
    while True:
        queued = [f for q in queues for sub in ("maildrop", "incoming", "active", "deferred", "hold")
                  if (q / sub).is_dir() for f in (q / sub).rglob("*") if f.is_file()]
        if not queued:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _mesa_notices() -> list[email.message.Message]:
    """The procedure's notices delivered to the Mesa's own mailbox (any folder: INBOX until intake files them)."""
    found: dict[str, email.message.Message] = {}
    try:
        conn = mailhost.imap_connect()
    except OSError:  # no mail host (a lab without it): only the sink
        return []
    with conn:
        _typ, boxes = conn.list()
        for line in boxes or []:
            name = line.decode().rsplit(' "/" ', 1)[-1].strip('"') if line else ""
            if not name or conn.select(f'"{name}"', readonly=True)[0] != "OK":
                continue
            _typ, data = conn.uid("SEARCH", None, "FROM", f'"{MESA}"', "HEADER", "Auto-Submitted", '"auto-generated"')
            for uid in (data[0].split() if data and data[0] else []):
                _typ, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                for part in parts:
                    if isinstance(part, tuple):
                        msg = mailbox.MaildirMessage(part[1])  # as the sink's messages: get_date() sorts them
                        try:
                            msg.set_date(email.utils.parsedate_to_datetime(msg["Date"]).timestamp())
                        except (TypeError, ValueError):
                            pass
                        found.setdefault(str(msg["Message-ID"]).strip(), msg)
    return list(found.values())


def sink() -> list[email.message.Message]:
    """Every notice the procedure sent, oldest first, with X-Lab-Rcpt-To naming all its envelope recipients.

    Notices go through the lab's mail host: the MX delivers the Mesa's copy to its IMAP mailbox and relays the other
    recipients to the SMTP sink. Both copies are merged here, so X-Lab-Rcpt-To reads as if one server had received
    the message (recipients in To, Cc order, as smtplib submits them)."""
    mail_settled()
    box = mailbox.Maildir(labctl.STATE / "mail" / "sink", create=True)
    messages = [box.get_message(k) for k in box.keys()]
    by_id = {str(m["Message-ID"]).strip(): m for m in messages if m["Message-ID"]}
    for copy in _mesa_notices():
        merged = by_id.get(str(copy["Message-ID"]).strip())
        if merged is None:
            copy["X-Lab-Rcpt-To"] = MESA
            messages.append(copy)
            continue
        rcpts = {r.strip().lower() for r in str(merged["X-Lab-Rcpt-To"] or "").split(",") if r.strip()} | {MESA}
        order = [a.lower() for _n, a in email.utils.getaddresses(merged.get_all("To", []) + merged.get_all("Cc", []))]
        ordered = [a for a in dict.fromkeys(order) if a in rcpts] + sorted(rcpts - set(order))
        merged.replace_header("X-Lab-Rcpt-To", ", ".join(ordered))
    return sorted(messages, key=lambda m: m.get_date() or 0)


def quarantined() -> list[email.message.Message]:
    """The messages intake moved to the Mesa's quarantine folder (IMAP), each with its X-Quarantine-Reason."""
    out = []
    with mailhost.imap_connect() as conn:
        if conn.select('"Cuarentena"', readonly=True)[0] != "OK":
            return out
        _typ, data = conn.uid("SEARCH", None, "ALL")
        for uid in (data[0].split() if data and data[0] else []):
            _typ, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
            out += [email.message_from_bytes(p[1]) for p in parts if isinstance(p, tuple)]
    return out


def reason(msg) -> str:
    return str(email.header.make_header(email.header.decode_header(msg["X-Quarantine-Reason"])))


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
                    consult("curp_soap", url, curp=self.curp, usuario="DGTIC_LAB", password="lab-renapo-pass",  # noqa: S106 - lab-only credentials
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


def rogue_letter(rogue: Path) -> str:
    """The strong forgery's letter: RENAPO's wording, stating the forger's own CA's (matching) fingerprint."""
    cert = x509.load_pem_x509_certificate(rogue.read_bytes())
    return ("Oficio No. RENAPO/DSC/2026/GEN2\nA las dependencias usuarias del servicio ConsultaPorCurpService:\n"
            "Se adjunta el nuevo certificado. Huella digital SHA-256 de la nueva raiz de confianza:\n"
            f"{cert.fingerprint(hashes.SHA256()).hex(':').upper()}\n")


def forged_publication(sender: str, rogue: Path) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["Subject"] = "Renovación del certificado del servicio web ConsultaPorCurpService (GEN2)"
    # A forger can write any header; the Secretaría's receiving server removes this one before adding its own.
    msg["Authentication-Results"] = "mx.agricultura.gob.mx; dkim=pass header.d=renapo.gob.mx"
    msg.set_content(rogue_letter(rogue))
    msg.add_attachment(rogue.read_bytes(), maintype="application", subtype="x-pem-file",
                       filename="renapo_raiz_gen2.pem")
    return msg


def run(n_hosts: int = 5) -> int:
    """The procedure end to end on the lab slot in $LAB_SLOT (started fresh here); returns an exit code."""
    say(f"Procedure: lab slot {labctl.SLOT}, {n_hosts} hosts, fresh state, mail through the lab's real mail host")
    labctl.up(n_hosts, fresh=True)
    urls = [f"http://{labctl.host_ip(i)}:{labctl.GATEWAY_PORT}" for i in range(1, n_hosts + 1)]
    curp = padron.check_curp(labctl.STATE)
    step("anchor.yml", "-e", "provider=renapo", "-e", "op=seed", "-e", "operator=jdoe")

    say("1.1–3.2  Ana's request, signed by the Secretaría's mail server, lands in the Mesa's IMAP mailbox -> intake")
    deliver(request_mail(STAFF))
    step("intake.yml")
    with store() as s:
        first = s.find()[0]
    print(f"   ticket #{first['id']} folio {first['folio']} state {first['state']}")

    say("The attack: forged RENAPO deliveries, each with the forger's own CA and a letter stating its fingerprint")
    rogue = rogue_certificate(labctl.STATE / "demo" / "renapo_raiz_falsa.pem",
                              labctl.pki.ensure(labctl.STATE)["renapo_anchor"])
    before = bundle_checksums()
    spoofed = forged_publication("Dirección de Servicios de Consulta RENAPO <servicios.consulta@renapo.gob.mx>", rogue)
    deliver(spoofed, via="external")  # RENAPO's real address, unsigned, straight to the Secretaría's MX
    deliver(forged_publication("RENAPO <servicios.consulta@renapo-gob.mx>", rogue), via="external")  # look-alike
    deliver(forged_publication("Ana López Ruiz <ana.lopez@agricultura.gob.mx>", rogue), via="external")
    step("intake.yml")
    for msg in quarantined():
        sender = str(email.header.make_header(email.header.decode_header(msg["From"])))
        print(f"   quarantined: {sender[:58]:<58} {reason(msg)[:110]}")
    rogue_fp = x509.load_pem_x509_certificate(rogue.read_bytes()).fingerprint(hashes.SHA256()).hex(":").upper()
    with store() as s:
        registry = s.anchors("renapo")
        claims = [e["kind"] for e in s.anchor_evidence("renapo", rogue_fp)]
        untouched = s.get(first["id"])["state"] == "requester_validated"
    print(f"   rogue anchor in the registry: {rogue_fp in {a['fingerprint'] for a in registry}}; its fingerprint is "
          f"recorded only as: {', '.join(sorted(set(claims))) or 'nothing'}; ticket untouched: {untouched}; "
          f"hosts' trust bundles unchanged: {bundle_checksums() == before}")

    say("4.2  RENAPO publishes its renewal and mails it, DKIM-signed, to the agencies (no folio of ours)")
    published = labctl.pki.publish(labctl.STATE)
    message_id = mailhost.mail_publication(labctl.STATE, published)
    arrived = mailhost.wait_for(message_id)
    print(f"   {message_id}: " + next((ln.strip() for ln in arrived.decode(errors="replace").splitlines()
                                      if "dkim=" in ln), "no Authentication-Results"))
    step("intake.yml")

    say("4.1, 5.1, 5.2  renew.yml: approve the anchor on its evidence, roll out host by host, verify, notify, close")
    before = bundle_checksums()
    p = step("renew.yml", "-e", f"folio={first['folio']}")
    evidence = re.search(r'"msg": "([^"]*approved:[^"]*)"', p.stdout)
    print(f"   registry: {evidence.group(1) if evidence else '?'}")
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
        approved = {a["fingerprint"] for a in s.anchors("renapo", states=["approved"])}
    ok = (states.get(1) == "closed" and not probe.failed and states.get(2) == "closed" and untouched
          and rogue_fp not in approved and published["fingerprint_sha256"] in approved)
    print(f"\n   procedure demo: {'OK' if ok else 'FAILED'} — states {json.dumps(states)}")
    return 0 if ok else 1


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=int(os.environ.get("HOSTS", 3)))
    sys.exit(run(ap.parse_args().hosts))
