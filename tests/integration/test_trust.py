"""Trust only what is proven, on the lab's real mail host (Postfix, OpenDKIM, dnsmasq, Dovecot IMAP), ticket store
and hosts: the attack of a forged request and forged deliveries, each with a letter stating the rogue anchor's own
fingerprint, is refused with no host touched and no rogue entry in the registry; RENAPO's genuine, DKIM-signed
publication (no folio of ours) is approved on that authentication; the same publication with its signature broken
is refused until a named operator records the fingerprint, then accepted; one rollout per provider at a time."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import sys

import dkim
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from labtools import ROOT, run

sys.path.insert(0, str(ROOT / "scripts"))
import demo_procedure as procedure  # noqa: E402

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
ATTACKER = {"name": "Ana López Ruiz", "email": "ana.lopez@agricultura.gob.mx",
            "unit": "Dirección General de Padrones y Registros"}


def playbook(name, *args, check=True):
    return run([PLAYBOOK, f"playbooks/{name}", *args], check=check)


def checksums(lab):
    return {t.name: hashlib.sha256((t / "etc-consulta/trust/renapo-bundle.pem").read_bytes()).hexdigest()
            for t in sorted((lab.STATE / "hosts").glob("consulta-*"))}


def anchors_on(lab, host):
    bundle = lab.STATE / "hosts" / host / "etc-consulta" / "trust" / "renapo-bundle.pem"
    return {c.fingerprint(hashes.SHA256()).hex(":").upper() for c in x509.load_pem_x509_certificates(
        bundle.read_bytes())}


def rogue_ca(lab):
    """The forger's own CA, under RENAPO's name, with a letter stating its own (matching) fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=RENAPO Raiz de Confianza G2 (lab),O=RENAPO (laboratorio),C=MX")
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=900))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path = lab.STATE / "rogue_raiz.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    letter = ("Oficio No. RENAPO/DSC/2026/GEN2\nA las dependencias usuarias del servicio ConsultaPorCurpService:\n"
              f"Huella digital SHA-256 de la nueva raiz de confianza:\n{fingerprint}\n")
    return path, fingerprint, letter


def forged_delivery(sender, path, letter, subject="Renovación del certificado del servicio web ConsultaPorCurpService"):
    msg = procedure.EmailMessage()
    msg["From"] = sender
    msg["Subject"] = subject
    msg.set_content(letter)
    msg.add_attachment(path.read_bytes(), maintype="application", subtype="x-pem-file", filename=path.name)
    return msg


def test_forged_request_and_deliveries_are_refused_and_the_genuine_publication_is_approved(fresh_lab):
    lab = fresh_lab
    before = checksums(lab)
    # An outside sender naming a staff member in the body; and the same staff member's From: spoofed, unsigned.
    outsider = procedure.request_mail(ATTACKER)
    outsider.replace_header("From", "Ana López <ana.lopez.sader@correo-externo.mx>")
    procedure.deliver(outsider, via="external")
    procedure.deliver(procedure.request_mail(ATTACKER), via="external")
    playbook("intake.yml")
    with procedure.store() as s:
        assert s.find() == [], "an unauthenticated request opened a ticket"
    warned = [m for m in procedure.sink() if procedure.subject(m).startswith("Aviso de seguridad")]
    assert [m["X-Lab-Rcpt-To"] for m in warned] == [ATTACKER["email"]]  # the person of record, never the forger

    # Ana's genuine request (signed by the Secretaría's MTA) is validated.
    procedure.deliver(procedure.request_mail(procedure.STAFF))
    playbook("intake.yml")
    with procedure.store() as s:
        [ticket] = s.find()
    assert ticket["state"] == "requester_validated"

    # Forged deliveries, each with the forger's letter stating the rogue CA's own fingerprint.
    rogue, rogue_fp, letter = rogue_ca(lab)
    procedure.deliver(forged_delivery("RENAPO <servicios.consulta@renapo-gob.mx>", rogue, letter))  # look-alike
    spoof = forged_delivery("Dirección de Servicios de Consulta RENAPO <servicios.consulta@renapo.gob.mx>", rogue,
                            letter + f"\nFolio: {ticket['folio']}\n")
    spoof["Authentication-Results"] = "mx.agricultura.gob.mx; dkim=pass header.d=renapo.gob.mx"  # planted
    procedure.deliver(spoof, via="external")
    out = playbook("intake.yml").stdout
    assert out.count("-> quarantined") == 2, out
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "requester_validated"
        assert rogue_fp not in {a["fingerprint"] for a in s.anchors("renapo")}
        assert {e["kind"] for e in s.anchor_evidence("renapo", rogue_fp)} <= {"claim"}
    # Even renew on the ticket refuses: nothing was delivered to it.
    refused = playbook("renew.yml", "-e", f"folio={ticket['folio']}", check=False)
    assert refused.returncode != 0 and checksums(lab) == before

    # RENAPO's genuine publication: DKIM-signed by RENAPO's MTA, addressed "a las dependencias usuarias", no folio.
    published = lab.pki.publish(lab.STATE)
    message_id = lab.mailhost.mail_publication(lab.STATE, published)
    delivered = lab.mailhost.wait_for(message_id)
    verdict = " ".join(email.message_from_bytes(delivered)["Authentication-Results"].split())
    assert verdict.startswith("mx.agricultura.gob.mx;") and "dkim=pass" in verdict
    assert "header.d=renapo.gob.mx" in verdict
    playbook("intake.yml")
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "certificate_received"
    out = playbook("renew.yml", "-e", f"folio={ticket['folio']}").stdout
    assert "authenticated_mail" in out
    with procedure.store() as s:
        done = s.get(ticket["id"])
        entry = s.anchor("renapo", published["fingerprint_sha256"])
        assert rogue_fp not in {a["fingerprint"] for a in s.anchors("renapo")}
    assert done["state"] == "closed"
    assert entry["state"] == "approved" and {e["kind"] for e in entry["evidence"]} >= {"authenticated_mail"}
    for host in checksums(lab):
        assert published["fingerprint_sha256"] in anchors_on(lab, host) and rogue_fp not in anchors_on(lab, host)


def test_broken_signature_waits_for_an_operator_then_is_accepted(fresh_lab):
    lab = fresh_lab
    procedure.deliver(procedure.request_mail(procedure.STAFF))
    playbook("intake.yml")
    with procedure.store() as s:
        [ticket] = s.find()
    published = lab.pki.publish(lab.STATE)
    # RENAPO's publication signed with RENAPO's real key, then altered in transit: dkim=fail at the MX.
    msg = lab.mailhost.publication_message(published)
    msg["Message-ID"] = email.utils.make_msgid(domain="renapo.gob.mx")
    msg["Date"] = email.utils.formatdate(localtime=True)
    raw = msg.as_bytes(policy=email.policy.SMTP)
    key = lab.mailhost.dkim_key_path("renapo.gob.mx").read_bytes()
    signed = dkim.sign(raw, lab.mailhost.SELECTOR.encode(), b"renapo.gob.mx", key,
                       include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw
    broken = signed.replace(b"Direccion de Servicios de Consulta", b"Direccion  de Servicios de Consulta", 1)
    assert broken != signed
    lab.mailhost.send_raw(broken, "servicios.consulta@renapo.gob.mx", [lab.mailhost.MESA_ADDRESS])
    assert b"dkim=fail" in lab.mailhost.wait_for(msg["Message-ID"])
    before = checksums(lab)
    out = playbook("intake.yml").stdout
    assert "quarantined" in out and "no autenticada" in out
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "requester_validated"

    # An operator confirms the fingerprint by telephone with RENAPO, records it, and releases the mail.
    fingerprint = published["fingerprint_sha256"]
    playbook("anchor.yml", "-e", "provider=renapo", "-e", f"fingerprint={fingerprint}", "-e", "operator=jdoe",
             "-e", "channel=telefono", "-e", f"folio={ticket['folio']}")
    playbook("intake.yml", "-e", f"release={msg['Message-ID']}", "-e", "operator=jdoe")
    out = playbook("renew.yml", "-e", f"folio={ticket['folio']}").stdout
    with procedure.store() as s:
        done, entry = s.get(ticket["id"]), s.anchor("renapo", fingerprint)
        audit = s.registry_audit("renapo", fingerprint)
    assert done["state"] == "closed" and entry["state"] == "approved", out[-3000:]
    operator = [e for e in entry["evidence"] if e["kind"] == "operator"]
    assert [e["actor"] for e in operator] == ["jdoe"] and "authenticated_mail" not in {e["kind"] for e in
                                                                                     entry["evidence"]}
    assert any(a["actor"] == "jdoe" for a in audit)
    assert all(fingerprint in anchors_on(lab, h) for h in before)


def test_one_rollout_per_provider_at_a_time(fresh_lab):
    lab = fresh_lab
    procedure.deliver(procedure.request_mail(procedure.STAFF))
    playbook("intake.yml")
    published = lab.pki.publish(lab.STATE)
    lab.mailhost.wait_for(lab.mailhost.mail_publication(lab.STATE, published))
    playbook("intake.yml")
    with procedure.store() as s:
        [ticket] = s.find()
        s.fleet_lock("renapo", "renew:DGTIC-RENAPO-2026-999999")  # another renewal is rolling out
    before = checksums(lab)
    held = playbook("renew.yml", "-e", f"folio={ticket['folio']}", check=False)
    assert held.returncode != 0 and "renew:DGTIC-RENAPO-2026-999999" in held.stdout
    assert checksums(lab) == before
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "certificate_received"
        s.fleet_unlock("renapo", "renew:DGTIC-RENAPO-2026-999999")
    playbook("renew.yml", "-e", f"folio={ticket['folio']}")
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "closed" and s.fleet_lock_info("renapo") is None


def test_seeding_is_an_explicit_one_time_operator_action(fresh_lab):
    lab = fresh_lab
    for path in (lab.STATE / "procedure").glob("tickets.db*"):  # fresh_lab seeded it in Python; now as an operator
        path.unlink()
    playbook("anchor.yml", "-e", "provider=renapo", "-e", "op=seed", "-e", "operator=jdoe")
    again = playbook("anchor.yml", "-e", "provider=renapo", "-e", "op=seed", "-e", "operator=jdoe", check=False)
    assert again.returncode != 0
    with procedure.store() as s:
        [entry] = s.anchors("renapo")
        audit = s.registry_audit("renapo")
    gen1 = x509.load_pem_x509_certificate(lab.pki.ensure(lab.STATE)["renapo_anchor"].read_bytes())
    assert entry["fingerprint"] == gen1.fingerprint(hashes.SHA256()).hex(":").upper()
    assert entry["state"] == "approved" and [e["kind"] for e in entry["evidence"]] == ["seed"]
    assert any(a["actor"] == "jdoe" for a in audit)
