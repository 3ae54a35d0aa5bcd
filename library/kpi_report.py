#!/usr/bin/python

DOCUMENTATION = r"""
---
module: kpi_report
short_description: Write the procedure's KPI report (Spanish HTML page with charts, CSV and JSON)
description:
  - Computes the KPIs of the procedure from the stored padrón consultation results and the ticket store
    (coverage of the consultation, % población actualizada, % inconsistencias by cause, % bajas by statusCurp,
    índice de mortalidad overall, by age band and by entidad with a 95 % interval and a small-sample mark, the SAT
    opinión de cumplimiento shares, deploy lead time in business hours, SLA compliance per service) and writes
    C(<basename>.html), C(<basename>.csv) and C(<basename>.json) in I(output_dir).
  - The HTML page is self-contained (inline SVG charts, no JavaScript, fonts or style sheets fetched), in Spanish
    with es-MX numbers and local times in words, and prints each KPI's definition with its numerator and
    denominator. The CSV and JSON hold the same numbers for other systems; a CSV cell that a spreadsheet would run
    as a formula is neutralised.
  - Files are rewritten only when their content changes (the page states the moment of the data, not of the run),
    so a rerun over the same data reports no change. In check mode nothing is written.
version_added: "0.1.0"
author: DGTIC certificate renewal team
options:
  results_db:
    description: SQLite file written by M(padron_consulta).
    type: path
    required: true
  tickets_db:
    description: The procedure's ticket store (SQLite file); without it the ticket KPIs are empty.
    type: path
  output_dir:
    description: Directory of the report files (created when missing).
    type: path
    required: true
  basename:
    description: File name of the three documents, without extension.
    type: str
    default: kpi_report
  period_start:
    description: First day (YYYY-MM-DD) of the period; runs started before it are left out.
    type: str
  period_end:
    description: Last day (YYYY-MM-DD) of the period.
    type: str
  title:
    description: Title of the page.
    type: str
    default: Indicadores del servicio de consulta RENAPO/SAT
  organization:
    description: Organization named under the title.
    type: str
    default: Dirección General de Tecnologías de la Información y Comunicaciones
  template_dir:
    description:
      - Directory holding C(kpi_report.html.j2) (the project's C(templates/report)). Required when the module runs
        from Ansible's payload, where the project tree is not next to the module.
    type: path
  non_working_days:
    description:
      - Extra non-working days (DOF suspension days), YYYY-MM-DD, for business hours and SLA clocks.
      - "A list of dates, or one list per year (C({2027: [2027-03-25]})); a year with no list gets a warning."
    type: raw
    default: []
  workday_hours:
    description: First and last office hour counted as business hours.
    type: list
    elements: int
    default: [9, 18]
  min_sample:
    description:
      - Found records below which a mortality rate by entidad or age band is marked as a small sample (its 95 %
        interval is always shown).
    type: int
    default: 30
"""

EXAMPLES = r"""
- name: Write the KPI report
  kpi_report:
    results_db: /var/lib/consulta/padron_resultados.db
    tickets_db: /var/lib/consulta/tickets.db
    output_dir: /var/www/reportes
    template_dir: "{{ playbook_dir }}/../templates/report"
  register: reporte

- name: The report and its exports exist
  ansible.builtin.assert:
    that:
      - reporte.html is file
      - reporte.kpis.indicadores.inconsistencias.valor is number
"""

RETURN = r"""
html:
  description: Path of the HTML report.
  returned: always
  type: str
  sample: /var/www/reportes/kpi_report.html
csv:
  description: Path of the CSV export.
  returned: always
  type: str
  sample: /var/www/reportes/kpi_report.csv
json:
  description: Path of the JSON export.
  returned: always
  type: str
  sample: /var/www/reportes/kpi_report.json
kpis:
  description: The KPIs, as in the JSON export (indicadores, ultima_corrida with its cobertura, corridas, breakdowns,
    sat, tiempo_despliegue, cumplimiento_sla, definiciones).
  returned: always
  type: dict
  sample: {"indicadores": {"bajas": {"valor": 7.45, "numerador": 70, "denominador": 940}}}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.kpi import KpiError, compute
from ansible.module_utils.kpi_report import build
from ansible.module_utils.sla import SlaPolicy
from jinja2 import TemplateNotFound


def _write(module, path, text):
    """True when the file changed; written through a temp file and atomic_move."""
    data = text.encode()
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    if not module.check_mode:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        module.atomic_move(tmp, path)
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            results_db=dict(type="path", required=True),
            tickets_db=dict(type="path"),
            output_dir=dict(type="path", required=True),
            basename=dict(type="str", default="kpi_report"),
            period_start=dict(type="str"),
            period_end=dict(type="str"),
            title=dict(type="str", default="Indicadores del servicio de consulta RENAPO/SAT"),
            organization=dict(type="str",
                              default="Dirección General de Tecnologías de la Información y Comunicaciones"),
            template_dir=dict(type="path"),
            non_working_days=dict(type="raw", default=[]),
            workday_hours=dict(type="list", elements="int", default=[9, 18]),
            min_sample=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["min_sample"] < 1:
        module.fail_json(msg=f"min_sample must be a count of records >= 1, got {p['min_sample']}")
    if len(p["workday_hours"]) != 2 or not 0 <= p["workday_hours"][0] < p["workday_hours"][1] <= 24:
        module.fail_json(msg=f"workday_hours must be [first, last] hours with 0 <= first < last <= 24, "
                             f"got {p['workday_hours']}")
    try:
        policy = SlaPolicy.from_options(non_working_days=p["non_working_days"])
        kpis = compute(p["results_db"], p["tickets_db"], p["period_start"], p["period_end"], policy=policy,
                       workday=tuple(p["workday_hours"]), min_sample=p["min_sample"])
        docs = build(kpis, p["title"], p["organization"], p["basename"], p["template_dir"])
    except TemplateNotFound as e:
        module.fail_json(msg=f"report template {e} not found: set template_dir to the project's templates/report")
    except (KpiError, ValueError) as e:
        module.fail_json(msg=f"cannot compute the KPI report: {e}")
    if not module.check_mode:
        os.makedirs(p["output_dir"], exist_ok=True)
    paths = {name.rsplit(".", 1)[1]: os.path.join(p["output_dir"], name) for name in docs}
    changed = False
    for name, text in docs.items():
        changed |= _write(module, os.path.join(p["output_dir"], name), text)
    module.exit_json(changed=changed, kpis=kpis, **paths)


if __name__ == "__main__":
    main()
