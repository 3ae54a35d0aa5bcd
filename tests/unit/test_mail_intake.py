"""mail_intake: classification of real messages built with EmailMessage, and a real Maildir processed in tmp."""
import datetime as dt
import email
import io
import mailbox
import os
import quopri
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from ansible.module_utils import mail_intake as intake
from ansible.module_utils.mail_intake import (
    QuarantineMessage,
    ServiceRequest,
    extract_attachments,
    holds_private_key,
    is_transient,
    redact,
    sanitise_filename,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.providers import THIRD_PROVIDER, lab_providers

ROOT = Path(__file__).resolve().parents[2]
LAB = lab_providers()  # the lab inventory's registry: folios, sender domains and "Servicio:" words come from it


def parse_message(raw, **options):
    """mail_intake.parse_message with the lab's registry unless the test gives its own."""
    options.setdefault("providers", LAB)
    return intake.parse_message(raw, **options)


def process_maildir(*args, **options):
    options.setdefault("providers", LAB)
    return intake.process_maildir(*args, **options)

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


# ---- a provider defined in inventory only (tests/providers.py THIRD_PROVIDER: INE) ---------------------------------
WITH_INE = lab_providers(**THIRD_PROVIDER)


def test_third_provider_request_names_it_by_name_display_name_or_alias():
    for words in ("INE", "ine", "Servicio de verificación de credencial", "CREDENCIAL"):
        parsed = parse_message(make("Solicitud", REQUEST_BODY.replace("Servicio: RENAPO", f"Servicio: {words}")),
                               providers=WITH_INE)
        assert (parsed.kind, parsed.request.service, parsed.service) == ("request", "ine", "ine"), words
    # The lab registry without INE leaves the words as written (the observations name the defect).
    parsed = parse_message(make("Solicitud", REQUEST_BODY.replace("Servicio: RENAPO", "Servicio: INE")))
    assert (parsed.request.service, parsed.service) == ("INE", None)
    # Words naming two providers name none.
    parsed = parse_message(make("s", "Solicitante: A\nServicio: RENAPO o INE\n"), providers=WITH_INE)
    assert parsed.request.service == "RENAPO o INE"


def test_third_provider_folio_and_delivery_domain(cert):
    raw = make("Renovación, folio dgtic-ine-2026-000001", "Se remite el certificado.", sender="certificados@ine.mx",
               attachments=[("ine.pem", cert["pem"])])
    parsed = parse_message(raw, providers=WITH_INE)
    assert (parsed.kind, parsed.folio, parsed.service, parsed.quarantine) == (
        "delivery", "DGTIC-INE-2026-000001", "ine", False)
    reply = parse_message(make("Re: Folio DGTIC-INE-2026-000001 asignado", "Gracias."), providers=WITH_INE)
    assert (reply.kind, reply.folio, reply.service) == ("reply", "DGTIC-INE-2026-000001", "ine")
    # A subdomain of a provider's sender domain is the provider's too.
    sub = parse_message(raw.replace(b"certificados@ine.mx", b"certificados@pki.ine.mx"), providers=WITH_INE)
    assert (sub.kind, sub.service) == ("delivery", "ine")
    # Without INE in the registry its folio is no folio: named as malformed in the quarantine reason.
    unknown = parse_message(raw.replace(b"certificados@ine.mx", b"certificados@renapo.gob.mx"))
    assert unknown.folio is None and unknown.quarantine
    assert "folio con formato inválido: 'dgtic-ine-2026-000001'" in unknown.reason


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
            raise ConnectionError("database is down")  # before commit: an outage stops the run
        tickets.append(parsed.message_id)
        if calls["n"] == 3:
            raise ConnectionError("killed after commit")  # after commit, before the move
        return None

    for _ in range(2):
        with pytest.raises(ConnectionError):
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
    sys.path.insert(0, os.path.dirname(sys.argv[1]))
    from ansible.module_utils import mail_intake
    from tests.providers import lab_providers
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
    mail_intake.process_maildir(inbox, handler, quarantine, seen=seen_ids.__contains__, max_attachment_bytes=65536,
                                providers=lab_providers())
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


# ---- a real mailbox: never loop, never stop, never lose (issue 11) -------------------------------------------------

MESA = "mesa.servicios@agricultura.gob.mx"


def _with_headers(raw: bytes, **headers) -> bytes:
    return "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items()).encode() + raw


@pytest.mark.parametrize("headers, subject, sender", [
    ({"Auto_Submitted": "auto-replied"}, "Re: Solicitud", "juan.perez@agricultura.gob.mx"),
    ({"Auto_Submitted": "auto-generated; owner-email=x@y"}, "Aviso", "sistema@agricultura.gob.mx"),
    ({"X_Autoreply": "yes"}, "Solicitud", "juan.perez@agricultura.gob.mx"),
    ({"Precedence": "auto_reply"}, "Solicitud", "juan.perez@agricultura.gob.mx"),
    ({}, "Respuesta automática: Folio DGTIC-RENAPO-2026-000123 asignado [Ticket #7]", "juan.perez@agricultura.gob.mx"),
    ({}, "Fuera de la oficina: Solicitud", "juan.perez@agricultura.gob.mx"),
    ({}, "Automatic reply: Solicitud", "juan.perez@agricultura.gob.mx"),
    ({}, "Folio DGTIC-RENAPO-2026-000123 asignado [Ticket #7]", MESA),  # our notice, Auto-Submitted stripped
], ids=["auto-replied", "auto-generated", "x-autoreply", "precedence", "respuesta-automatica", "fuera-de-oficina",
        "automatic-reply", "own-sender"])
def test_automatic_mail_is_filed_never_a_request_or_reply(headers, subject, sender):
    raw = _with_headers(make(subject, REQUEST_BODY, sender=sender), **headers)
    parsed = parse_message(raw, own_senders=[MESA])
    assert parsed.kind == "automatic" and parsed.auto and not parsed.quarantine and parsed.request is None
    if "Ticket #7" in subject:
        assert parsed.ticket_id == 7  # an out-of-office quoting a ticket is noted on it, never read as a reply


def test_auto_submitted_no_and_a_recorded_notice_id():
    raw = _with_headers(make("Solicitud", REQUEST_BODY, msgid="<n1@agricultura.gob.mx>"), Auto_Submitted="no")
    assert parse_message(raw).kind == "request"
    parsed = parse_message(raw, own_message_ids={"<n1@agricultura.gob.mx>"})
    assert parsed.kind == "automatic" and parsed.own


def _dsn(original_headers: str, variant: str) -> bytes:
    status = ("Reporting-MTA: dns; mx.lab\r\n\r\nFinal-Recipient: rfc822; enlace@agricultura.gob.mx\r\n"
              "Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n")
    returned = ("text/rfc822-headers", original_headers) if variant == "headers" else (
        "message/rfc822", original_headers + "\r\nCuerpo del aviso.\r\n")
    return ("From: MAILER-DAEMON@mx.lab (Mail Delivery System)\r\nTo: mesa.servicios@agricultura.gob.mx\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx.lab>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nNo se pudo entregar.\r\n"
            f"--B\r\nContent-Type: message/delivery-status\r\n\r\n{status}\r\n"
            f"--B\r\nContent-Type: {returned[0]}\r\n\r\n{returned[1]}\r\n--B--\r\n").encode()


@pytest.mark.parametrize("variant", ["headers", "rfc822"])
def test_delivery_status_notification_names_the_returned_notice(variant):
    original = (f"From: {MESA}\r\nTo: enlace@agricultura.gob.mx\r\nMessage-ID: <aviso-1@agricultura.gob.mx>\r\n"
                f"Subject: Folio {FOLIO} asignado a su solicitud [Ticket #12]\r\n")
    parsed = parse_message(_dsn(original, variant), own_senders=[MESA])
    assert parsed.kind == "bounce" and not parsed.quarantine
    assert parsed.bounce["original_message_id"] == "<aviso-1@agricultura.gob.mx>"
    assert parsed.ticket_id == 12 and parsed.folio == FOLIO
    [rcpt] = parsed.bounce["recipients"]
    assert rcpt["recipient"] == "enlace@agricultura.gob.mx" and rcpt["action"] == "failed" and rcpt["status"] == "5.1.1"


def test_classic_bounce_without_report():
    body = ("This is the mail system at host mx.lab.\n\n<enlace@agricultura.gob.mx>: user unknown\n\n"
            "--- Below this line is a copy of the message.\n\nMessage-ID: <aviso-2@agricultura.gob.mx>\n"
            "Subject: Cierre del ticket, folio DGTIC-SAT-2026-000004 [Ticket #4]\n")
    parsed = parse_message(make("Mail delivery failed: returning message to sender", body,
                                sender="MAILER-DAEMON@mx.lab"))
    assert parsed.kind == "bounce" and parsed.bounce["original_message_id"] == "<aviso-2@agricultura.gob.mx>"
    assert parsed.ticket_id == 4 and parsed.bounce["recipients"][0]["recipient"] == "enlace@agricultura.gob.mx"


def test_read_receipt_is_filed():
    raw = (b"From: juan.perez@agricultura.gob.mx\r\nSubject: Leido: Folio\r\nMessage-ID: <r@x>\r\nMIME-Version: 1.0"
           b'\r\nContent-Type: multipart/report; report-type=disposition-notification; boundary="B"\r\n\r\n'
           b"--B\r\nContent-Type: text/plain\r\n\r\nLeido\r\n--B--\r\n")
    assert parse_message(raw).kind == "automatic"


def test_forwarded_provider_mail_keeps_the_inner_sender_as_a_claim(cert):
    inner = EmailMessage()
    inner["From"] = "RENAPO <servicios.consulta@renapo.gob.mx>"
    inner["Subject"] = "Renovación del certificado"
    inner["Message-ID"] = "<pub@renapo.gob.mx>"
    inner.set_content(f"Huella SHA-256: {FINGERPRINT}\n")
    inner.add_attachment(cert["pem"], maintype="application", subtype="x-pem-file", filename="renapo.pem")
    fwd = EmailMessage()
    fwd["From"] = "Luis Pérez <luis.perez@agricultura.gob.mx>"
    fwd["Subject"] = f"RV: {inner['Subject']}"
    fwd["Message-ID"] = "<fwd@agricultura.gob.mx>"
    fwd.set_content("Les reenvío lo de RENAPO.\n")
    fwd.add_attachment(inner, filename="renapo.eml")
    parsed = parse_message(fwd.as_bytes())
    assert parsed.kind == "delivery" and parsed.sender == "luis.perez@agricultura.gob.mx"
    assert parsed.forwarded == {"from": "servicios.consulta@renapo.gob.mx", "subject": "Renovación del certificado",
                                "message_id": "<pub@renapo.gob.mx>"}
    assert parsed.service == "renapo" and parsed.fingerprint == FINGERPRINT
    assert [a.filename for a in parsed.attachments] == ["renapo.pem"]


@pytest.mark.parametrize("subject", ["RV: Solicitud", "RE: RV: Solicitud", "FW: Solicitud", "Fwd: Solicitud"])
def test_forwarded_request_subjects_are_requests_when_they_quote_no_ticket(subject):
    body = "-----Mensaje original-----\nDe: Juan\n\n" + REQUEST_BODY
    parsed = parse_message(make(subject, body))
    assert parsed.kind == "request" and parsed.request.requester == "Juan Pérez López"


def test_outlook_html_only_windows_1252_and_mislabelled_latin1():
    html = ("<html><body><p class=MsoNormal>Solicitante: Juan Pérez López<o:p></o:p></p>"
            "<p class=MsoNormal>Sistema: Padrón de Productores</p><p>“Saludos”</p></body></html>")
    raw = (b"From: juan.perez@agricultura.gob.mx\r\nSubject: RV: Solicitud\r\nMessage-ID: <h@x>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=\"windows-1252\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           ) + quopri.encodestring(html.encode("cp1252"))
    parsed = parse_message(raw)
    assert parsed.kind == "request" and parsed.request.requester == "Juan Pérez López"
    assert parsed.request.system == "Padrón de Productores" and "“Saludos”" in parsed.body
    # Outlook labels Windows-1252 text as ISO-8859-1: curly quotes and dashes must survive
    latin = (b"From: juan.perez@agricultura.gob.mx\r\nSubject: Solicitud\r\nMessage-ID: <l@x>\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n") + \
        "Solicitante: José Núñez\nSistema: Padrón de Productores\n“Gracias” – J.\n".encode("cp1252")
    parsed = parse_message(latin)
    assert parsed.request.requester == "José Núñez" and "“Gracias” – J." in parsed.body


def _tnef(body: bytes, files) -> bytes:
    """A minimal winmail.dat as Outlook writes it: version, OEM code page, body, then each attachment."""
    def obj(level, attr, kind, data):
        head = bytes([level]) + attr.to_bytes(2, "little") + kind.to_bytes(2, "little")
        return head + len(data).to_bytes(4, "little") + data + (sum(data) % 65536).to_bytes(2, "little")
    out = (0x223E9F78).to_bytes(4, "little") + (1).to_bytes(2, "little")
    out += obj(1, 0x9006, 0x0008, (0x10000).to_bytes(4, "little"))
    out += obj(1, 0x9007, 0x0006, (1252).to_bytes(4, "little") + bytes(4))
    out += obj(1, 0x800C, 0x0002, body)
    for name, data in files:
        out += obj(2, 0x9002, 0x0006, bytes(14))
        out += obj(2, 0x8010, 0x0001, name.encode() + b"\0")
        out += obj(2, 0x800F, 0x0006, data)
    return out


def test_winmail_dat_is_unpacked_or_quarantined_with_a_clear_reason(cert):
    tnef = _tnef(f"Huella SHA-256: {FINGERPRINT}\n".encode(), [("renapo.pem", cert["pem"])])
    parsed = parse_message(make(f"Renovación, folio {FOLIO}", "", sender="certificados@renapo.gob.mx",
                                attachments=[("winmail.dat", tnef)]))
    assert parsed.kind == "delivery" and not parsed.quarantine, parsed.reason
    assert [(a.filename, a.content) for a in parsed.attachments] == [("renapo.pem", cert["pem"])]
    assert parsed.fingerprint == FINGERPRINT
    for garbage in (b"not a tnef file at all", b"\x78\x9f\x3e\x22garbage", tnef[:40]):
        broken = parse_message(make(f"Renovación, folio {FOLIO}", "x", sender="certificados@renapo.gob.mx",
                                    attachments=[("winmail.dat", garbage)]))
        assert broken.quarantine and "winmail.dat (formato TNEF de Outlook) ilegible" in broken.reason


def test_private_keys_are_recognised_by_content(cert):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    enc, fmt = serialization.Encoding, serialization.PrivateFormat
    keys = [ec_key.private_bytes(enc.PEM, fmt.PKCS8, serialization.NoEncryption()),
            ec_key.private_bytes(enc.DER, fmt.PKCS8, serialization.NoEncryption()),
            ec_key.private_bytes(enc.DER, fmt.TraditionalOpenSSL, serialization.NoEncryption()),
            rsa_key.private_bytes(enc.DER, fmt.TraditionalOpenSSL, serialization.NoEncryption()),
            rsa_key.private_bytes(enc.PEM, fmt.TraditionalOpenSSL, serialization.NoEncryption()),
            cert["key_der"],  # a SAT .key: encrypted PKCS#8 DER
            pkcs12.serialize_key_and_certificates(b"x", ec_key, None, None,
                                                  serialization.BestAvailableEncryption(b"p"))]
    assert all(holds_private_key(k) for k in keys)
    assert not any(holds_private_key(x) for x in (cert["pem"], cert["der"], b"hola", b"0\x03\x02\x01\x00"))


def test_an_attachment_holding_a_key_is_written_0600_whatever_its_name(tmp_path, cert):
    raw = make(f"Entrega, folio {FOLIO}", "x", sender="certificados@sat.gob.mx",
               attachments=[("certificado.cer", cert["der"]), ("notas.txt", cert["key_der"]), ("leeme.txt", b"hola")])
    parsed = parse_message(raw)
    assert [a.filename for a in parsed.attachments] == ["certificado.cer", "notas.txt"]
    written = {p.name: stat.S_IMODE(p.stat().st_mode) for p in extract_attachments(parsed, tmp_path / "out")}
    assert written == {"certificado.cer": 0o644, "notas.txt": 0o600}


def test_redact_and_transient():
    text = "Message-ID <-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC@x> y " + \
        "unidad MII" + "A" * 64
    shown = redact(text)
    assert "PRIVATE KEY" not in shown and "MIIEvQ" not in shown
    assert "A" * 40 not in redact("unidad MII" + "A" * 64)
    import smtplib
    import sqlite3
    assert is_transient(ConnectionRefusedError()) and is_transient(smtplib.SMTPServerDisconnected("x"))
    assert is_transient(sqlite3.OperationalError("database is locked"))
    wrapped = ValueError("ticket store down")
    wrapped.__context__ = sqlite3.OperationalError("disk I/O error")
    assert is_transient(wrapped)
    assert not is_transient(ValueError("bad value")) and not is_transient(sqlite3.IntegrityError("check"))
    assert not is_transient(smtplib.SMTPRecipientsRefused({"x@y": (550, b"no such user")}))
    assert is_transient(smtplib.SMTPRecipientsRefused({"x@y": (451, b"try later")}))


def test_digest_ignores_transport_headers_and_sees_content():
    one = parse_message(make("Solicitud", REQUEST_BODY, msgid="<same@x>"))
    relayed = parse_message(_with_headers(make("Solicitud", REQUEST_BODY, msgid="<same@x>"),
                                          Received="from mx.lab by imap.lab", DKIM_Signature="v=1; a=rsa"))
    other = parse_message(make("Solicitud", REQUEST_BODY.replace("Padrón", "Padron"), msgid="<same@x>"))
    assert one.digest == relayed.digest != other.digest


def test_one_bad_message_never_stops_the_run_and_an_outage_does(tmp_path, cert):
    inbox, quarantine = tmp_path / "inbox", tmp_path / "q"
    box = mailbox.Maildir(inbox, create=True)
    box.add(make("Solicitud 1", REQUEST_BODY.replace("Juan", "Uno"), msgid="<p1@x>"))
    box.add(make("Solicitud 2", REQUEST_BODY.replace("Juan", "Dos"), msgid="<p2@x>"))
    box.add(make("Solicitud 3", REQUEST_BODY, msgid="<p3@x>") + b"x" * 5000)  # oversize
    box.add(_with_headers(make("Respuesta automática: Solicitud", "fuera", msgid="<p4@x>"),
                          Auto_Submitted="auto-replied"))
    box.add(make("Solicitud 5", REQUEST_BODY, msgid="<p5@x>"))
    handled, notices = [], []

    def handler(parsed):
        if parsed.message_id == "<p1@x>":
            raise ValueError("-----BEGIN PRIVATE KEY----- MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC")
        handled.append(parsed.message_id)
        return parsed.kind

    result = process_maildir(inbox, handler, quarantine, max_message_bytes=4000,
                             on_quarantine=lambda name, reason, parsed: notices.append(reason))
    # (Maildir names order arrivals only to the second: compare sets)
    assert sorted(handled) == ["<p2@x>", "<p4@x>", "<p5@x>"]
    assert [p.message_id for _n, p, _o in result.filed] == ["<p4@x>"]
    assert sorted(p.message_id for _n, p, _o in result.processed) == ["<p2@x>", "<p5@x>"]
    assert len(result.quarantined) == 2 and notices == [r for _n, r, _p in result.quarantined]
    [error] = [r for _n, r, p in result.quarantined if p is not None]
    [oversize] = [r for _n, r, p in result.quarantined if p is None]  # never parsed
    assert "ValueError" in error and "PRIVATE KEY" not in error and "MIIEvQ" not in error
    assert "correo demasiado grande" in oversize
    assert not os.listdir(inbox / "new") and len(os.listdir(inbox / "cur")) == 3
    assert len(os.listdir(quarantine / "new")) == 2

    box.add(make("Solicitud 6", REQUEST_BODY, msgid="<p6@x>"))
    with pytest.raises(ConnectionRefusedError):
        process_maildir(inbox, lambda parsed: (_ for _ in ()).throw(ConnectionRefusedError()), quarantine)
    assert len(os.listdir(inbox / "new")) == 1  # left for the next run
