"""The oficio de respuesta (procedure step 3.2) as the Secretaría writes one: its own consecutive number per issuing
unit and year, lugar y fecha, destinatario, asunto, fundamento, cuerpo, "Atentamente", firmante with cargo and
c.c.p. to officials by name and cargo; rendered as text (the e-mail's body), HTML and a PDF on a letterhead.

Pure code (stdlib, Jinja2 through the project's notify, fpdf2 for the PDF): no Ansible import.

Settings (the inventory's `procedure_oficio`, over DEFAULTS; see inventories/*/group_vars/controller/oficio.yml):
  dependencia, unidad, area     the letterhead's three lines (Secretaría, Dirección General, Subdirección)
  serie                         the issuing unit whose numbers are consecutive (counter "oficio:<serie>" per year)
  numero_formato                e.g. "{siglas}/{numero:04d}/{anio}" -> DGTIC/SOAS/0001/2026
  siglas                        printed in the number
  lugar                         "Ciudad de México"
  firmante: {nombre, cargo}     who signs; `procedure_firmante` (Intake.firmante) names the signer when set
  firmante_requerido            true in production: with no signer's name nothing is numbered or sent
  fundamento                    the legal basis paragraph; "{proveedores}" in it becomes the registry's display
                                names ("RENAPO y SAT")
  ccp: [{nombre, cargo, correo?}]  copies; those with `correo` get the e-mail too
  membrete: {encabezado: [..], pie: [..], imagen: path}  the letterhead of the PDF (an image, e.g. the
                                Secretaría's logo, is optional)
"""
from __future__ import annotations

import copy
import datetime as dt
import io
import re
from pathlib import Path

from ansible.module_utils.formato import fecha_larga

DEFAULTS = {
    "dependencia": "Secretaría de Agricultura y Desarrollo Rural",
    "unidad": "Dirección General de Tecnologías de la Información y Comunicaciones",
    "area": "Subdirección de Operación y Administración de Sistemas",
    "siglas": "DGTIC/SOAS",
    "serie": "SOAS",
    "numero_formato": "{siglas}/{numero:04d}/{anio}",
    "lugar": "Ciudad de México",
    "firmante": {"nombre": "", "cargo": "Subdirector de Operación y Administración de Sistemas"},
    "firmante_requerido": False,
    "fundamento": "Con fundamento en el artículo 8o. de la Constitución Política de los Estados Unidos Mexicanos y en "
                  "el Procedimiento de actualización de certificado para el servicio de consultas de {proveedores} de "
                  "la Dirección General de Tecnologías de la Información y Comunicaciones, doy respuesta a su "
                  "solicitud.",
    "ccp": [],
    "membrete": {"encabezado": [], "pie": ["Mesa de Servicios: mesa.servicios@agricultura.gob.mx"], "imagen": ""},
}
NUMBER_NOTE = "Oficio de respuesta núm. "
GUINDA = (105, 28, 50)
DORADO = (188, 149, 92)
# Characters the PDF's core fonts (Windows-1252) lack, written the nearest way.
_PDF_TEXT = str.maketrans({"\u2011": "-", "\u2212": "-", "\u00a0": " ", "\u202f": " "})


class OficioError(Exception):
    """The oficio cannot be issued as configured. `transient`: the intake stops and keeps the message for the
    next run (after the settings are fixed) instead of quarantining it."""

    transient = True


def settings(options: dict | None = None, firmante: str | None = None) -> dict:
    """DEFAULTS overlaid with the inventory's options; `firmante` (procedure_firmante) names the signer when set."""
    merged = copy.deepcopy(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in DEFAULTS:
            raise OficioError(f"unknown oficio setting {key!r}; settings are {', '.join(DEFAULTS)}")
        merged[key] = {**merged[key], **value} if isinstance(DEFAULTS[key], dict) and value else value
    if firmante:
        merged["firmante"] = {**merged["firmante"], "nombre": firmante}
    for entry in merged["ccp"]:
        if not isinstance(entry, dict) or not entry.get("nombre") or not entry.get("cargo"):
            raise OficioError(f"each c.c.p. needs nombre and cargo, got {entry!r}")
    try:
        merged["numero_formato"].format(siglas="X", numero=1, anio=2026)
    except (KeyError, ValueError, IndexError) as e:
        raise OficioError(f"numero_formato {merged['numero_formato']!r} is not a format of siglas, numero and anio "
                          f"({e})") from None
    return merged


def check_signer(conf: dict) -> None:
    """Production refuses an oficio nobody signs: nothing is numbered, written or sent."""
    if conf["firmante_requerido"] and not (conf["firmante"].get("nombre") or "").strip():
        raise OficioError("el oficio de respuesta no tiene firmante: configure procedure_firmante (o "
                          "procedure_oficio.firmante.nombre) con el nombre de quien firma; la solicitud queda en el "
                          "buzón y se atenderá en la siguiente ejecución")


def format_number(conf: dict, numero: int, anio: int) -> str:
    return conf["numero_formato"].format(siglas=conf["siglas"], numero=numero, anio=anio)


def number_note(number: str) -> str:
    return f"{NUMBER_NOTE}{number}"


def assigned(ticket: dict) -> tuple[str, str] | None:
    """(number, moment assigned) of the ticket's oficio, from its note; None before one is assigned."""
    for note in ticket.get("observations", []):
        if note["note"].startswith(NUMBER_NOTE):
            return note["note"][len(NUMBER_NOTE):], note["at"]
    return None


def context(conf: dict, ticket: dict, number: str, at, providers=None) -> dict:
    """What the oficio's templates read (templates/oficio/oficio_respuesta.*.j2), from the ticket and settings;
    `providers` (the registry) names the providers in the fundamento."""
    from ansible.module_utils.notify import provider_list
    from ansible.module_utils.providers import registry

    names = provider_list(registry(providers)) if providers is not None else ""
    fecha = at if isinstance(at, dt.date) else dt.date.fromisoformat(str(at)[:10])
    received = ticket.get("received_at")
    return {
        "folio": ticket["folio"], "fecha": fecha, "requester": ticket["requester"]["name"],
        "reason": ticket["cause"], "administrative_unit": ticket["requester"].get("unit"),
        "sistema": ticket["requester"].get("system"), "servicio": ticket.get("service"),
        "recibida": fecha_larga(received) if received else None,
        "oficio_numero": number, "dependencia": conf["dependencia"], "unidad": conf["unidad"], "area": conf["area"],
        "lugar": conf["lugar"], "fundamento": conf["fundamento"].replace("{proveedores}", names),
        "firmante": conf["firmante"].get("nombre"),
        "cargo_firmante": conf["firmante"].get("cargo"), "ccp": conf["ccp"],
    }


def body_paragraphs(template_dir, ctx: dict, providers=None) -> list[str]:
    """The oficio's cuerpo (the `cuerpo` block of the text template) as paragraphs, for the PDF."""
    from ansible.module_utils.notify import _environment

    tmpl = _environment(template_dir, providers).get_template("oficio_respuesta.txt.j2")
    text = "".join(tmpl.blocks["cuerpo"](tmpl.new_context({"hoy": dt.date.today(), **ctx})))
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def _pdf_text(text: str) -> str:
    return (text or "").translate(_PDF_TEXT).encode("cp1252", "replace").decode("cp1252")


def to_pdf(conf: dict, ctx: dict, paragraphs: list[str], subject: str) -> bytes:
    """The oficio on the letterhead, US Letter (carta), as PDF bytes (fpdf2, core fonts: nothing fetched)."""
    from fpdf import FPDF

    membrete = conf["membrete"]

    class Oficio(FPDF):
        def header(self):
            image = membrete.get("imagen")
            if image and Path(image).is_file():
                self.image(image, x=20, y=12, h=18)
            self.set_text_color(*GUINDA)
            self.set_font("helvetica", "B", 11)
            self.set_xy(20, 12)
            self.cell(0, 5, _pdf_text(conf["dependencia"].upper()), align="R", new_x="LMARGIN", new_y="NEXT")
            self.set_font("helvetica", "", 9)
            for line in (conf["unidad"], conf["area"], *membrete.get("encabezado", [])):
                self.cell(0, 4.5, _pdf_text(line), align="R", new_x="LMARGIN", new_y="NEXT")
            self.set_draw_color(*DORADO)
            self.set_line_width(0.8)
            self.line(20, self.get_y() + 2, 196, self.get_y() + 2)
            self.set_text_color(0, 0, 0)
            self.ln(8)

        def footer(self):
            self.set_y(-22)
            self.set_draw_color(*GUINDA)
            self.set_line_width(0.4)
            self.line(20, self.get_y(), 196, self.get_y())
            self.set_font("helvetica", "", 7.5)
            self.set_text_color(90, 90, 90)
            page = f"Oficio {ctx['oficio_numero']} · página {self.page_no()} de {{nb}}"
            for line in [*membrete.get("pie", []), page]:
                self.set_x(self.l_margin)
                self.cell(0, 3.8, _pdf_text(line), align="C", new_x="LMARGIN", new_y="NEXT")

    pdf = Oficio(format="letter", unit="mm")
    pdf.set_margins(20, 15, 20)
    pdf.set_auto_page_break(True, margin=28)
    pdf.set_title(_pdf_text(subject))
    pdf.set_author(_pdf_text(conf["area"]))
    pdf.set_creation_date(dt.datetime.combine(ctx["fecha"], dt.time(12), dt.UTC))
    pdf.add_page()
    pdf.set_font("helvetica", "", 10.5)
    right = [f"Oficio núm. {ctx['oficio_numero']}", f"Asunto: Respuesta a la solicitud con folio {ctx['folio']}",
             f"{ctx['lugar']}, a {fecha_larga(ctx['fecha'])}"]
    for line in right:
        pdf.multi_cell(0, 5, _pdf_text(line), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.set_font("helvetica", "B", 10.5)
    pdf.multi_cell(0, 5, _pdf_text(ctx["requester"] or "Solicitante"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 10.5)
    if ctx.get("administrative_unit"):
        pdf.multi_cell(0, 5, _pdf_text(ctx["administrative_unit"]), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "B", 10.5)
    pdf.cell(0, 5, "P r e s e n t e", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 10.5)
    pdf.ln(4)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 5.2, _pdf_text(paragraph), align="J", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2.5)
    pdf.ln(4)
    pdf.cell(0, 5, "Atentamente,", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(16)  # room for the autograph signature
    pdf.set_font("helvetica", "B", 10.5)
    pdf.multi_cell(0, 5, _pdf_text(ctx["firmante"] or ""), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 10.5)
    pdf.multi_cell(0, 5, _pdf_text(ctx["cargo_firmante"] or ""), new_x="LMARGIN", new_y="NEXT")
    if ctx["ccp"]:
        pdf.ln(8)
        pdf.set_font("helvetica", "", 8.5)
        for i, c in enumerate(ctx["ccp"]):
            pdf.set_x(pdf.l_margin)
            pdf.cell(11, 4.2, "c.c.p." if i == 0 else "")
            pdf.multi_cell(0, 4.2, _pdf_text(f"{c['nombre']}, {c['cargo']}. Para su conocimiento."),
                           new_x="LMARGIN", new_y="NEXT")
    out = io.BytesIO()
    pdf.output(out)
    return out.getvalue()


def issue(conf: dict, ticket: dict, number: str, at, template_dir=None, providers=None) -> dict:
    """Subject, text, HTML and PDF of a numbered oficio (same wording in all three)."""
    from ansible.module_utils.notify import render

    ctx = context(conf, ticket, number, at, providers)
    subject, text, html = render("oficio_respuesta", template_dir=template_dir, providers=providers, **ctx)
    pdf = to_pdf(conf, ctx, body_paragraphs(template_dir, ctx, providers), subject)
    return {"subject": subject, "text": text, "html": html, "pdf": pdf, "context": ctx}


def file_stem(number: str) -> str:
    """A file name from an oficio number: DGTIC/SOAS/0001/2026 -> DGTIC-SOAS-0001-2026."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", number).strip("-")
