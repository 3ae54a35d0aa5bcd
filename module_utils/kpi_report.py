"""The KPI report: one self-contained Spanish HTML page with inline SVG charts, plus CSV and JSON of the same numbers.

Pure code (stdlib + Jinja2 + the project's formato): no Ansible import. `build(kpis)` returns the three documents as
text; the caller writes them (the kpi_report module does so atomically). Charts are SVG drawn here: no JavaScript,
CSS or font is fetched. Everything a person reads is es-MX (1,000; 10.5 %) and local time in words; every heading
is written here, never derived from a key. The CSV neutralises any cell a spreadsheet would run as a formula.
Providers are named as the registry names them (kpis["proveedores"], from kpi.compute): the labels below hold
{curp} (the padrón provider's display name), {rfc} and {de_rfc} (the opinion provider's: "SAT", "del SAT").
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

try:  # without Jinja2 the modules fail with missing_required_lib (notify.JINJA2_IMPORT_ERROR)
    import jinja2
    import markupsafe
except ImportError:
    pass
from ansible.module_utils.formato import (
    cantidad,
    fecha_corta,
    fecha_hora,
    fecha_larga,
    horas,
    numero,
    porcentaje,
)
from ansible.module_utils.kpi import de

DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "report"
# The title when none is given: the registry's display names joined ("... de consulta RENAPO/SAT").
TITLE_FORMAT = "Indicadores del servicio de consulta {names}"
DEFAULT_ORGANIZATION = "Dirección General de Tecnologías de la Información y Comunicaciones"
TITLES = {"poblacion_actualizada": "Población actualizada", "inconsistencias": "Inconsistencias", "bajas": "Bajas",
          "mortalidad": "Índice de mortalidad"}
# What each KPI's numerator and denominator count, as the cards print them ("825 de 1,000 registros del padrón").
BASES = {"poblacion_actualizada": "registros del padrón", "inconsistencias": "registros con resultado",
         "bajas": "registros encontrados en {curp}", "mortalidad": "registros encontrados en {curp}"}
OPINION_TITLES = {"opinion_positiva": "Opinión positiva", "opinion_negativa": "Opinión negativa",
                  "sin_obligaciones": "Inscrito sin obligaciones", "no_inscrito": "No inscrito en {rfc}"}
CAUSE_NAMES = {"nombre": "Nombre distinto al de {curp}", "fecha_nacimiento": "Fecha de nacimiento distinta",
               "sexo": "Sexo distinto", "no_encontrada": "CURP no encontrada en {curp} (01/06)",
               "invalida_renapo": "CURP no válida según {curp} (01/09)",
               "mal_formada": "CURP mal formada en el padrón (no enviada)",
               "duplicada": "CURP repetida en el padrón (no enviada)"}
COVERAGE_NAMES = {"padron": "Registros del padrón", "enviados": "Enviados a {curp}",
                  "no_enviados": "No enviados (CURP mal formada o repetida)",
                  "con_respuesta": "Con respuesta de {curp}", "sin_respuesta": "Sin respuesta tras los reintentos",
                  "encontrados": "Encontrados en {curp} (EXITOSO)"}
OPINION_COVERAGE_NAMES = {"rfc": "RFC del padrón", "enviados": "Consultados en {rfc}",
                          "no_enviados": "No enviados (RFC mal formado o repetido)", "con_respuesta": "Con respuesta",
                          "sin_respuesta": "Sin respuesta tras los reintentos"}
STATUS_NAMES = {"AN": "alta normal", "AH": "alta con homonimia", "RCC": "cambio que afecta la CURP",
                "RCN": "cambio que no afecta la CURP", "CRA": "CURP reactivada", "BAP": "documento apócrifo",
                "BSU": "sin uso", "BD": "defunción", "BDM": "administrativa", "BDP": "adopción", "BJD": "judicial",
                "BDA": "duplicidad", "BCC": "cambio que afecta la CURP", "BCN": "cambio que no afecta la CURP"}
CLOCK_NAMES = {"first_contact": "Primer contacto", "attention": "Atención"}
COLORS = {"inconsistencias": "#9d2449", "bajas": "#b38e5d", "mortalidad": "#4a4a4a", "poblacion_actualizada": "#13322b",
          "opinion": "#285c4d", "pequena": "#c9c9c9"}
CSV_FIELDS = ("seccion", "indicador", "dimension", "valor", "numerador", "denominador", "unidad")
FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r", "\n")
_FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'


def names(kpis: dict) -> dict:
    """The provider names the labels use: {curp}, {rfc}, {de_rfc}, and `servicios` {provider: display name}."""
    shown = kpis.get("proveedores") or {}
    curp = (shown.get("padron") or {}).get("display_name") or "el proveedor"
    rfc = shown.get("opinion") or {}
    prose = rfc.get("prose_name") or "el proveedor"
    return {"curp": curp, "rfc": rfc.get("display_name") or "el proveedor", "rfc_prose": prose,
            "de_rfc": de(prose),
            "servicios": dict(shown.get("servicios") or {})}


def labels(table: dict, kpis: dict) -> dict:
    """A label table with the providers' names filled in."""
    n = names(kpis)
    return {key: text.format(**n) for key, text in table.items()}


def default_title(kpis: dict) -> str:
    return TITLE_FORMAT.format(names="/".join(names(kpis)["servicios"].values()) or "")


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {_FONT} font-size="12"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def _empty(width: int, title: str) -> str:
    return _svg(width, 60, title, [f'<text x="10" y="35" fill="#666">Sin datos para {escape(title.lower())}.</text>'])


def _value(value, unit: str) -> str:
    return porcentaje(value) if unit == "%" else numero(value) + (f" {unit}" if unit else "")


def bar_chart(items: list[tuple[str, float | None]], title: str, unit: str = "%", color: str = "#9d2449",
              width: int = 560, note: list[str] | None = None, colors: list[str] | None = None) -> str:
    """Horizontal bars, one per (label, value), each with its value printed; note = a text per bar (e.g. n),
    colors = a color per bar (e.g. grey for a small sample)."""
    if not items:
        return _empty(width, title)
    row_h, top = 24, 10
    texts = [_value(v, unit) + (f" ({note[i]})" if note else "") for i, (_label, v) in enumerate(items)]
    label_w = 7 * max(len(label) for label, _v in items) + 14  # about 7 px per character at 12 px
    bar_w = max(width - label_w - 7 * max(len(t) for t in texts) - 14, 60)
    span = max((v or 0 for _label, v in items), default=0) or 1
    body = []
    for i, (label, value) in enumerate(items):
        y = top + i * row_h
        w = round(bar_w * (value or 0) / span, 1)
        fill = colors[i] if colors else color
        body.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" fill="#222">{escape(label)}</text>'
                    f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1)}" height="{row_h - 8}" fill="{fill}"/>'
                    f'<text x="{label_w + w + 6}" y="{y + 15}" fill="#222">{escape(texts[i])}</text>')
    return _svg(width, top * 2 + row_h * len(items), title, body)


def line_chart(points: list[tuple[str, float | None]], title: str, unit: str = "%", color: str = "#9d2449",
               width: int = 560, height: int = 200) -> str:
    """A trend: one point per run (label), value printed over each point, axis from 0 to a rounded maximum."""
    points = [(label, value) for label, value in points if value is not None]
    if not points:
        return _empty(width, title)
    left, right, top, bottom, inset = 48, 20, 22, 40, 36
    top_value = max(v for _label, v in points) * 1.12 or 1
    magnitude = 10 ** math.floor(math.log10(top_value))
    scale = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= top_value)
    if unit == "%" and top_value <= 112:
        scale = min(scale, 100)  # a percentage axis never needs to pass 100
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> tuple[float, float]:
        inner = plot_w - 2 * inset  # points stay clear of the axis labels
        x = left + inset + (inner / 2 if len(points) == 1 else inner * i / (len(points) - 1))
        return round(x, 1), round(top + plot_h * (1 - v / scale), 1)

    body = []
    for k in range(5):  # gridlines with their values
        v = scale * k / 4
        y = round(top + plot_h * (1 - k / 4), 1)
        body.append(f'<line x1="{left}" y1="{y}" x2="{width - right}" y2="{y}" stroke="#ddd"/>'
                    f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" fill="#666">{escape(numero(v))}</text>')
    coords = [xy(i, v) for i, (_label, v) in enumerate(points)]
    body.append(f'<polyline points="{" ".join(f"{x},{y}" for x, y in coords)}" fill="none" stroke="{color}" '
                'stroke-width="2.5"/>')
    step = max(1, len(points) // 8)  # at most ~8 axis labels
    for i, ((label, v), (x, y)) in enumerate(zip(points, coords, strict=True)):
        body.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{color}"/>'
                    f'<text x="{x}" y="{y - 8}" text-anchor="middle" fill="#222">{escape(_value(v, unit))}</text>')
        if i % step == 0 or i == len(points) - 1:
            body.append(f'<text x="{x}" y="{height - bottom + 18}" text-anchor="middle" fill="#444">'
                        f"{escape(label)}</text>")
    return _svg(width, height, title, body)


def interval(ic) -> str:
    """'3.5 a 25.1 %' (the 95 % interval of a rate)."""
    return "s/d" if not ic else f"{numero(ic[0])} a {porcentaje(ic[1])}"


def status_label(code: str) -> str:
    return f"{code} ({STATUS_NAMES[code]})" if code in STATUS_NAMES else code


def charts(kpis: dict) -> dict:
    """Every chart of the report as an SVG string, by name."""
    runs = kpis.get("corridas", [])
    small = kpis.get("muestra_minima", 0)
    out = {f"tendencia_{k}": line_chart([(fecha_corta(r["started_at"]), r[k]["valor"]) for r in runs],
                                        f"Tendencia de {TITLES[k].lower()} por corrida", color=COLORS[k])
           for k in TITLES}
    bajas = kpis.get("bajas_por_estatus", [])
    out["bajas_por_estatus"] = bar_chart([(status_label(b["estatus"]), b["pct"]) for b in bajas],
                                         "Bajas por estatus CURP", color=COLORS["bajas"],
                                         note=[cantidad(b["registros"], "registro") for b in bajas],
                                         colors=[COLORS["mortalidad"] if b["defuncion"] else COLORS["bajas"]
                                                 for b in bajas])
    edad = kpis.get("mortalidad_por_edad", [])
    out["mortalidad_por_edad"] = bar_chart(
        [(b["rango"] + " años" + (" *" if b["muestra_pequena"] else ""), b["indice"]) for b in edad],
        "Índice de mortalidad por rango de edad", color=COLORS["mortalidad"],
        note=[f"{numero(b['defunciones'])} de {numero(b['registros'])}" for b in edad],
        colors=[COLORS["pequena"] if b["muestra_pequena"] else COLORS["mortalidad"] for b in edad])
    entidad = sorted((e for e in kpis.get("mortalidad_por_entidad", []) if e["registros"]),
                     key=lambda e: (-(e["indice"] or 0), e["nombre"]))
    out["mortalidad_por_entidad"] = bar_chart(
        [(e["nombre"] + (" *" if e["muestra_pequena"] else ""), e["indice"]) for e in entidad],
        f"Índice de mortalidad por entidad de nacimiento (todas las entidades; * menos de {small} registros)",
        color=COLORS["mortalidad"], width=620,
        note=[f"{numero(e['defunciones'])} de {numero(e['registros'])}" for e in entidad],
        colors=[COLORS["pequena"] if e["muestra_pequena"] else COLORS["mortalidad"] for e in entidad])
    services = names(kpis)["servicios"]
    sla = [(f"{services.get(s, s)} · {CLOCK_NAMES[c].lower()}", v)
           for s, clocks in kpis.get("cumplimiento_sla", {}).items() for c, v in clocks.items()]
    out["cumplimiento_sla"] = bar_chart([(label, v["cumplimiento"]) for label, v in sla],
                                        "Cumplimiento de SLA por servicio", color="#13322b",
                                        note=[f"{numero(v['a_tiempo'])} a tiempo, {numero(v['vencidos'])} vencidos"
                                              for _label, v in sla])
    opinion = (kpis.get("opinion") or {}).get("indicadores", {})
    titles = labels(OPINION_TITLES, kpis)
    out["opinion"] = bar_chart([(titles[k], v["valor"]) for k, v in opinion.items()],
                               f"Opinión de cumplimiento {names(kpis)['de_rfc']}", color=COLORS["opinion"],
                               note=[f"{numero(v['numerador'])} de {numero(v['denominador'])}"
                                     for v in opinion.values()])
    return out


def rows(kpis: dict) -> list[dict]:
    """The report's numbers as flat rows (the CSV export): section, KPI, dimension, value, numerator, denominator."""
    out = []

    def add(seccion, indicador, dimension, valor, numerador=None, denominador=None, unidad="%"):
        out.append({"seccion": seccion, "indicador": indicador, "dimension": dimension, "valor": valor,
                    "numerador": numerador, "denominador": denominador, "unidad": unidad})

    latest = kpis.get("ultima_corrida") or {}
    for k, n in (latest.get("cobertura") or {}).items():
        add("cobertura", k, latest.get("run_id"), n, None, None, "registros")
    for k, v in kpis.get("indicadores", {}).items():
        add("indicador", k, latest.get("run_id"), v["valor"], v["numerador"], v["denominador"])
    for r in kpis.get("corridas", []):
        for k in TITLES:
            add("tendencia", k, r["run_id"], r[k]["valor"], r[k]["numerador"], r[k]["denominador"])
    found = (latest.get("cobertura") or {}).get("encontrados")
    for b in kpis.get("estatus_curp", []):
        add("estatus_curp", "registros", b["estatus"], b["pct"], b["registros"], found)
    for b in kpis.get("mortalidad_por_edad", []):
        add("mortalidad_por_edad", "mortalidad", b["rango"], b["indice"], b["defunciones"], b["registros"])
    for e in kpis.get("mortalidad_por_entidad", []):
        add("mortalidad_por_entidad", "mortalidad", f"{e['entidad']} {e['nombre']}", e["indice"], e["defunciones"],
            e["registros"])
    for cause, v in kpis.get("inconsistencias_por_causa", {}).items():
        add("inconsistencias_por_causa", "inconsistencias", cause, v["valor"], v["numerador"], v["denominador"])
    opinion = kpis.get("opinion") or {}
    for k, v in opinion.get("indicadores", {}).items():
        add("opinion", k, (opinion.get("ultima_corrida") or {}).get("run_id"), v["valor"], v["numerador"],
            v["denominador"])
    for d in kpis.get("tiempo_despliegue", {}).get("despliegues", []):
        add("tiempo_despliegue", d["servicio"], d["folio"], d["horas_habiles"], None, None, "horas hábiles")
        add("tiempo_despliegue", d["servicio"], d["folio"], d["dias_habiles"], None, None, "días hábiles")
    for service, clocks in kpis.get("cumplimiento_sla", {}).items():
        for clock, c in clocks.items():
            add("cumplimiento_sla", service, clock, c["cumplimiento"], c["a_tiempo"], c["a_tiempo"] + c["vencidos"])
    return out


def neutralise(value):
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR) gets a leading apostrophe (OWASP's
    CSV injection rule); numbers pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_LEAD):
        return "'" + value
    return value


def to_csv(kpis: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: neutralise(v) for k, v in row.items()} for row in rows(kpis))
    return buf.getvalue()


def to_json(kpis: dict) -> str:
    return json.dumps(kpis, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def environment(template_dir=None) -> jinja2.Environment:
    """The report templates' environment with the es-MX filters (also used by the Mesa's board)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir or DEFAULT_TEMPLATE_DIR)),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(numero=numero, porcentaje=porcentaje, fecha_hora=fecha_hora, fecha_larga=fecha_larga,
                       horas=horas, intervalo=interval, estatus=status_label, cantidad=cantidad)
    return env


def render_html(kpis: dict, title: str | None, organization: str, template_dir=None) -> str:
    n = names(kpis)
    return environment(template_dir).get_template("kpi_report.html.j2").render(
        k=kpis, titulo=title or default_title(kpis), organizacion=organization, titles=TITLES,
        bases=labels(BASES, kpis), opinion_titles=labels(OPINION_TITLES, kpis), nombres=n,
        cause_names=labels(CAUSE_NAMES, kpis), coverage_names=labels(COVERAGE_NAMES, kpis),
        opinion_coverage_names=labels(OPINION_COVERAGE_NAMES, kpis),
        # The SVG is built here with every text escaped: mark it safe so Jinja2 does not escape the markup.
        charts={name: markupsafe.Markup(svg) for name, svg in charts(kpis).items()},  # noqa: S704
        clock_names=CLOCK_NAMES, service_names=n["servicios"])


def build(kpis: dict, title: str | None = None, organization: str = DEFAULT_ORGANIZATION,
          basename: str = "kpi_report", template_dir=None) -> dict:
    """{file name: text} of the three documents."""
    return {f"{basename}.html": render_html(kpis, title, organization, template_dir),
            f"{basename}.csv": to_csv(kpis), f"{basename}.json": to_json(kpis)}
