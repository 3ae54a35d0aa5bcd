"""procedure.Intake: every kind of e-mail through its steps, on a real SQLite store, Maildirs and SMTP server."""
import datetime as dt
import email
import email.policy
import json
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
from ansible.module_utils.mail_intake import ensure_maildir
from ansible.module_utils.procedure import Intake, Mailer
from ansible.module_utils.staff_directory import open_directory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_notify import EphemeralController, MaildirSink

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from demo_procedure import OUTSIDER, STAFF, delivery_mail, reply_mail, request_mail  # noqa: E402

from tests.unit.stores import LAB, open_lab

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
    store = open_lab(str(tmp_path / "tickets.db"))
    inbox = ensure_maildir(tmp_path / "mesa")

    def intake(port=None, **run_options):
        mailer = Mailer("127.0.0.1", port or controller.port, MESA, reply_to=MESA)
        return Intake(store, open_directory(str(ROOT / "lab" / "data" / "staff.yml")), CATALOG, mailer,
                      mesa_address=MESA, enlace_address=ENLACE, deliveries_dir=str(tmp_path / "entregas"),
                      oficios_dir=str(tmp_path / "oficios"), sender_auth={"trusted_authserv_ids": [AUTHSERV]},
                      providers=LAB).run(inbox, tmp_path / "cuarentena", **run_options)

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
    preview = Intake(lab.store, None, CATALOG, None, MESA, ENLACE, "", "", providers=LAB).preview(lab.inbox)
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
    assert kinds == {"Oficio": f"{OUTSIDER['email']}, {MESA}"}  # one coherent message: the oficio


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
    # in arrival order (a quarantine is reported as it happens); the resend of the same content is skipped
    assert [o["outcome"] for o in outcomes] == ["quarantined", "quarantined", "certificate_received", "skipped"]
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


# ---- a real mailbox: never loop, never stop, never lose (issue 11) -----------------------------------------------

def _returned(notice, drop=()):
    """A notice as it comes back into the Mesa's inbox (the sink's envelope header and `drop` headers removed)."""
    message_id = notice["Message-ID"]
    for name in ("X-Envelope-To", "Message-ID", *drop):
        del notice[name]
    return notice, message_id


def test_notices_that_come_back_are_filed_never_answered_nor_read_as_replies(lab):
    lab.deliver(request_mail(OUTSIDER))  # folio notice, oficio (Cc the Mesa), closing notice
    lab.deliver(request_mail(STAFF))
    lab.deliver(request_mail(STAFF, rank=None))  # observations notice quoting [Ticket #3]
    lab.intake()
    sent = lab.sent()
    assert len(sent) >= 3  # folio notice, the oficio (Cc the Mesa), the observations notice...
    for n, notice in enumerate(sent):
        # one of them stripped of Auto-Submitted by some relay: still ours (From: the procedure's sender)
        msg, message_id = _returned(notice, drop=("Auto-Submitted",) if n == 0 else ())
        lab.deliver(msg, message_id=message_id)
    outcomes = lab.intake()
    assert [o["outcome"] for o in outcomes] == ["filed"] * len(sent)
    assert all(o["kind"] == "automatic" for o in outcomes)
    assert len(lab.sent()) == len(sent) and len(lab.store.find()) == 3  # nothing new: no loop
    assert lab.store.get(3)["state"] == "observations"  # the notice quoting [Ticket #3] was not a reply
    assert not (lab.tmp / "cuarentena" / "new").exists() or not list((lab.tmp / "cuarentena" / "new").iterdir())
    assert lab.intake() == []


def test_quarantine_notice_coming_back_is_filed(lab):
    stray = EmailMessage()
    stray["From"] = "Boletín <noticias@externo.mx>"
    stray["Subject"] = "Boletín"
    stray.set_content("Hola\n")
    lab.deliver(stray)
    [quarantined] = lab.intake()
    assert quarantined["outcome"] == "quarantined"
    [notice] = lab.sent()
    msg, message_id = _returned(notice)
    lab.deliver(msg, message_id=message_id)
    [filed] = lab.intake()
    assert filed["outcome"] == "filed" and len(lab.sent()) == 1


def _dsn_for(notice, dsn_id="<dsn-1@mx.lab>"):
    headers = "".join(f"{k}: {v}\r\n" for k, v in notice.items() if k in ("From", "To", "Subject", "Message-ID"))
    raw = ("From: MAILER-DAEMON@mx.agricultura.gob.mx\r\nTo: mesa.servicios@agricultura.gob.mx\r\n"
           f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: {dsn_id}\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
           "--B\r\nContent-Type: text/plain\r\n\r\nNo se pudo entregar.\r\n"
           "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.lab\r\n\r\n"
           "Final-Recipient: rfc822; enlace.soas@agricultura.gob.mx\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
           f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n--B--\r\n").encode()
    return raw


def test_a_bounce_is_noted_on_the_ticket_of_its_notice_and_an_out_of_office_too(lab):
    lab.deliver(request_mail(STAFF))
    [opened] = lab.intake()
    [notice] = lab.sent()
    # the notice's Message-ID is on the ticket: that is how its bounce finds it (the subject is not even needed)
    assert any(f"(Message-ID {notice['Message-ID']})" in n["note"] for n in lab.store.get(opened["ticket"])
               ["observations"])
    (lab.inbox / "new" / "200.dsn.lab").write_bytes(_dsn_for(notice))
    ooo = EmailMessage()
    ooo["From"] = f"{STAFF['name']} <{STAFF['email']}>"
    ooo["Subject"] = f"Respuesta automática: {notice['Subject']}"
    ooo["Auto-Submitted"] = "auto-replied"
    ooo.set_content("Fuera de la oficina.\n")
    ooo_id = lab.deliver(ooo)
    outcomes = lab.intake()
    assert sorted((o["kind"], o["outcome"], o.get("ticket")) for o in outcomes) == [
        ("automatic", "filed", opened["ticket"]), ("bounce", "filed", opened["ticket"])]
    notes = [n["note"] for n in lab.store.get(opened["ticket"])["observations"]]
    [bounce] = [n for n in notes if n.startswith("Rebote (<dsn-1@mx.lab>)")]
    assert notice["Message-ID"] in bounce and "enlace.soas@agricultura.gob.mx failed 5.1.1" in bounce
    assert any(n.startswith(f"Respuesta automática ({ooo_id})") for n in notes)
    assert len(lab.sent()) == 1 and lab.store.get(opened["ticket"])["state"] == "requester_validated"
    # a rerun after a crash between the note and the move notes nothing twice
    (lab.inbox / "new" / "201.dsn.lab").write_bytes(_dsn_for(notice))
    lab.intake()
    notes = [n["note"] for n in lab.store.get(opened["ticket"])["observations"]]
    assert sum(n.startswith("Rebote (<dsn-1@mx.lab>)") for n in notes) == 1


def test_poison_mails_are_quarantined_and_the_run_goes_on(lab):
    lab.deliver(request_mail(dict(STAFF, unit="MII" + "A" * 64)))
    poison = request_mail(STAFF)
    poison["Message-ID"] = "<placeholder@x>"
    raw = (f"Authentication-Results: {AUTHSERV}; dkim=pass header.d=agricultura.gob.mx\r\n".encode()
           + poison.as_bytes().replace(b"<placeholder@x>",
                                       b"<-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEF@x>"))
    (lab.inbox / "new" / "101.poison.lab").write_bytes(raw)  # EmailMessage would cut the header at the space
    genuine = lab.deliver(request_mail(STAFF, system="Producción para el Bienestar"))
    outcomes = lab.intake()
    assert [o["outcome"] for o in outcomes] == ["quarantined", "quarantined", "requester_validated"]
    assert lab.store.find()[0]["message_id"] == genuine and len(lab.store.find()) == 1
    shown = json.dumps(outcomes, ensure_ascii=False) + "".join(m.as_string() for m in lab.sent())
    shown += "".join(p.read_text(errors="replace").split("\n\n", 1)[0].split("Authentication-Results")[0]
                     for p in (lab.tmp / "cuarentena" / "new").iterdir())
    assert "SecretMaterialError" in shown and "PRIVATE KEY" not in shown and "A" * 40 not in shown
    assert "MIIEvQIBADAN" not in shown


def test_a_reused_message_id_with_other_content_is_processed_and_the_same_content_skipped(lab):
    lab.deliver(request_mail(STAFF), message_id="<reused@agricultura.gob.mx>")
    [first] = lab.intake()
    lab.deliver(request_mail(STAFF, system="Producción para el Bienestar"), message_id="<reused@agricultura.gob.mx>")
    lab.deliver(request_mail(STAFF, system="Producción para el Bienestar"), message_id="<reused@agricultura.gob.mx>")
    lab.deliver(request_mail(STAFF), message_id="<reused@agricultura.gob.mx>")
    second, again, same = lab.intake()
    assert second["outcome"] == "requester_validated" and second["ticket"] != first["ticket"]
    assert second["message_id"].startswith("<reused@agricultura.gob.mx> (reenvio ") and "resent" in second
    assert again["outcome"] == same["outcome"] == "skipped"
    assert lab.store.get(second["ticket"])["requester"]["system"] == "Producción para el Bienestar"
    # the notice still answers the message itself (In-Reply-To is a valid header)
    assert lab.sent()[-1]["In-Reply-To"] == "<reused@agricultura.gob.mx>"
    assert lab.intake() == []


def test_a_forwarded_provider_delivery_is_judged_by_the_forwarder_until_an_operator_releases_it(lab, outbox):
    out, fingerprint, _serial = outbox
    lab.deliver(request_mail(STAFF))
    [opened] = lab.intake()
    inner = delivery_mail("", out)
    inner.replace_header("Subject", "Renovación del certificado del servicio ConsultaPorCurp")
    inner["Message-ID"] = "<pub@renapo.gob.mx>"
    forward = EmailMessage()
    forward["From"] = "Luis Pérez Gómez <luis.perez@agricultura.gob.mx>"
    forward["Subject"] = f"RV: {inner['Subject']}"
    forward.set_content("Les reenvío lo que mandó RENAPO.\n")
    forward.add_attachment(inner, filename="renapo.eml")
    forward_id = lab.deliver(forward)
    [refused] = lab.intake()
    assert refused["outcome"] == "quarantined" and "reenviada por luis.perez@agricultura.gob.mx" in refused["reason"]
    assert "servicios.consulta@renapo.gob.mx" in refused["reason"] and "-e release=" in refused["reason"]
    assert lab.store.get(opened["ticket"])["state"] == "requester_validated"
    assert {e["kind"] for e in lab.store.anchor_evidence("renapo", fingerprint)} == {"claim"}
    [released] = lab.intake(release=[forward_id], operator="jdoe")
    assert released["outcome"] == "certificate_received" and released["ticket"] == opened["ticket"]
    assert {e["kind"] for e in lab.store.anchor_evidence("renapo", fingerprint)} == {"claim"}


def test_outlook_html_only_and_windows_1252_requests(lab):
    html = EmailMessage()
    html["From"] = f"{STAFF['name']} <{STAFF['email']}>"
    html["Subject"] = "RV: Solicitud de actualización de certificado"
    html.set_content("<p class=MsoNormal>" + request_mail(STAFF).get_content().replace("\n", "</p><p class=MsoNormal>")
                     + "</p>", subtype="html", charset="windows-1252", cte="quoted-printable")
    cp = request_mail(STAFF, system="Producción para el Bienestar")
    cp.set_content(cp.get_content() + "“Gracias” – Ana\n", charset="windows-1252", cte="8bit")
    lab.deliver(html)
    lab.deliver(cp)
    first, second = lab.intake()
    assert first["outcome"] == second["outcome"] == "requester_validated"
    assert lab.store.get(second["ticket"])["requester"]["system"] == "Producción para el Bienestar"
    assert lab.store.get(first["ticket"])["requester"]["unit"] == STAFF["unit"]


def test_an_unsendable_quarantine_notice_leaves_the_message_in_the_inbox(lab):
    stray = EmailMessage()
    stray["From"] = "x@externo.mx"
    stray["Subject"] = "Hola"
    stray.set_content("Hola\n")
    lab.deliver(stray)
    with pytest.raises(OSError):
        lab.intake(port=1)
    assert len(list((lab.inbox / "new").iterdir())) == 1
    [quarantined] = lab.intake()
    assert quarantined["outcome"] == "quarantined" and len(lab.sent()) == 1


def test_a_corrected_delivery_completes_a_rolled_back_ticket(lab, outbox):
    out, _fingerprint, _serial = outbox
    lab.deliver(request_mail(STAFF))
    [opened] = lab.intake()
    lab.deliver(delivery_mail(opened["folio"], out))
    lab.intake()
    for state in ("deploying", "rolled_back"):
        lab.store.transition(opened["ticket"], state, actor="soas.despliegue", cause="la consulta posterior falló")
    lab.deliver(delivery_mail(opened["folio"], out))  # RENAPO sends it again, corrected
    [again] = lab.intake()
    assert again["outcome"] == "certificate_received"
    assert lab.store.get(opened["ticket"])["state"] == "certificate_received"


def test_release_refuses_when_a_second_message_shares_the_message_id(lab, outbox):
    """A forger who reuses the Message-ID of a quarantined genuine mail must not ride on the operator's release."""
    out, _fingerprint, _serial = outbox
    lab.deliver(request_mail(STAFF))
    [opened] = lab.intake()
    genuine = lab.deliver(delivery_mail(opened["folio"], out), dkim="none")
    rogue = delivery_mail(opened["folio"], out, letter="Oficio apócrifo")
    lab.deliver(rogue, message_id=genuine, dkim="none")
    assert [o["outcome"] for o in lab.intake()] == ["quarantined", "quarantined"]
    with pytest.raises(ValueError, match="different quarantined messages carry Message-ID"):
        lab.intake(release=[genuine], operator="jdoe")
    assert lab.store.get(opened["ticket"])["state"] == "requester_validated"
    assert {o["outcome"] for o in lab.intake()} == {"quarantined"}  # back where they were, unvouched
