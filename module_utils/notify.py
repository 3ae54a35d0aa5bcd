"""Spanish notices of the procedure: render Jinja2 templates, build a text+HTML message, send it by SMTP.

Pure code (stdlib + Jinja2 + the project's sla module for the procedure's clock): no Ansible import.
Dates a person reads are written in words in the procedure's local time (America/Mexico_City by default), whatever
the controller's system zone: `fecha_larga` ('28 de diciembre de 2026') and `fecha_hora` ('lunes 28 de diciembre
de 2026 a las 18:00 h').

Each notice `<name>` is two templates under `templates/notices/` (or `templates/oficio/`):
`<name>.txt.j2` with `{% block subject %}` and `{% block body %}`, and `<name>.html.j2` (autoescaped).
Templates run with StrictUndefined: a missing variable fails the render instead of mailing a blank.
Each template's first line lists its context variables; `sender`, `to`, `cc`, `reply_to`, `in_reply_to`,
`template_dir` and `providers` are notice()'s own arguments, so no template uses them as variables.

Providers are named from the registry (providers.py, the inventory's `procedure_providers`), never by a template
branch: `{{ service | servicio }}` is the provider's long_name, `{{ service | servicio_prosa }}` its prose_name
(inside a sentence: "el SAT"), `{{ service | servicio_corto }}` its display_name; `proveedores` is the registry's
display names as a Spanish list ("RENAPO y SAT") and `proveedores_opciones` as a choice ("RENAPO o SAT"). A
template that names a provider needs render(..., providers=).
"""
from __future__ import annotations

import datetime as dt
import email.utils
import smtplib
import ssl
from collections.abc import Iterable
from email.message import EmailMessage
from pathlib import Path

from ansible.module_utils.providers import registry
from ansible.module_utils.sla import now_local, to_datetime

try:  # a module without Jinja2 (ansible-core's own dependency) fails with missing_required_lib("Jinja2")
    import jinja2
except ImportError:
    import traceback
    JINJA2_IMPORT_ERROR = traceback.format_exc()
else:
    JINJA2_IMPORT_ERROR = None

DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
TEMPLATE_SUBDIRS = ("notices", "oficio")
NOTICES = (
    "observations", "folio_issued", "oficio_respuesta", "deployment_concluded", "rollback", "ticket_closed",
    "quarantine", "certificate_expiring", "unauthenticated", "sla_due_soon", "sla_breached",
)
MONTHS_ES = ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
             "noviembre", "diciembre")

WEEKDAYS_ES = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")


def _local(value):
    """A date stays a date; a moment (datetime or ISO timestamp; naive = procedure-local) becomes the procedure's
    local datetime, so the date written is the one a person in Mexico City sees."""
    if isinstance(value, str):
        text = value.strip()
        return dt.date.fromisoformat(text) if len(text) == 10 else to_datetime(text)
    if isinstance(value, dt.datetime):
        return to_datetime(value)
    return value


def fecha_larga(value) -> str:
    """A date in Spanish long form: '28 de noviembre de 2026' (accepts date, datetime or ISO string; a moment is
    read in the procedure's local time)."""
    value = _local(value)
    return f"{value.day} de {MONTHS_ES[value.month - 1]} de {value.year}"


def fecha_hora(value) -> str:
    """A moment in Spanish words, local time: 'lunes 28 de diciembre de 2026 a las 18:00 h'."""
    value = _local(value)
    text = f"{WEEKDAYS_ES[value.weekday()]} {fecha_larga(value)}"
    return text + (f" a las {value:%H:%M} h" if isinstance(value, dt.datetime) else "")


def _provider_filter(known, attribute):
    """A Jinja filter: a provider's name -> its `attribute` in the registry; a value the registry does not hold is
    the requester's own words (an observation quotes them as written). Without a registry it is an error: a notice
    never names a provider by guess."""
    def name_of(value):
        if known is None:
            raise jinja2.UndefinedError(f"the notice names provider {value!r}: render it with the provider registry "
                                        "(providers=)")
        return getattr(known.get(value), attribute) if value in known else str(value)
    return name_of


def provider_list(known, conjunction="y") -> str:
    """The registry's display names as Spanish prose: 'RENAPO y SAT', 'RENAPO, SAT y INE'."""
    names = [p.display_name for p in known] if known is not None else []
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}" if names else ""


STATES_ES = {
    "received": "recibido", "observations": "con observaciones", "folio_issued": "folio asignado",
    "requester_validated": "solicitante validado", "rejected": "rechazado",
    "certificate_received": "certificado recibido", "deploying": "en despliegue", "deployed": "desplegado",
    "rolled_back": "revertido", "notified": "notificado", "closed": "cerrado", "reopened": "reabierto",
    "cancelled": "cancelado", "duplicate": "duplicado", "acknowledged": "enterado",
}


def estado(value) -> str:
    """A ticket state as the Mesa de Servicios reads it ('certificate_received' -> 'certificado recibido')."""
    return STATES_ES.get(str(value), str(value))


def _environment(template_dir, providers=None) -> jinja2.Environment:
    root = Path(template_dir) if template_dir else DEFAULT_TEMPLATE_DIR
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(root / sub) for sub in TEMPLATE_SUBDIRS]),
        undefined=jinja2.StrictUndefined,
        # only plain text is left unescaped; HTML and anything unknown is escaped
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("txt.j2",),
                                            default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fecha_larga"] = fecha_larga
    env.filters["fecha_hora"] = fecha_hora
    env.filters["estado"] = estado
    known = registry(providers) if providers is not None else None
    env.filters["servicio"] = _provider_filter(known, "long_name")
    env.filters["servicio_prosa"] = _provider_filter(known, "prose_name")
    env.filters["servicio_corto"] = _provider_filter(known, "display_name")
    env.globals["proveedores"] = provider_list(known)
    env.globals["proveedores_opciones"] = provider_list(known, "o")
    return env


def render(name: str, template_dir=None, providers=None, **ctx) -> tuple[str, str, str]:
    """Render notice `name` with ctx; returns (subject, text, html). `providers`: the provider registry (needed by
    every notice that names a provider)."""
    env = _environment(template_dir, providers)
    ctx.setdefault("hoy", now_local().date())  # today in Mexico City, not on the controller's UTC clock
    text_tmpl = env.get_template(f"{name}.txt.j2")
    context = text_tmpl.new_context(ctx)
    subject = " ".join("".join(text_tmpl.blocks["subject"](context)).split())
    text = "".join(text_tmpl.blocks["body"](text_tmpl.new_context(ctx))).strip() + "\n"
    html = env.get_template(f"{name}.html.j2").render({**ctx, "asunto": subject})
    return subject, text, html


def build_message(
    subject: str,
    text: str,
    html: str,
    *,
    sender: str,
    to: Iterable[str],
    cc: Iterable[str] = (),
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    attachments: Iterable[tuple[str, bytes, str]] = (),
) -> EmailMessage:
    """multipart/alternative (text, HTML); attachments as (filename, bytes, mime type 'type/subtype')."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    cc = list(cc)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if reply_to:
        msg["Reply-To"] = reply_to
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg["Date"] = email.utils.format_datetime(now_local())  # the procedure's offset, as its people read it
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    # RFC 3834: a notice is machine-made; auto-responders must not answer it, so no notice ever loops.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(text, charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    for filename, data, mime in attachments:
        maintype, _slash, subtype = mime.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)
    return msg


def notice(name: str, *, sender: str, to: Iterable[str], cc: Iterable[str] = (), reply_to: str | None = None,
           in_reply_to: str | None = None, template_dir=None, providers=None, **ctx) -> EmailMessage:
    """render() + build_message() in one call."""
    subject, text, html = render(name, template_dir=template_dir, providers=providers, **ctx)
    return build_message(subject, text, html, sender=sender, to=to, cc=cc, reply_to=reply_to,
                         in_reply_to=in_reply_to)


def send(message: EmailMessage, host: str, port: int, starttls: bool = False, username: str | None = None,
         password: str | None = None, timeout: float = 10.0) -> list[str]:
    """Send through SMTP; returns the accepted recipients. Raises smtplib.SMTPException naming the refusal."""
    with smtplib.SMTP(host, port, timeout=timeout) as smtp:
        smtp.ehlo()
        if starttls:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if username:
            smtp.login(username, password or "")
        refused = smtp.send_message(message)
    recipients = [a for _n, a in email.utils.getaddresses(message.get_all("To", []) + message.get_all("Cc", []))]
    return [r for r in recipients if r not in refused]
