"""procedure.Intake: every kind of e-mail through its steps, on a real SQLite store, Maildirs and SMTP server."""
import datetime as dt
import email
import email.policy
import json
import sys
from pathlib import Path

import pytest
from ansible.module_utils.mail_intake import ensure_maildir
from ansible.module_utils.procedure import Intake, Mailer
from ansible.module_utils.staff_directory import open_directory
from ansible.module_utils.ticket_store import open_store
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_notify import EphemeralController, MaildirSink

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from demo_procedure import OUTSIDER, STAFF, delivery_mail, reply_mail, request_mail  # noqa: E402

MESA, ENLACE = "mesa.servicios@agricultura.gob.mx", "enlace.soas@agricultura.gob.mx"
CATALOG = {"Padrón de Productores": ["renapo", "sat"], "Precios de Garantía": ["sat"]}


def _cert(name, key, issuer_name, issuer_key, ca):
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string(name))
            .issuer_name(x509.Name.from_rfc4514_string(issuer_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


@pytest.fixture(scope="module")
def outbox(tmp_path_factory):
    """What RENAPO mails: chain PEM (leaf + new root), the root as DER .cer, and the letter with its fingerprint."""
    out = tmp_path_factory.mktemp("outbox")
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("CN=RENAPO raiz 2,O=RENAPO,C=MX", ca_key, "CN=RENAPO raiz 2,O=RENAPO,C=MX", ca_key, True)
    leaf = _cert("CN=renapo.lab,O=RENAPO,C=MX", leaf_key, "CN=RENAPO raiz 2,O=RENAPO,C=MX", ca_key, False)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca))
    (out / "renapo_ws_gen2.pem").write_bytes(pem)
    (out / "renapo_raiz_gen2.cer").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    fingerprint = ca.fingerprint(hashes.SHA256()).hex(":").upper()
    (out / "oficio.txt").write_text(f"Oficio RENAPO\nHuella digital SHA-256 de la nueva raiz:\n{fingerprint}\n")
    return out, fingerprint, format(leaf.serial_number, "X")


@pytest.fixture
def lab(tmp_path):
    sink = MaildirSink(tmp_path / "sink")
    sink.path = tmp_path / "sink"
    controller = EphemeralController(sink, hostname="127.0.0.1", port=0)
    controller.start()
    store = open_store(str(tmp_path / "tickets.db"))
    inbox = ensure_maildir(tmp_path / "mesa")

    def intake(port=None):
        mailer = Mailer("127.0.0.1", port or controller.port, MESA, reply_to=MESA)
        return Intake(store, open_directory(str(ROOT / "lab" / "data" / "staff.yml")), CATALOG, mailer,
                      mesa_address=MESA, enlace_address=ENLACE, deliveries_dir=str(tmp_path / "entregas"),
                      oficios_dir=str(tmp_path / "oficios")).run(inbox, tmp_path / "cuarentena")

    def deliver(msg, message_id=None):
        msg["Message-ID"] = message_id or email.utils.make_msgid()
        (inbox / "new" / f"{len(list((inbox / 'new').iterdir())) + 100}.{id(msg)}.lab").write_bytes(msg.as_bytes())
        return msg["Message-ID"]

    def sent():
        return [email.message_from_bytes(sink.box.get_bytes(k), policy=email.policy.default)
                for k in sorted(sink.box.keys(), key=lambda k: (sink.path / sink.box._lookup(k)).stat().st_mtime_ns)]

    yield type("Lab", (), dict(intake=staticmethod(intake), deliver=staticmethod(deliver), sent=staticmethod(sent),
                               store=store, tmp=tmp_path, inbox=inbox))
    store.close()
    controller.stop()


def test_clean_request_gets_folio_and_is_validated(lab):
    mid = lab.deliver(request_mail(STAFF))
    preview = Intake(lab.store, None, CATALOG, None, MESA, ENLACE, "", "").preview(lab.inbox)
    assert [(o["kind"], o["outcome"]) for o in preview] == [("request", "would_process")] and not lab.store.find()
    [outcome] = lab.intake()
    ticket = lab.store.get(outcome["ticket"])
    assert outcome["outcome"] == "requester_validated"
    assert ticket["folio"] == f"DGTIC-RENAPO-{dt.date.today().year}-000001"
    assert ticket["message_id"] == mid and ticket["requester"]["email"] == STAFF["email"]
    assert [a["to_state"] for a in lab.store.audit(ticket["id"]) if a["from_state"] != a["to_state"]] == \
        ["received", "folio_issued", "requester_validated"]
    [notice] = lab.sent()
    assert notice["X-Envelope-To"] == f"{STAFF['email']}, {ENLACE}"
    assert notice["Subject"].startswith(f"Folio {ticket['folio']} asignado") and ticket["folio"] in notice.get_body(
        ("plain",)).get_content()
    assert list((lab.inbox / "cur").iterdir()) and not list((lab.inbox / "new").iterdir())


def test_observations_then_reply_corrects_and_reevaluates(lab):
    lab.deliver(request_mail(STAFF, rank=None, system="Sistema Inexistente"))
    [first] = lab.intake()
    assert first["outcome"] == "observations" and first["notices"] == ["observations"]
    body = lab.sent()[0].get_body(("plain",)).get_content()
    assert "Falta el dato: cargo de quien turna" in body and "«Sistema Inexistente» no está en el catálogo" in body
    lab.deliver(reply_mail(STAFF, first["ticket"], rank="Director de Área", system="Padrón de Productores"))
    [second] = lab.intake()
    ticket = lab.store.get(first["ticket"])
    assert second["kind"] == "reply" and ticket["state"] == "requester_validated"
    assert ticket["forwarded_by"]["rank"] == "Director de Área"
    assert ticket["requester"]["system"] == "Padrón de Productores"
    assert [m["Subject"].split()[0] for m in lab.sent()] == ["Observaciones", "Folio"]


def test_outsider_gets_an_oficio_and_a_closed_ticket(lab):
    lab.deliver(request_mail(OUTSIDER))
    [outcome] = lab.intake()
    ticket = lab.store.get(outcome["ticket"])
    assert ticket["state"] == "closed" and "no figura en el directorio" in ticket["cause"]
    oficio = Path(outcome["oficio"]).read_text()
    assert ticket["folio"] in oficio and "no figura en el directorio" in oficio and OUTSIDER["name"] in oficio
    kinds = {m["Subject"].split()[0]: m["X-Envelope-To"] for m in lab.sent()}
    assert kinds == {"Folio": f"{OUTSIDER['email']}, {ENLACE}", "Oficio": f"{OUTSIDER['email']}, {MESA}",
                     "Cierre": OUTSIDER["email"]}


def test_delivery_is_extracted_and_recorded_forgery_and_strays_quarantined(lab, outbox, tmp_path):
    out, fingerprint, serial = outbox
    lab.deliver(request_mail(STAFF))
    [opened] = lab.intake()
    folio = opened["folio"]
    rogue = tmp_path / "rogue.pem"
    rogue.write_bytes((out / "renapo_ws_gen2.pem").read_bytes().split(b"-----END CERTIFICATE-----")[0]
                      + b"-----END CERTIFICATE-----\n")  # the leaf alone: not the root the letter names
    lab.deliver(delivery_mail(folio, out, files=[rogue]))
    lab.deliver(delivery_mail("DGTIC-RENAPO-2020-000999", out))
    genuine = lab.deliver(delivery_mail(folio, out))
    lab.deliver(delivery_mail(folio, out), message_id=genuine)  # the same message twice
    outcomes = lab.intake()
    assert [o["outcome"] for o in outcomes] == ["certificate_received", "skipped", "quarantined", "quarantined"]
    reasons = sorted(o["reason"] for o in outcomes if o["outcome"] == "quarantined")
    assert reasons[0].startswith("FINGERPRINT_MISMATCH") and "no corresponde a ningún ticket" in reasons[1]
    quarantined = [Path(o["quarantine_file"]).read_bytes() for o in outcomes if o["outcome"] == "quarantined"]
    assert all(q.startswith(b"X-Quarantine-Reason:") for q in quarantined)

    ticket = lab.store.get(folio)
    manifest = json.loads((lab.tmp / "entregas" / folio / "delivery.json").read_text())
    assert ticket["state"] == "certificate_received" and manifest["letter_fingerprint"] == fingerprint
    assert manifest["anchor_fingerprint"] == fingerprint and manifest["serial_hex"] == serial
    assert manifest["certificate"].endswith("renapo_ws_gen2.pem") and Path(manifest["certificate"]).is_file()
    notes = " ".join(n["note"] for n in ticket["observations"])
    assert "Entrega rechazada" in notes and f"huella SHA-256 del oficio={fingerprint}" in notes
    mesa = [m for m in lab.sent() if m["X-Envelope-To"] == MESA]
    assert len(mesa) == 2 and all(m["Subject"].startswith("Correo en cuarentena") for m in mesa)


def test_smtp_down_mid_run_resumes_without_duplicates(lab, outbox):
    lab.deliver(request_mail(STAFF))
    with pytest.raises(OSError):
        lab.intake(port=1)  # the ticket is committed, the notice fails: the message stays in new/
    assert len(lab.store.find()) == 1 and list((lab.inbox / "new").iterdir())
    [outcome] = lab.intake()
    assert outcome["opened"] is False and outcome["outcome"] == "requester_validated"
    assert len(lab.store.find()) == 1 and len(lab.sent()) == 1
    assert lab.intake() == []


def test_store_never_holds_key_material(lab, outbox, tmp_path):
    out, _fp, _serial = outbox
    lab.deliver(request_mail(STAFF, service="SAT"))
    [opened] = lab.intake()
    key = tmp_path / "firma.key"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secreto")))
    msg = delivery_mail(opened["folio"], out, files=[out / "renapo_ws_gen2.pem", key], letter="Entrega SAT")
    msg.replace_header("From", "SAT <certificados@sat.gob.mx>")
    lab.deliver(msg)
    [delivered] = lab.intake()
    assert delivered["outcome"] == "certificate_received"
    manifest = json.loads(Path(delivered["manifest"]).read_text())
    assert manifest["private_key"].endswith("firma.key")
    assert Path(manifest["private_key"]).stat().st_mode & 0o777 == 0o600
    dump = (lab.tmp / "tickets.db").read_bytes() + Path(delivered["manifest"]).read_bytes()
    assert key.read_bytes() not in dump and b"PRIVATE KEY" not in dump and b"secreto" not in dump
