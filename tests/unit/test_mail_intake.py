"""mail_intake: classification of real messages built with EmailMessage, and a real Maildir processed in tmp."""
import datetime as dt
import email
import io
import mailbox
import os
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from ansible.module_utils.mail_intake import (
    QuarantineMessage,
    ServiceRequest,
    extract_attachments,
    parse_message,
    process_maildir,
    sanitise_filename,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
FOLIO = "DGTIC-RENAPO-2026-000123"
FINGERPRINT = ":".join(["AB"] * 32)
REQUEST_BODY = """Buen día, se turna la siguiente solicitud.

Solicitante:   Juan Pérez López
Correo: Juan Pérez <juan.perez@agricultura.gob.mx>
Unidad Administrativa: Dirección General de Fomento a la Agricultura
Sistema: Padrón de Productores
Servicio: RENAPO
Turnado por: Lic. María Gómez Ruiz
Cargo: Directora de Área
"""


@pytest.fixture(scope="module")
def cert():
    """A throw-away certificate and key, generated here (never committed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renapo.lab")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=90))
        .sign(key, hashes.SHA256())
    )
    return {
        "pem": certificate.public_bytes(serialization.Encoding.PEM),
        "der": certificate.public_bytes(serialization.Encoding.DER),
        "key_der": key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"s3creto")),
    }


def make(subject, body=None, html=None, sender="mesa@agricultura.gob.mx", attachments=(), msgid=None, cte=None):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "mesa.servicios@agricultura.gob.mx"
    msg["Subject"] = subject
    msg["Message-ID"] = msgid or email.utils.make_msgid(domain="test.lab")
    if body is not None:
        msg.set_content(body, cte=cte) if cte else msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html", cte=cte) if cte else msg.set_content(html, subtype="html")
    for filename, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return msg.as_bytes()


def zip_of(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def delivery(cert, attachments=None, subject=f"Renovación de certificado, folio {FOLIO}", **kw):
    body = f"Se remite el certificado renovado.\nHuella SHA-256: {FINGERPRINT.lower()}\n"
    return make(subject, body, sender="certificados@renapo.gob.mx",
                attachments=[("renapo.pem", cert["pem"])] if attachments is None else attachments, **kw)


# ---- classification ------------------------------------------------------------------------------------------------

EXPECTED_REQUEST = {
    "requester": "Juan Pérez López",
    "requester_email": "juan.perez@agricultura.gob.mx",
    "administrative_unit": "Dirección General de Fomento a la Agricultura",
    "system": "Padrón de Productores",
    "service": "renapo",
    "forwarded_by": "Lic. María Gómez Ruiz",
    "forwarded_by_rank": "Directora de Área",
}


@pytest.mark.parametrize("variant", ["quoted-printable", "base64", "html-only", "html-base64", "8bit"])
def test_request_in_every_encoding(variant):
    html = "<html><body><p>" + REQUEST_BODY.replace("\n", "<br>\n").replace("<juan", "&lt;juan").replace(
        "mx>", "mx&gt;") + "</p></body></html>"
    raw = {
        "quoted-printable": lambda: make("Solicitud de actualización", REQUEST_BODY, cte="quoted-printable"),
        "base64": lambda: make("Solicitud de actualización", REQUEST_BODY, cte="base64"),
        "html-only": lambda: make("Solicitud", html=html),
        "html-base64": lambda: make("Solicitud", html=html, cte="base64"),
        "8bit": lambda: make("Solicitud", REQUEST_BODY, cte="8bit"),
    }[variant]()
    parsed = parse_message(raw)
    assert parsed.kind == "request", parsed.reason
    assert parsed.request.__dict__ == EXPECTED_REQUEST
    assert parsed.service == "renapo" and not parsed.quarantine


def test_labels_tolerate_case_accents_spacing_and_missing_fields():
    body = "SOLICITANTE :  Ana   Ruiz\n  correo electronico:ana.ruiz@agricultura.gob.mx\nSISTEMA/APLICACIÓN: SIAP\n"
    parsed = parse_message(make("solicitud", body))
    assert parsed.kind == "request"
    r = parsed.request
    assert (r.requester, r.requester_email, r.system) == ("Ana Ruiz", "ana.ruiz@agricultura.gob.mx", "SIAP")
    assert r.administrative_unit is r.service is r.forwarded_by is r.forwarded_by_rank is None


def test_service_sat_and_unrecognised_service_kept_raw():
    assert parse_message(make("s", "Solicitante: A\nServicio: SAT - opinión\n")).request.service == "sat"
    assert parse_message(make("s", "Solicitante: A\nServicio: IMSS\n")).request.service == "IMSS"


def test_latin1_rfc2047_and_raw_8bit_headers_never_crash():
    parsed = parse_message(make("=?iso-8859-1?q?Solicitud_de_actualizaci=F3n?=", REQUEST_BODY))
    assert parsed.subject == "Solicitud de actualización"
    raw = make("placeholder", REQUEST_BODY)
    raw = raw.replace(b"Subject: placeholder", "Subject: Petición ñandú".encode("latin-1"))
    raw = raw.replace(b"From: mesa@", "From: Peña <mesa@".encode("latin-1")).replace(b"gob.mx\n", b"gob.mx>\n", 1)
    parsed = parse_message(raw)
    assert parsed.kind == "request"
    assert parsed.subject == "Petición ñandú"
    assert parsed.sender == "mesa@agricultura.gob.mx"
    bogus = make("x", REQUEST_BODY).replace(b"Subject: x", b"Subject: =?x-unknown?b?////?= hola")
    assert parse_message(bogus).kind == "request"


def test_reply_quoting_ticket_takes_only_the_new_data():
    body = ("Adjunto los datos faltantes.\nCargo: Director General Adjunto\nTurnado por: Ing. Luis Mora\n\n"
            "El 27 nov 2026, Mesa de Servicios escribió:\n> Solicitante: Otro Nombre\n> Cargo: Subdirector\n")
    parsed = parse_message(make("RE: Observaciones a su solicitud [Ticket #12]", body))
    assert parsed.kind == "reply" and parsed.ticket_id == 12
    assert parsed.request.supplied() == {"forwarded_by_rank": "Director General Adjunto",
                                         "forwarded_by": "Ing. Luis Mora"}
    parsed = parse_message(make(f"Re: Folio {FOLIO} asignado", "Gracias, enterado."))
    assert (parsed.kind, parsed.folio, parsed.ticket_id) == ("reply", FOLIO, None)


def test_delivery_pem_with_folio_and_fingerprint(cert):
    parsed = parse_message(delivery(cert))
    assert (parsed.kind, parsed.folio, parsed.service, parsed.quarantine) == ("delivery", FOLIO, "renapo", False)
    assert parsed.fingerprint == FINGERPRINT
    assert [a.filename for a in parsed.attachments] == ["renapo.pem"]
    assert parsed.attachments[0].content == cert["pem"]
    assert "s3creto" not in repr(parsed) and repr(cert["pem"][:20]) not in repr(parsed)


def test_delivery_sat_cer_and_key_folio_in_body(cert):
    raw = make("Entrega de e.firma", "Folio: dgtic-sat-2026-000007\n", sender="efirma@sat.gob.mx",
               attachments=[("FIEL.cer", cert["der"]), ("FIEL.key", cert["key_der"])])
    parsed = parse_message(raw)
    assert (parsed.kind, parsed.folio, parsed.service) == ("delivery", "DGTIC-SAT-2026-000007", "sat")
    assert sorted(a.filename for a in parsed.attachments) == ["FIEL.cer", "FIEL.key"]
    assert not parsed.quarantine and parsed.fingerprint is None


def test_delivery_zip_members_extracted_other_files_ignored(cert):
    archive = zip_of([("certs/renapo.crt", cert["pem"]), ("carta.pdf", b"%PDF-1.4"), ("certs/", b"")])
    parsed = parse_message(delivery(cert, attachments=[("entrega.zip", archive)]))
    assert not parsed.quarantine, parsed.reason
    assert [(a.filename, a.source) for a in parsed.attachments] == [("renapo.crt", "entrega.zip!certs/renapo.crt")]


@pytest.mark.parametrize(
    ("attachments", "subject", "sender", "reason"),
    [
        (lambda c: [("x.zip", zip_of([("../../etc/cron.d/x.pem", c["pem"])]))], None, None, "ruta insegura"),
        (lambda c: [("x.zip", zip_of([("/etc/x.pem", c["pem"])]))], None, None, "ruta insegura"),
        (lambda c: [("x.zip", zip_of([("bomba.pem", b"\0" * (11 * 1024 * 1024))]))], None, None,
         "demasiado grande al descomprimir"),
        (lambda c: [("x.zip", zip_of([(f"{i}.pem", c["pem"]) for i in range(51)]))], None, None,
         "demasiadas entradas"),
        (lambda c: [("x.zip", b"PK\x03\x04 not a zip")], None, None, "zip corrupto"),
        (lambda c: [("renapo.pem", c["pem"][:-40])], None, None, "corrupto"),
        (lambda c: [("renapo.cer", c["der"][:-5])], None, None, "corrupto"),
        (lambda c: [("renapo.pem", b"")], None, None, "vacío"),
        (lambda c: [], None, None, "sin adjunto"),
        (lambda c: [("renapo.pem", c["pem"])], "Certificado folio DGTIC-RENAPO-26-123", None,
         "folio con formato inválido: 'DGTIC-RENAPO-26-123'"),
    ],
    ids=["zip-dotdot", "zip-absolute", "zip-bomb", "zip-many", "zip-corrupt", "pem-truncated", "der-truncated",
         "empty", "no-attachment", "wrong-folio"],
)
def test_defective_deliveries_are_quarantined_with_reason(cert, attachments, subject, sender, reason):
    kw = {"subject": subject} if subject else {}
    raw = delivery(cert, attachments=attachments(cert), **kw)
    if sender:
        raw = raw.replace(b"certificados@renapo.gob.mx", sender.encode())
    parsed = parse_message(raw)
    assert parsed.kind == "delivery" and parsed.quarantine
    assert reason in parsed.reason


def test_attachment_size_cap_default_and_configurable(cert):
    parsed = parse_message(delivery(cert, attachments=[("big.pem", b"A" * (10 * 1024 * 1024 + 1))]))
    assert parsed.quarantine and "adjunto demasiado grande" in parsed.reason
    parsed = parse_message(delivery(cert), max_attachment_bytes=100)
    assert parsed.quarantine and "adjunto demasiado grande" in parsed.reason


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe garbage \x80", b"Subject: hola\n\nBoletin de noticias"])
def test_unknown_or_garbage_is_quarantined_not_raised(raw):
    parsed = parse_message(raw)
    assert parsed.kind == "unknown" and parsed.quarantine and parsed.reason
    assert parsed.message_id.startswith("<sha256-")
    assert parse_message(raw).message_id == parsed.message_id  # stable: a rerun recognises it


# ---- Maildir -------------------------------------------------------------------------------------------------------


CAP = 64 * 1024  # a small attachment cap keeps the Maildir runs fast; the 10 MiB default is tested above
CLEAN_IDS = ["<del-1@lab>", "<del-2@lab>", "<reply-1@lab>", "<req-1@lab>"]  # when the handler accepts every folio


def _maildir_files(path: Path) -> dict:
    return {sub: sorted(os.listdir(path / sub)) for sub in ("new", "cur", "tmp")}


def _fill_inbox(inbox: Path, cert) -> dict:
    box = mailbox.Maildir(inbox, create=True)
    messages = {
        "request": make("Solicitud", REQUEST_BODY, msgid="<req-1@lab>"),
        "request-dup": make("Solicitud (reenvío)", REQUEST_BODY, msgid="<req-1@lab>"),
        "reply": make("RE: [Ticket #3] Observaciones", "Cargo: Director General\n", msgid="<reply-1@lab>"),
        "delivery": delivery(cert, msgid="<del-1@lab>"),
        "delivery-zip": delivery(cert, attachments=[("e.zip", zip_of([("a.cer", cert["der"])]))],
                                 msgid="<del-2@lab>", subject="Folio DGTIC-RENAPO-2026-000999"),
        "no-attachment": delivery(cert, attachments=[], msgid="<bad-1@lab>"),
        "zip-dotdot": delivery(cert, attachments=[("e.zip", zip_of([("../x.pem", cert["pem"])]))],
                               msgid="<bad-2@lab>"),
        "corrupt": delivery(cert, msgid="<bad-3@lab>",
                            attachments=[("x.pem", b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----")]),
        "huge": delivery(cert, attachments=[("x.p12", b"\x30" * (CAP + 1))], msgid="<bad-4@lab>"),
        "unknown": make("Boletín", "Hola a todos", msgid="<bad-5@lab>"),
    }
    keys = {}
    for label, raw in messages.items():
        keys[label] = box.add(raw)
    return {label: (keys[label], raw) for label, raw in messages.items()}


def test_process_maildir_every_message_ends_in_its_place(tmp_path, cert):
    inbox, quarantine = tmp_path / "inbox", tmp_path / "quarantine"
    sent = _fill_inbox(inbox, cert)
    tickets = {}  # message-id -> parsed: the handler's "commit"

    def handler(parsed):
        if parsed.folio == "DGTIC-RENAPO-2026-000999":
            raise QuarantineMessage(f"el folio {parsed.folio} no corresponde a ningún ticket")
        tickets[parsed.message_id] = parsed
        return len(tickets)

    result = process_maildir(inbox, handler, quarantine, seen=tickets.__contains__, max_attachment_bytes=CAP)

    assert _maildir_files(inbox)["new"] == []
    assert sorted(tickets) == ["<del-1@lab>", "<reply-1@lab>", "<req-1@lab>"]
    assert {tickets[m].kind for m in tickets} == {"request", "reply", "delivery"}
    cur = _maildir_files(inbox)["cur"]
    for label in ("request", "request-dup", "reply", "delivery"):
        assert f"{sent[label][0]}:2,S" in cur
    assert [m for _f, m in result.skipped] == ["<req-1@lab>"]
    quarantined = {Path(f).name: reason for f, reason, _p in result.quarantined}
    expected = {
        "delivery-zip": "no corresponde a ningún ticket", "no-attachment": "sin adjunto",
        "zip-dotdot": "ruta insegura", "corrupt": "corrupto", "huge": "demasiado grande", "unknown": "no es solicitud",
    }
    assert len(quarantined) == len(expected)
    q_files = _maildir_files(quarantine)["new"]
    for label, fragment in expected.items():
        key, raw = sent[label]
        assert fragment in quarantined[key]
        assert key in q_files
        stored = (quarantine / "new" / key).read_bytes()
        assert stored.endswith(raw)  # original bytes kept after the added header
        header = email.message_from_bytes(stored)["X-Quarantine-Reason"]
        assert fragment in str(email.header.make_header(email.header.decode_header(header)))
    assert _maildir_files(quarantine)["tmp"] == [] and _maildir_files(inbox)["tmp"] == []
    # rerun: nothing left to do
    again = process_maildir(inbox, handler, quarantine, seen=tickets.__contains__, max_attachment_bytes=CAP)
    assert (again.processed, again.skipped, again.quarantined) == ([], [], [])


def test_handler_crash_keeps_message_in_new_and_rerun_creates_no_duplicate(tmp_path, cert):
    inbox, quarantine = tmp_path / "inbox", tmp_path / "q"
    sent = _fill_inbox(inbox, cert)
    tickets: list[str] = []
    calls = {"n": 0}

    def crashing(parsed):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database is down")  # before commit
        tickets.append(parsed.message_id)
        if calls["n"] == 3:
            raise RuntimeError("killed after commit")  # after commit, before the move
        return None

    for _ in range(2):
        with pytest.raises(RuntimeError):
            process_maildir(inbox, crashing, quarantine, seen=tickets.__contains__, max_attachment_bytes=CAP)
        assert _count_everywhere(inbox, quarantine) == len(sent)
    process_maildir(inbox, crashing, quarantine, seen=tickets.__contains__, max_attachment_bytes=CAP)
    assert _maildir_files(inbox)["new"] == []
    assert sorted(tickets) == CLEAN_IDS  # each exactly once
    assert _count_everywhere(inbox, quarantine) == len(sent)


def _count_everywhere(inbox, quarantine) -> int:
    return sum(len(os.listdir(d / s)) for d in (inbox, quarantine) for s in ("new", "cur"))


CRASH_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import ansible.module_utils
    ansible.module_utils.__path__.append(sys.argv[1])
    from ansible.module_utils import mail_intake
    inbox, quarantine, store, crash_at = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    seen_ids = set(open(store).read().split()) if os.path.exists(store) else set()
    if crash_at == "quarantine-unlink":
        real_unlink = os.unlink
        def unlink(path, *a, **k):
            if "/new/" in str(path) and os.path.exists(os.path.join(quarantine, "new", os.path.basename(path))):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_unlink(path, *a, **k)
        os.unlink = unlink
    def handler(parsed):
        with open(store, "a") as fh:
            fh.write(parsed.message_id + "\\n"); fh.flush(); os.fsync(fh.fileno())
        seen_ids.add(parsed.message_id)
        if crash_at == "after-commit":
            os.kill(os.getpid(), signal.SIGKILL)
    mail_intake.process_maildir(inbox, handler, quarantine, seen=seen_ids.__contains__, max_attachment_bytes=65536)
""")


@pytest.mark.parametrize("crash_at", ["after-commit", "quarantine-unlink"])
def test_sigkill_mid_run_loses_nothing(tmp_path, cert, crash_at):
    inbox, quarantine, store = tmp_path / "inbox", tmp_path / "q", tmp_path / "tickets.txt"
    sent = _fill_inbox(inbox, cert)
    args = [sys.executable, "-c", CRASH_SCRIPT, str(ROOT / "module_utils"), str(inbox), str(quarantine), str(store)]
    for _ in range(len(sent)):
        proc = subprocess.run([*args, crash_at], capture_output=True, timeout=60)
        unique_files = {f.split(":")[0] for d in (inbox, quarantine) for s in ("new", "cur") for f in os.listdir(d / s)}
        assert unique_files == {key for key, _raw in sent.values()}  # every message somewhere, at every crash
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    subprocess.run([*args, "never"], check=True, timeout=60)
    assert _maildir_files(inbox)["new"] == []
    committed = store.read_text().split()
    assert sorted(committed) == sorted(set(committed)) == CLEAN_IDS
    assert len(os.listdir(quarantine / "new")) == 5  # rerun overwrote, never duplicated


# ---- attachments on disk -------------------------------------------------------------------------------------------


def test_extract_attachments_atomic_modes_and_sanitised_names(tmp_path, cert):
    raw = delivery(cert, attachments=[
        ("../../etc/passwd.pem", cert["pem"]), ("certificado reNAPO ñ.crt", cert["pem"]),
        ("FIEL.key", cert["key_der"]), ("id.p12", cert["der"]), ("renapo.pem", cert["pem"]),
    ])
    parsed = parse_message(raw)
    assert not parsed.quarantine, parsed.reason
    dest = tmp_path / "tickets" / "7"
    paths = extract_attachments(parsed, dest)
    names = [p.name for p in paths]
    assert names == ["passwd.pem", "certificado_reNAPO_n.crt", "FIEL.key", "id.p12", "renapo.pem"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes["FIEL.key"] == modes["id.p12"] == 0o600 and modes["passwd.pem"] == 0o644
    assert (dest / "FIEL.key").read_bytes() == cert["key_der"]
    assert sorted(os.listdir(dest)) == sorted(names)  # no temp file left behind
    assert extract_attachments(parsed, dest) == paths  # rerun overwrites in place


@pytest.mark.parametrize(("name", "safe"), [
    ("..", "adjunto"), ("C:\\Users\\x\\cert.cer", "cert.cer"), (".hidden.pem", "hidden.pem"),
    ("a b$c.pem", "a_b_c.pem"),
])
def test_sanitise_filename(name, safe):
    assert sanitise_filename(name) == safe


def test_rfc2231_filenames_decode_and_a_garbage_charset_does_not_crash(cert):
    import base64

    b64 = base64.b64encode(cert["pem"]).decode()
    for charset, expected in (("utf-8", "certificado_renapo_n.pem"), ("x\0bogus", None)):
        raw = (f"From: a@renapo.gob.mx\nSubject: Folio {FOLIO}\nMIME-Version: 1.0\n"
               "Content-Type: multipart/mixed; boundary=zz\n\n--zz\nContent-Type: text/plain\n\nCertificado\n--zz\n"
               f"Content-Disposition: attachment; filename*={charset}''certificado%20renapo%20%C3%B1.pem\n"
               f"Content-Transfer-Encoding: base64\n\n{b64}\n--zz--\n").encode()
        parsed = parse_message(raw)
        assert parsed.kind == "delivery" and not parsed.quarantine, parsed.reason
        if expected:
            assert sanitise_filename(parsed.attachments[0].filename) == expected


def test_mutated_messages_never_raise(cert):
    import random

    rnd = random.Random(20261128)
    seeds = [make("Solicitud", REQUEST_BODY, cte="base64"), make("s", html="<p>Solicitante: x</p>"),
             delivery(cert, attachments=[("a.pem", cert["pem"]), ("b.zip", zip_of([("c.cer", cert["der"])]))])]
    for _ in range(400):
        raw = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 20)):
            pos = rnd.randrange(len(raw))
            raw[pos:pos + rnd.choice((0, 1, 8))] = bytes(rnd.randrange(256) for _ in range(rnd.choice((0, 1, 4))))
        parsed = parse_message(bytes(raw))
        assert parsed.kind in ("request", "delivery", "reply", "unknown")
        assert parsed.quarantine == bool(parsed.reason) or parsed.kind != "unknown"


def test_reply_merges_into_the_stored_request_and_round_trips_the_ticket_shape():
    stored = parse_message(make("Solicitud", REQUEST_BODY.replace("Directora de Área", "Subdirectora"))).request
    ticket = stored.ticket_fields()
    assert ticket["requester"]["email"] == "juan.perez@agricultura.gob.mx" and ticket["service"] == "renapo"
    assert ServiceRequest.from_ticket(ticket) == stored
    reply = parse_message(make("RE: [Ticket #4] Observaciones", "Cargo: Director General\n> Cargo: Subdirectora\n"))
    merged = ServiceRequest.from_ticket(ticket).merged(reply.request)
    assert merged.forwarded_by_rank == "Director General" and merged.requester == "Juan Pérez López"
