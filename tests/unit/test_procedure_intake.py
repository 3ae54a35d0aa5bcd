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
AUTHSERV = "mx.agricultura.gob.mx"  # the receiving server whose verdict the intake trusts
CATALOG = {"Padrón de Productores": ["renapo", "sat"], "Producción para el Bienestar": ["renapo", "sat"],
           "Precios de Garantía": ["sat"]}


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

    def intake(port=None, **run_options):
        mailer = Mailer("127.0.0.1", port or controller.port, MESA, reply_to=MESA)
        return Intake(store, open_directory(str(ROOT / "lab" / "data" / "staff.yml")), CATALOG, mailer,
                      mesa_address=MESA, enlace_address=ENLACE, deliveries_dir=str(tmp_path / "entregas"),
                      oficios_dir=str(tmp_path / "oficios"), sender_auth={"trusted_authserv_ids": [AUTHSERV]},
                      ).run(inbox, tmp_path / "cuarentena", **run_options)

    def deliver(msg, message_id=None, dkim="pass"):
        """As the Secretaría's receiving server delivers it: its Authentication-Results header on top."""
        msg["Message-ID"] = message_id or email.utils.make_msgid()
        domain = email.utils.parseaddr(msg["From"])[1].rpartition("@")[2]
        header = f"Authentication-Results: {AUTHSERV}; dkim={dkim} header.d={domain}\r\n".encode() if dkim else b""
        (inbox / "new" / f"{len(list((inbox / 'new').iterdir())) + 100}.{id(msg)}.lab").write_bytes(
            header + msg.as_bytes())
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
    # the authenticated letter's fingerprint is evidence in the registry; the forged one's is not
    [evidence] = [e for e in lab.store.anchor_evidence("renapo", fingerprint) if e["kind"] != "claim"]
    assert evidence["kind"] == "authenticated_mail" and evidence["ticket"] == folio
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


# ---- who sent it: the receiving server's verdict, never the message's own word (issue: trust only what is proven)

def _forged(msg, sender):
    msg.replace_header("From", sender)
    return msg


def test_unauthenticated_request_is_quarantined_and_the_person_of_record_is_warned(lab):
    lab.deliver(request_mail(STAFF), dkim="none")
    [outcome] = lab.intake()
    assert outcome["outcome"] == "quarantined" and "solicitud no autenticada" in outcome["reason"]
    assert lab.store.find() == []
    warned = {m["Subject"].split(":")[0]: m["X-Envelope-To"] for m in lab.sent()}
    assert warned == {"Aviso de seguridad": STAFF["email"], "Correo en cuarentena en el buzón de la Mesa de Servicios":
                      MESA}


def test_a_forged_pass_below_the_trusted_header_changes_nothing(lab):
    msg = request_mail(STAFF)
    msg["Authentication-Results"] = f"{AUTHSERV}; dkim=pass header.d=agricultura.gob.mx"
    lab.deliver(msg, dkim="none")  # the receiving server's own header lands on top
    [outcome] = lab.intake()
    assert outcome["outcome"] == "quarantined" and lab.store.find() == []


def test_outside_sender_naming_staff_in_the_body_is_judged_by_its_from(lab):
    msg = _forged(request_mail(STAFF), "Ana López <ana.lopez@agricultura-gob.mx>")  # its own domain, signed
    lab.deliver(msg)
    [outcome] = lab.intake()
    ticket = lab.store.get(outcome["ticket"])
    # judged as who really wrote: not an institutional address, so never validated as Ana
    assert ticket["requester"]["email"] == "ana.lopez@agricultura-gob.mx" and ticket["state"] == "observations"
    [notice] = lab.sent()
    assert notice["X-Envelope-To"] == "ana.lopez@agricultura-gob.mx" and "no es institucional" in notice.get_body(
        ("plain",)).get_content()
    assert any("Correo declarado en el cuerpo" in n["note"] for n in ticket["observations"])


def test_forwarder_must_be_staff(lab):
    lab.deliver(request_mail(STAFF, forwarded_by="Lic. Fulano de Tal Inventado"))
    [outcome] = lab.intake()
    ticket = lab.store.get(outcome["ticket"])
    assert ticket["state"] == "closed" and "Quien turna la solicitud" in ticket["cause"]


def test_reply_from_someone_else_is_quarantined(lab):
    lab.deliver(request_mail(STAFF, rank=None))
    [first] = lab.intake()
    lab.deliver(_forged(reply_mail(STAFF, first["ticket"], rank="Director de Área"),
                        "Jorge Ramírez <jorge.ramirez@agricultura.gob.mx>"))
    [second] = lab.intake()
    assert second["outcome"] == "quarantined" and "no el solicitante" in second["reason"]
    assert lab.store.get(first["ticket"])["state"] == "observations"


def test_deliveries_from_look_alike_or_unauthenticated_senders_are_refused(lab, outbox):
    out, fingerprint, _serial = outbox
    lab.deliver(request_mail(STAFF))
    [opened] = lab.intake()
    lab.deliver(_forged(delivery_mail(opened["folio"], out), "RENAPO <servicios.consulta@renapo-gob.mx>"))
    spoofed = lab.deliver(delivery_mail(opened["folio"], out), dkim="none")
    lab.deliver(delivery_mail(opened["folio"], out), dkim="fail")
    outcomes = lab.intake()
    assert [o["outcome"] for o in outcomes] == ["quarantined"] * 3
    assert "ningún proveedor configurado" in outcomes[0]["reason"]
    assert all("no autenticada" in o["reason"] and "playbooks/anchor.yml" in o["reason"] for o in outcomes[1:])
    assert lab.store.get(opened["folio"])["state"] == "requester_validated"
    claims = lab.store.anchor_evidence("renapo", fingerprint)
    assert {e["kind"] for e in claims} == {"claim"} and spoofed in {e["message_id"] for e in claims}

    # the operator vouches for the spoofed one (say RENAPO confirmed it by phone): it is processed as it arrived
    [released] = lab.intake(release=[spoofed], operator="jdoe")
    ticket = lab.store.get(opened["folio"])
    assert released["outcome"] == "certificate_received" and ticket["state"] == "certificate_received"
    assert any("liberada de cuarentena por jdoe" in (a["reason"] or "") for a in lab.store.audit(ticket["id"]))
    # ...and its letter is still only a claim: approval needs evidence from another channel
    assert {e["kind"] for e in lab.store.anchor_evidence("renapo", fingerprint)} == {"claim"}


def test_delivery_without_folio_completes_every_waiting_ticket_or_opens_one(lab, outbox):
    out, fingerprint, _serial = outbox
    lab.deliver(request_mail(STAFF))
    lab.deliver(request_mail(STAFF, system="Producción para el Bienestar"))
    first, second = lab.intake()
    msg = delivery_mail("", out)
    msg.replace_header("Subject", "Renovación del certificado del servicio ConsultaPorCurp")
    lab.deliver(msg)
    [delivered] = lab.intake()
    assert {t["folio"] for t in delivered["tickets"]} == {first["folio"], second["folio"]}
    assert {lab.store.get(t["ticket"])["state"] for t in delivered["tickets"]} == {"certificate_received"}

    msg = delivery_mail("", out)
    msg.replace_header("Subject", "Renovación del certificado del servicio ConsultaPorCurp")
    lab.deliver(msg)
    [opened] = lab.intake()
    ticket = lab.store.get(opened["ticket"])
    assert ticket["source"] == "provider" and ticket["state"] == "certificate_received" and ticket["folio"]
