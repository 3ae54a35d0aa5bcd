"""notify: every Spanish notice rendered, sent to a real aiosmtpd server on an ephemeral port and read back."""
import datetime as dt
import email
import email.policy
import mailbox
import re
import smtplib

import jinja2
import pytest
from aiosmtpd.controller import Controller
from ansible.module_utils import notify
from ansible.module_utils.mail_intake import html_to_text
from ansible.module_utils.notify import NOTICES, build_message, fecha_hora, fecha_larga, send
from ansible.module_utils.observations import Observation

from tests.providers import THIRD_PROVIDER, lab_providers

LAB = lab_providers()  # the lab inventory's registry: how notices name the providers


def notice(name, **kw):
    kw.setdefault("providers", LAB)
    return notify.notice(name, **kw)


def render(name, **kw):
    kw.setdefault("providers", LAB)
    return notify.render(name, **kw)

FOLIO = "DGTIC-RENAPO-2026-000123"
MESA = "mesa.servicios@agricultura.gob.mx"
SENDER = "soas.dgtic@agricultura.gob.mx"
REQUESTER = "juan.perez@agricultura.gob.mx"
ENLACE = "enlace.soas@agricultura.gob.mx"


class EphemeralController(Controller):
    """Controller bound to port 0: learn the real port before aiosmtpd's self-connection."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class MaildirSink:
    def __init__(self, path):
        self.box = mailbox.Maildir(path, create=True)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.box.add(f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode() + envelope.content)
        return "250 OK"


@pytest.fixture
def smtp_sink(tmp_path):
    sink = MaildirSink(tmp_path / "sink")
    controller = EphemeralController(sink, hostname="127.0.0.1", port=0)
    controller.start()
    yield controller, sink.box
    controller.stop()


# (notice, recipients to, cc, context, text that must appear in the Spanish body, subject fragment)
CASES = [
    ("observations", [REQUESTER], [MESA],
     {"ticket_id": 12, "requester": "Juan Pérez", "system": "Padrón de Productores", "service": "renapo",
      "observations": [Observation("MISSING_FIELD", "Falta el dato: cargo de quien turna la solicitud (Cargo)."),
                       Observation("EMAIL_NOT_INSTITUTIONAL", "El correo «j@gmail.com» no es institucional.")]},
     ["1. Falta el dato: cargo", "2. El correo «j@gmail.com»", "[Ticket #12]"], "Observaciones a su solicitud"),
    ("folio_issued", [REQUESTER], [ENLACE],
     {"ticket_id": 12, "folio": FOLIO, "requester": "Juan Pérez", "system": "Padrón de Productores",
      "service": "renapo", "enlace": "Ana Ruiz"},
     [FOLIO, "enlace administrativo (Ana Ruiz)"], f"Folio {FOLIO} asignado"),
    ("oficio_respuesta", [REQUESTER], [MESA],
     {"folio": FOLIO, "fecha": dt.date(2026, 11, 28), "requester": "Pedro Ramírez",
      "administrative_unit": "Empresa Externa S.A.", "reason": "El solicitante no es personal de la Secretaría."},
     [FOLIO, "Ciudad de México, a 28 de noviembre de 2026", "no es personal de la Secretaría",
      "Subdirección de Operación y Administración de Sistemas", "DGTIC"], "Oficio de respuesta"),
    ("deployment_concluded", [MESA], [REQUESTER],
     {"ticket_id": 12, "folio": FOLIO, "service": "renapo", "serial": "5A:3F:01",
      "fingerprint": ":".join(["AB"] * 32), "hosts": [{"name": "consulta1", "check": "EXITOSO"}, "consulta2"],
      "not_after": "2027-11-28"},
     [FOLIO, "5A:3F:01", ":".join(["AB"] * 32), "consulta1: EXITOSO", "consulta2: verificado",
      "28 de noviembre de 2027"], "Actualización de certificado concluida"),
    ("rollback", [MESA], [],
     {"ticket_id": 12, "folio": FOLIO, "service": "renapo", "cause": "la consulta posterior falló (TLS)",
      "failed_host": "consulta3", "hosts_restored": ["consulta3"]},
     [FOLIO, "Causa: la consulta posterior falló (TLS)", "consulta3"], "revertida"),
    ("ticket_closed", [REQUESTER], [MESA],
     {"ticket_id": 12, "folio": FOLIO, "requester": "Juan Pérez", "closed_at": dt.date(2026, 12, 1)},
     [FOLIO, "1 de diciembre de 2026"], "Cierre del ticket"),
    ("quarantine", [MESA], [],
     {"message_id": "<x@renapo.gob.mx>", "original_subject": "Certificado <renovado>",
      "original_sender": "x@renapo.gob.mx", "reason": "zip con ruta insegura '../x.pem'",
      "quarantine_file": "cuarentena/new/1700000000.M1P1.lab"},
     ["zip con ruta insegura", "<x@renapo.gob.mx>", "cuarentena/new/1700000000.M1P1.lab"], "Correo en cuarentena"),
    ("certificate_expiring", [MESA], [],
     {"service": "sat", "days_left": 20, "not_after": dt.date(2026, 12, 18), "serial": "0B", "folio": FOLIO},
     ["quedan 20 días", "18 de diciembre de 2026", "SAT (opinión de cumplimiento)"], "vence en 20 días"),
    # The term in words in Mexico City's time: 00:30 UTC of Dec 29 is Monday Dec 28, 18:30 there.
    ("sla_due_soon", [MESA], [],
     {"ticket_id": 12, "folio": None, "service": "renapo", "state": "certificate_received",
      "clock_name": "atención", "due": "2026-12-29T00:30:00+00:00", "business_hours_left": 3.5,
      "requester": "Juan Pérez"},
     ["ticket #12 (aún sin folio)", "vence el lunes 28 de diciembre de 2026 a las 18:30 h",
      "quedan 3.5 horas hábiles", "Estado del ticket: certificado recibido", "Solicitante: Juan Pérez"],
     "Plazo de atención por vencer: ticket #12 [Ticket #12]"),
    ("sla_breached", [MESA], [],
     {"ticket_id": 12, "folio": FOLIO, "service": "sat", "state": "received", "clock_name": "primer contacto",
      "due": "2027-02-15T18:00:00-06:00"},
     [f"folio {FOLIO}", "venció el lunes 15 de febrero de 2027 a las 18:00 h", "Estado del ticket: recibido",
      "SAT (opinión de cumplimiento)"],
     f"Plazo de primer contacto vencido: ticket #12, folio {FOLIO}"),
    ("unauthenticated", [REQUESTER], [],
     {"message_id": "<f@agricultura.gob.mx>", "original_subject": "Solicitud", "original_sender": REQUESTER,
      "detail": "dkim=none from trusted mx.agricultura.gob.mx", "mesa": MESA},
     ["no pudo autenticarlo", "dkim=none", "suplantar su identidad", "no al remitente"],
     "correo no autenticado recibido a su nombre"),
]


def test_every_notice_has_a_case():
    assert sorted(c[0] for c in CASES) == sorted(NOTICES)


@pytest.mark.parametrize(("name", "to", "cc", "ctx", "body_has", "subject_has"), CASES, ids=[c[0] for c in CASES])
def test_notice_sent_and_read_back(smtp_sink, name, to, cc, ctx, body_has, subject_has):
    controller, box = smtp_sink
    msg = notice(name, sender=SENDER, to=to, cc=cc, **ctx)
    accepted = send(msg, controller.hostname, controller.port)
    assert accepted == to + cc

    (stored,) = [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in box]
    assert stored["X-Envelope-To"] == ", ".join(to + cc)
    assert subject_has in stored["Subject"]
    assert stored["From"] == SENDER
    text = stored.get_body(("plain",)).get_content()
    html = stored.get_body(("html",)).get_content()
    html_text = " ".join(html_to_text(html).split())
    for fragment in body_has:
        assert fragment in text
        assert re.sub(r"^\d+\. ", "", fragment) in html_text  # same content in the HTML part, minus list numbers
    if ctx.get("folio"):
        assert ctx["folio"] in text and ctx["folio"] in html
    assert "Atentamente" in text and "Subdirección de Operación y Administración de Sistemas" in html
    assert stored.get_content_type() == "multipart/alternative"


def test_html_is_autoescaped_and_text_is_not():
    subject, text, html = render("quarantine", message_id="<a@b>", original_subject="<script>x</script>",
                                 original_sender="a@b", reason="r & s", quarantine_file="f")
    assert "<script>x</script>" in text and "r & s" in text
    assert "<script>" not in html and "&lt;script&gt;" in html and "r &amp; s" in html


def test_missing_variable_fails_instead_of_mailing_a_blank():
    with pytest.raises(jinja2.UndefinedError, match="folio"):
        render("folio_issued", ticket_id=1, requester="x", system="s", service="renapo")


@pytest.mark.parametrize(("value", "expected"), [
    (dt.date(2026, 11, 28), "28 de noviembre de 2026"), (dt.datetime(2027, 1, 1, 9, 30), "1 de enero de 2027"),
    ("2026-09-16T10:00:00", "16 de septiembre de 2026"),
    # a moment is dated in Mexico City: 03:00 UTC on Jan 1 is still Dec 31 there (UTC-6)
    ("2027-01-01T03:00:00+00:00", "31 de diciembre de 2026"), ("2026-03-12T00:00:00Z", "11 de marzo de 2026"),
    (dt.datetime(2026, 12, 25, 5, 59, tzinfo=dt.UTC), "24 de diciembre de 2026"),
])
def test_fecha_larga(value, expected):
    assert fecha_larga(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-12-28T18:00:00-06:00", "lunes 28 de diciembre de 2026 a las 18:00 h"),
    ("2027-02-16T00:00:00Z", "lunes 15 de febrero de 2027 a las 18:00 h"),
    (dt.date(2027, 3, 25), "jueves 25 de marzo de 2027"),
])
def test_fecha_hora_in_words_local_time(value, expected):
    assert fecha_hora(value) == expected


def test_message_date_is_mexico_city_time():
    msg = build_message("Asunto", "texto", "<p>html</p>", sender=SENDER, to=[MESA])
    assert msg["Date"].datetime.utcoffset() == dt.timedelta(hours=-6)  # CST all year since 2022


def test_build_message_with_attachment_and_reply_headers():
    msg = build_message("Asunto", "texto", "<p>html</p>", sender=SENDER, to=[MESA], reply_to=MESA,
                        in_reply_to="<orig@lab>", attachments=[("oficio.txt", b"Oficio", "text/plain")])
    assert msg["In-Reply-To"] == "<orig@lab>" and msg["Reply-To"] == MESA
    # RFC 3834: no auto-responder answers a notice (no loop through the Mesa's own mailbox)
    assert msg["Auto-Submitted"] == "auto-generated" and msg["X-Auto-Response-Suppress"] == "All"
    assert msg.get_body(("plain",)).get_content().strip() == "texto"
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == "oficio.txt" and att.get_content() == "Oficio"


def test_send_to_a_closed_port_names_the_failure():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    msg = notice("certificate_expiring", sender=SENDER, to=[MESA], service="renapo", days_left=3,
                 not_after=dt.date(2026, 12, 1), serial="01")
    with pytest.raises((ConnectionRefusedError, smtplib.SMTPException)):
        send(msg, "127.0.0.1", port, timeout=2)


def test_a_third_provider_is_named_from_the_registry_alone(smtp_sink):
    """INE exists only in the inventory overlay: its long name reaches the notice, no template names it."""
    controller, box = smtp_sink
    with_ine = lab_providers(**THIRD_PROVIDER)
    msg = notify.notice("deployment_concluded", sender=SENDER, to=[MESA], providers=with_ine, ticket_id=7,
                        folio="DGTIC-INE-2026-000001", service="ine", serial="0B0C", fingerprint="AB:CD",
                        hosts=["consulta-01"])
    send(msg, controller.hostname, controller.port)
    (stored,) = [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in box]
    text = stored.get_body(("plain",)).get_content()
    assert "servicio INE (verificación de credencial)" in text and "DGTIC-INE-2026-000001" in text
    _subject, text, _html = notify.render("observations", providers=with_ine, ticket_id=3, requester="Ana",
                                          system="Padrón", service="ine", observations=[])
    assert "Servicio: RENAPO, SAT o INE" in text and "del servicio INE (verificación de credencial)" in text
    _subject, text, _html = notify.render("observations", providers=with_ine, ticket_id=3, requester="Ana",
                                          system="Padrón", service="IMSS", observations=[])
    assert "del servicio IMSS para el sistema" in text  # words no provider has stay the requester's own


def test_a_notice_naming_a_provider_needs_the_registry():
    with pytest.raises(jinja2.UndefinedError, match="provider registry"):
        notify.render("rollback", ticket_id=1, folio=FOLIO, service="renapo", cause="x")
