"""The procedure for SAT's identity: request → SAT's e-mail with an e.firma-style .cer/.key → renew → every host
presents the new client certificate to SAT → ticket closed. Real mailbox, store, hosts and SAT simulator."""
from __future__ import annotations

import json
import sys
from email.message import EmailMessage

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from labtools import ROOT, run

sys.path.insert(0, str(ROOT / "scripts"))
import demo_procedure as procedure  # noqa: E402
from ansible.module_utils.consulta import consult  # noqa: E402

PASSPHRASE = "frase-de-la-efirma-2027"


def playbook(name, *args, check=True):
    return run([str(ROOT / ".venv/bin/ansible-playbook"), f"playbooks/{name}", *args], check=check)


def sat_delivery(folio: str, cer: bytes, key: bytes) -> EmailMessage:
    """SAT's answer: the certificate as DER .cer and the key as encrypted PKCS#8 DER .key, the folio quoted."""
    msg = EmailMessage()
    msg["From"] = "Servicio de Administración Tributaria <certificados@sat.gob.mx>"
    msg["Subject"] = f"Certificado renovado para el servicio de opinión de cumplimiento - folio {folio}"
    msg.set_content(f"Se adjunta el certificado renovado (folio {folio}). La contraseña de la llave privada se "
                    "entrega por separado.\n")
    msg.add_attachment(cer, maintype="application", subtype="pkix-cert", filename="efirma_2027.cer")
    msg.add_attachment(key, maintype="application", subtype="octet-stream", filename="efirma_2027.key")
    return msg


def test_sat_identity_from_request_to_closed_ticket(fresh_lab):
    lab = fresh_lab
    procedure.deliver(procedure.request_mail(procedure.STAFF, service="SAT"))
    playbook("intake.yml")
    with procedure.store() as s:
        ticket = s.find()[0]
    assert (ticket["service"], ticket["state"]) == ("sat", "requester_validated")

    cert_path, key_path = lab.pki.issue_sat_client(lab.STATE, "efirma-2027")
    leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    cer = leaf.public_bytes(serialization.Encoding.DER)
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(PASSPHRASE.encode()))
    procedure.deliver(sat_delivery(ticket["folio"], cer, key_der))
    playbook("intake.yml")
    with procedure.store() as s:
        assert s.get(ticket["id"])["state"] == "certificate_received"

    # The passphrase comes from a vars file (as a vault or AWX's credential would give it), not the command line.
    secret = lab.STATE / "efirma-passphrase.json"
    secret.write_text(json.dumps({"renew_private_key_passphrase": PASSPHRASE}))
    secret.chmod(0o600)
    out = playbook("renew.yml", "-e", f"folio={ticket['folio']}", "-e", f"@{secret}")
    with procedure.store() as s:
        done = s.get(ticket["id"])
    assert done["state"] == "closed", out.stdout[-3000:]
    hosts = sorted(p.name for p in (lab.STATE / "hosts").glob("consulta-*"))
    assert sorted(done["verified_hosts"]) == hosts
    serial = format(leaf.serial_number, "X")
    for h in hosts:
        url = f"http://{lab.host_ip(int(h.rsplit('-', 1)[1]))}:{lab.GATEWAY_PORT}"
        seen = consult("rfc_opinion", url, rfc=procedure.padron.check_rfc(lab.STATE), timeout=5)["client_serial"]
        assert seen.lstrip("0") == serial.lstrip("0"), h
    assert PASSPHRASE not in out.stdout + out.stderr
