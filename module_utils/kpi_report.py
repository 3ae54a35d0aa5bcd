"""The KPI report: one self-contained Spanish HTML page with inline SVG charts, plus CSV and JSON of the same numbers.

Pure code (stdlib + Jinja2): no Ansible import. `build(kpis)` returns the three documents as text; the caller writes
them (the kpi_report module does so atomically). Charts are SVG drawn here: no JavaScript, CSS or font is fetched.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

import jinja2
import markupsafe

DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "report"
TITLES = {"inconsistencias": "Inconsistencias", "bajas": "Bajas", "mortalidad": "Índice de mortalidad",
          "poblacion_actualizada": "Población actualizada"}
CLOCK_NAMES = {"first_contact": "primer contacto", "attention": "atención"}
SERVICE_NAMES = {"renapo": "RENAPO", "sat": "SAT"}
COLORS = {"inconsistencias": "#9d2449", "bajas": "#b38e5d", "mortalidad": "#4a4a4a", "poblacion_actualizada": "#13322b"}
_FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'


def fmt(value, unit: str = "%") -> str:
    return "s/d" if value is None else f"{value:,.2f}".rstrip("0").rstrip(".") + (f" {unit}" if unit else "")


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {_FONT} font-size="12"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def _empty(width: int, title: str) -> str:
    return _svg(width, 60, title, [f'<text x="10" y="35" fill="#666">Sin datos para {escape(title.lower())}.</text>'])


def bar_chart(items: list[tuple[str, float | None]], title: str, unit: str = "%", color: str = "#9d2449",
              width: int = 560, note: list[str] | None = None) -> str:
    """Horizontal bars, one per (label, value), each with its value printed; note = a text per bar (e.g. n)."""
    if not items:
        return _empty(width, title)
    row_h, top = 24, 10
    texts = [fmt(v, unit) + (f" ({note[i]})" if note else "") for i, (_, v) in enumerate(items)]
    label_w = 7 * max(len(label) for label, _ in items) + 14  # about 7 px per character at 12 px
    bar_w = width - label_w - 7 * max(len(t) for t in texts) - 14
    span = max((v or 0 for _, v in items), default=0) or 1
    body = []
    for i, (label, value) in enumerate(items):
        y = top + i * row_h
        w = round(bar_w * (value or 0) / span, 1)
        body.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" fill="#222">{escape(label)}</text>'
                    f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1)}" height="{row_h - 8}" fill="{color}"/>'
                    f'<text x="{label_w + w + 6}" y="{y + 15}" fill="#222">{escape(texts[i])}</text>')
    return _svg(width, top * 2 + row_h * len(items), title, body)


def line_chart(points: list[tuple[str, float | None]], title: str, unit: str = "%", color: str = "#9d2449",
               width: int = 560, height: int = 200) -> str:
    """A trend: one point per run (label), value printed over each point, axis from 0 to a rounded maximum."""
    points = [(label, value) for label, value in points if value is not None]
    if not points:
        return _empty(width, title)
    left, right, top, bottom, inset = 48, 20, 22, 40, 36
    top_value = max(v for _, v in points) * 1.12 or 1
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
                    f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" fill="#666">{escape(fmt(v, ""))}</text>')
    coords = [xy(i, v) for i, (_, v) in enumerate(points)]
    body.append(f'<polyline points="{" ".join(f"{x},{y}" for x, y in coords)}" fill="none" stroke="{color}" '
                'stroke-width="2.5"/>')
    step = max(1, len(points) // 8)  # at most ~8 axis labels
    for i, ((label, v), (x, y)) in enumerate(zip(points, coords, strict=True)):
        body.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{color}"/>'
                    f'<text x="{x}" y="{y - 8}" text-anchor="middle" fill="#222">{escape(fmt(v, unit))}</text>')
        if i % step == 0 or i == len(points) - 1:
            body.append(f'<text x="{x}" y="{height - bottom + 18}" text-anchor="middle" fill="#444">'
                        f"{escape(label)}</text>")
    return _svg(width, height, title, body)


def _run_label(run: dict) -> str:
    """dd/mm hh:mm of the run's start (several runs may share a day)."""
    at = run.get("started_at") or ""
    return f"{at[8:10]}/{at[5:7]} {at[11:16]}" if len(at) >= 16 else run["run_id"]


def charts(kpis: dict) -> dict:
    """Every chart of the report as an SVG string, by name."""
    runs = kpis.get("corridas", [])
    out = {f"tendencia_{k}": line_chart([(_run_label(r), r[k]["valor"]) for r in runs],
                                        f"Tendencia de {TITLES[k].lower()} por corrida", color=COLORS[k])
           for k in TITLES}
    bajas = kpis.get("bajas_por_estatus", [])
    out["bajas_por_estatus"] = bar_chart([(b["estatus"], b["pct"]) for b in bajas], "Bajas por estatus CURP",
                                         color=COLORS["bajas"], note=[f"{b['registros']} reg." for b in bajas])
    edad = kpis.get("mortalidad_por_edad", [])
    out["mortalidad_por_edad"] = bar_chart([(b["rango"] + " años", b["indice"]) for b in edad],
                                           "Índice de mortalidad por rango de edad", color=COLORS["mortalidad"],
                                           note=[f"{b['defunciones']} de {b['registros']}" for b in edad])
    entidad = sorted(kpis.get("mortalidad_por_entidad", []), key=lambda e: (-(e["indice"] or 0), e["entidad"]))[:10]
    out["mortalidad_por_entidad"] = bar_chart([(e["entidad"], e["indice"]) for e in entidad],
                                              "Índice de mortalidad por entidad (10 más altas)",
                                              color=COLORS["mortalidad"],
                                              note=[f"{e['defunciones']} de {e['registros']}" for e in entidad])
    sla = [(f"{SERVICE_NAMES.get(s, s)} · {CLOCK_NAMES[c]}", v)
           for s, clocks in kpis.get("cumplimiento_sla", {}).items() for c, v in clocks.items()]
    out["cumplimiento_sla"] = bar_chart([(label, v["cumplimiento"]) for label, v in sla],
                                        "Cumplimiento de SLA por servicio", color="#13322b",
                                        note=[f"{v['a_tiempo']} a tiempo, {v['vencidos']} vencidos" for _, v in sla])
    return out


def rows(kpis: dict) -> list[dict]:
    """The report's numbers as flat rows (the CSV export): section, KPI, dimension, value, numerator, denominator."""
    out = []

    def add(seccion, indicador, dimension, valor, numerador=None, denominador=None, unidad="%"):
        out.append({"seccion": seccion, "indicador": indicador, "dimension": dimension, "valor": valor,
                    "numerador": numerador, "denominador": denominador, "unidad": unidad})

    for k, v in kpis.get("indicadores", {}).items():
        add("indicador", k, "periodo", v["valor"], v["numerador"], v["denominador"])
    for r in kpis.get("corridas", []):
        for k in TITLES:
            add("tendencia", k, r["run_id"], r[k]["valor"], r[k]["numerador"], r[k]["denominador"])
    reviewed = (kpis.get("ultima_corrida") or {}).get("revisados")
    for b in kpis.get("estatus_curp", []):
        add("estatus_curp", "registros", b["estatus"], b["pct"], b["registros"], reviewed)
    for b in kpis.get("mortalidad_por_edad", []):
        add("mortalidad_por_edad", "mortalidad", b["rango"], b["indice"], b["defunciones"], b["registros"])
    for e in kpis.get("mortalidad_por_entidad", []):
        add("mortalidad_por_entidad", "mortalidad", e["entidad"], e["indice"], e["defunciones"], e["registros"])
    for cause, n in kpis.get("inconsistencias_por_causa", {}).items():
        add("inconsistencias_por_causa", "inconsistencias", cause, None, n, reviewed, "registros")
    for d in kpis.get("tiempo_despliegue", {}).get("despliegues", []):
        add("tiempo_despliegue", d["servicio"], d["folio"], d["horas_habiles"], None, None, "horas hábiles")
        add("tiempo_despliegue", d["servicio"], d["folio"], d["dias_habiles"], None, None, "días hábiles")
    for service, clocks in kpis.get("cumplimiento_sla", {}).items():
        for clock, c in clocks.items():
            add("cumplimiento_sla", service, clock, c["cumplimiento"], c["a_tiempo"], c["a_tiempo"] + c["vencidos"])
    return out


def to_csv(kpis: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=("seccion", "indicador", "dimension", "valor", "numerador",
                                             "denominador", "unidad"), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(kpis))
    return buf.getvalue()


def to_json(kpis: dict) -> str:
    return json.dumps(kpis, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def render_html(kpis: dict, title: str, organization: str, template_dir=None) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir or DEFAULT_TEMPLATE_DIR)),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env.get_template("kpi_report.html.j2").render(
        k=kpis, titulo=title, organizacion=organization, titles=TITLES,
        # The SVG is built here with every text escaped: mark it safe so Jinja2 does not escape the markup.
        charts={name: markupsafe.Markup(svg) for name, svg in charts(kpis).items()},  # noqa: S704
        clock_names=CLOCK_NAMES, service_names=SERVICE_NAMES)


def build(kpis: dict, title: str = "Indicadores del servicio de consulta RENAPO/SAT",
          organization: str = "Dirección General de Tecnologías de la Información y Comunicaciones",
          basename: str = "kpi_report", template_dir=None) -> dict:
    """{file name: text} of the three documents."""
    return {f"{basename}.html": render_html(kpis, title, organization, template_dir),
            f"{basename}.csv": to_csv(kpis), f"{basename}.json": to_json(kpis)}
