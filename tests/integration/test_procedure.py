"""The procedure end to end on the lab: mail through the real mail host -> IMAP mailbox -> tickets -> renew -> hosts,
notices in the real SMTP sink."""
from __future__ import annotations

import hashlib
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from labtools import ROOT, run

sys.path.insert(0, str(ROOT / "scripts"))
import demo_procedure as procedure  # noqa: E402

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
MESA, ENLACE = "mesa.servicios@agricultura.gob.mx", "enlace.soas@agricultura.gob.mx"


def playbook(name, *args, check=True):
    return run([PLAYBOOK, f"playbooks/{name}", *args], check=check)


def anchors(lab, host):
    """SHA-256 fingerprints of every certificate a host's nginx trusts for RENAPO."""
    bundle = lab.STATE / "hosts" / host / "etc-consulta" / "trust" / "renapo-bundle.pem"
    certs = x509.load_pem_x509_certificates(bundle.read_bytes())
    return {c.fingerprint(hashes.SHA256()).hex(":").upper() for c in certs}


def checksums(lab):
    return {t.name: hashlib.sha256((t / "etc-consulta/trust/renapo-bundle.pem").read_bytes()).hexdigest()
            for t in sorted((lab.STATE / "hosts").glob("consulta-*"))}


def mails(subject_start):
    return [m for m in procedure.sink() if procedure.subject(m).startswith(subject_start)]


def test_request_to_closed_ticket_then_switch_without_a_failed_consultation(fresh_lab):
    lab = fresh_lab
    procedure.deliver(procedure.request_mail(procedure.STAFF))
    playbook("intake.yml")
    with procedure.store() as s:
        [ticket] = s.find()
    assert ticket["state"] == "requester_validated"
    [folio_notice] = mails(f"Folio {ticket['folio']} asignado")
    assert folio_notice["X-Lab-Rcpt-To"] == f"{procedure.STAFF['email']}, {ENLACE}"

    published = lab.pki.publish(lab.STATE)
    procedure.deliver(procedure.delivery_mail(ticket["folio"], published["outbox"]))
    playbook("intake.yml")
    playbook("renew.yml", "-e", f"folio={ticket['folio']}")

    hosts = [f"consulta-{i:02d}" for i in range(1, len(checksums(lab)) + 1)]
    with procedure.store() as s:
        ticket, audit = s.get(ticket["id"]), s.audit(ticket["id"])
    assert ticket["state"] == "closed" and ticket["verified_hosts"] == hosts == ticket["hosts"]
    assert [a["to_state"] for a in audit if a["from_state"] != a["to_state"]] == [
        "received", "folio_issued", "requester_validated", "certificate_received", "deploying", "deployed",
        "notified", "closed"]
    assert ticket["deployed_serial"] == format(x509.load_pem_x509_certificate(
        published["leaf"].read_bytes()).serial_number, "X")
    assert all(published["fingerprint_sha256"] in anchors(lab, h) for h in hosts)

    [concluded] = mails("Actualización de certificado concluida")
    body = concluded.get_payload()[0].get_payload(decode=True).decode("utf-8")
    assert concluded["X-Lab-Rcpt-To"] == f"{MESA}, {procedure.STAFF['email']}"
    assert ticket["folio"] in body and "verificados con una consulta real (3)" in body or len(hosts) != 3
    [closed] = mails("Cierre del ticket")
    assert closed["X-Lab-Rcpt-To"] == f"{procedure.STAFF['email']}, {MESA}"

    probe = procedure.Probe([f"http://{lab.host_ip(i)}:{lab.GATEWAY_PORT}" for i in range(1, len(hosts) + 1)],
                            procedure.padron.check_curp(lab.STATE))
    probe.start()
    time.sleep(0.5)
    lab.pki.switch(lab.STATE)
    time.sleep(1.0)
    probe.stop.set()
    probe.join()
    assert probe.ok > 0 and probe.failed == []

    again = playbook("renew.yml", "-e", f"folio={ticket['folio']}", check=False)
    assert again.returncode != 0 and "is 'closed'" in again.stdout


def test_outsider_forgery_unproven_anchor_and_smtp_down(fresh_lab):
    lab = fresh_lab
    procedure.deliver(procedure.request_mail(procedure.OUTSIDER))
    procedure.deliver(procedure.request_mail(procedure.STAFF))
    # SMTP down: intake stops with the ticket committed and the message in new/; the rerun finishes, no duplicate.
    down = playbook("intake.yml", "-e", "procedure_smtp_port=1", check=False)
    assert down.returncode != 0 and "stays in the inbox" in down.stdout
    playbook("intake.yml")
    with procedure.store() as s:
        outsider, staff = s.find()
    assert outsider["state"] == "closed" and "no figura en el directorio" in outsider["cause"]
    oficio = (lab.STATE / "procedure" / "oficios" / f"{outsider['folio']}.txt").read_text()
    assert outsider["folio"] in oficio and "no figura en el directorio" in oficio
    [sent_oficio] = mails(f"Oficio de respuesta a la solicitud con folio {outsider['folio']}")
    assert sent_oficio["X-Lab-Rcpt-To"] == f"{procedure.OUTSIDER['email']}, {MESA}"
    assert staff["state"] == "requester_validated"

    # RENAPO's own (authenticated) mail carrying a rogue certificate under the genuine letter: the letter's
    # fingerprint matches no attachment.
    published = lab.pki.publish(lab.STATE)
    before = checksums(lab)
    rogue = procedure.rogue_certificate(lab.STATE / "rogue.pem",
                                        published["outbox"] / f"renapo_raiz_{published['generation']}.cer")
    procedure.deliver(procedure.delivery_mail(staff["folio"], published["outbox"], files=[rogue]))
    playbook("intake.yml")
    [quarantined] = procedure.quarantined()
    assert procedure.reason(quarantined).startswith("FINGERPRINT_MISMATCH")
    assert mails("Correo en cuarentena")[0]["X-Lab-Rcpt-To"] == MESA

    # The genuine certificate under a letter that states no fingerprint: authenticated, but the letter proves
    # nothing; renew refuses to trust the anchor, names the evidence missing, and touches no host.
    letter = "\n".join(ln for ln in (published["outbox"] / "oficio.txt").read_text().splitlines() if ":" not in ln)
    procedure.deliver(procedure.delivery_mail(staff["folio"], published["outbox"], letter=letter))
    playbook("intake.yml")
    refused = playbook("renew.yml", "-e", f"folio={staff['folio']}", check=False)
    assert refused.returncode != 0 and "playbooks/anchor.yml" in refused.stdout, refused.stdout[-3000:]
    with procedure.store() as s:
        staff = s.get(staff["id"])
        assert s.anchor("renapo", published["fingerprint_sha256"])["state"] == "pending"
    assert staff["state"] == "certificate_received" and staff["verified_hosts"] == [] and checksums(lab) == before

    # RENAPO switches: its live endpoint now presents the new anchor, which is evidence the e-mail cannot forge.
    lab.pki.switch(lab.STATE)
    playbook("renew.yml", "-e", f"folio={staff['folio']}")
    with procedure.store() as s:
        staff, entry = s.get(staff["id"]), s.anchor("renapo", published["fingerprint_sha256"])
    assert staff["state"] == "closed" and entry["state"] == "approved"
    assert [e["kind"] for e in entry["evidence"] if e["kind"] != "claim"] == ["endpoint"]
