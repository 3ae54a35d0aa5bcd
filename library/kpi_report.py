#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

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
  - Providers are named as the registry (O(providers)) names them; SLA compliance is given for every provider of the
    registry, with its own SLA days.
extends_documentation_fragment: [providers, attributes]
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  results_db:
    description:
      - The results store M(ansible.legacy.padron_consulta) writes, a SQLite file (a path or C(sqlite:///path)) or a
        PostgreSQL URL C(postgresql://user@host:5432/db). A password in the URL is never returned or logged (prefer
        C(PGPASSWORD)).
    type: str
    required: true
  store:
    description:
      - The procedure's ticket store, a SQLite file (a path or C(sqlite:///path)) or a PostgreSQL URL
        C(postgresql://user@host:5432/db); without it the ticket KPIs are empty.
      - A password in the URL is never returned or logged (it is masked C(********) in every message and result).
    type: str
    aliases: [tickets_db]
  provider:
    description:
      - The registry provider whose padrón runs (strategy C(curp_soap)) the report shows; default the registry's
        first provider with that strategy.
    type: str
  opinion_provider:
    description:
      - The registry provider whose opinión de cumplimiento runs (strategy C(rfc_opinion)) the report shows; default
        the registry's first provider with that strategy.
    type: str
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
    description: Title of the page; default C(Indicadores del servicio de consulta) and the registry's display names.
    type: str
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
    providers: "{{ procedure_providers }}"
    results_db: /var/lib/consulta/padron_resultados.db
    store: /var/lib/consulta/tickets.db
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
    opinion, tiempo_despliegue, cumplimiento_sla, definiciones, proveedores).
  returned: always
  type: dict
  sample: {"indicadores": {"bajas": {"valor": 7.45, "numerador": 70, "denominador": 940}}}
store:
  description: The ticket store read, a PostgreSQL URL with its password masked.
  returned: when O(store) is given
  type: str
  sample: postgresql://renovacion:********@db.example:5432/renovacion
results_db:
  description: The results store read, a PostgreSQL URL with its password masked.
  returned: always
  type: str
  sample: /var/lib/consulta/padron_resultados.db
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.cert_files import write_atomic
from ansible.module_utils.kpi import KpiError, compute
from ansible.module_utils.kpi_report import build
from ansible.module_utils.notify import JINJA2_IMPORT_ERROR
from ansible.module_utils.providers import ProviderError
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR, SlaPolicy
from ansible.module_utils.ticket_store import POSTGRES_SCHEMES, dsn_secrets, redact
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR

try:
    from jinja2 import TemplateNotFound
except ImportError:  # main() fails first with missing_required_lib("Jinja2")
    TemplateNotFound = LookupError


def _write(module, path, text):
    """True when the file changed; written with the project's one atomic write (temp file, fsync, rename)."""
    data = text.encode()
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    if not module.check_mode:
        write_atomic(path, data, 0o644)
    return True


def _local(dsn):
    """A SQLite store's path (a path or sqlite:///path, ~ expanded); a PostgreSQL URL as it is."""
    if dsn is None or dsn.startswith(POSTGRES_SCHEMES):
        return dsn
    return os.path.expanduser(dsn[len("sqlite:///"):] if dsn.startswith("sqlite:///") else dsn)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            providers=dict(type="dict", required=True),
            provider=dict(type="str"),
            opinion_provider=dict(type="str"),
            results_db=dict(type="str", required=True),
            store=dict(type="str", aliases=["tickets_db"]),
            output_dir=dict(type="path", required=True),
            basename=dict(type="str", default="kpi_report"),
            period_start=dict(type="str"),
            period_end=dict(type="str"),
            title=dict(type="str"),
            organization=dict(type="str",
                              default="Dirección General de Tecnologías de la Información y Comunicaciones"),
            template_dir=dict(type="path"),
            non_working_days=dict(type="raw", default=[]),
            workday_hours=dict(type="list", elements="int", default=[9, 18]),
            min_sample=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    for lib, error in (("cryptography", CRYPTOGRAPHY_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR),
                       ("Jinja2", JINJA2_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    # A password in either URL is masked in every message and result (Ansible scrubs no_log_values).
    for dsn in (p["results_db"], p["store"]):
        module.no_log_values.update(dsn_secrets(dsn or ""))
    shown = {"results_db": redact(p["results_db"]), **({"store": redact(p["store"])} if p["store"] else {})}
    if p["min_sample"] < 1:
        module.fail_json(msg=f"min_sample must be a count of records >= 1, got {p['min_sample']}")
    if len(p["workday_hours"]) != 2 or not 0 <= p["workday_hours"][0] < p["workday_hours"][1] <= 24:
        module.fail_json(msg=f"workday_hours must be [first, last] hours with 0 <= first < last <= 24, "
                             f"got {p['workday_hours']}")
    try:
        policy = SlaPolicy.from_options(non_working_days=p["non_working_days"], providers=p["providers"])
        kpis = compute(_local(p["results_db"]), _local(p["store"]), p["period_start"], p["period_end"],
                       policy=policy, workday=tuple(p["workday_hours"]), min_sample=p["min_sample"],
                       providers=p["providers"], provider=p["provider"], opinion_provider=p["opinion_provider"])
        docs = build(kpis, p["title"], p["organization"], p["basename"], p["template_dir"])
    except TemplateNotFound as e:
        module.fail_json(msg=f"report template {e} not found: set template_dir to the project's templates/report",
                         **shown)
    except (KpiError, ProviderError, ValueError) as e:
        module.fail_json(msg=f"cannot compute the KPI report: {e}", **shown)
    if not module.check_mode:
        os.makedirs(p["output_dir"], exist_ok=True)
    paths = {name.rsplit(".", 1)[1]: os.path.join(p["output_dir"], name) for name in docs}
    changed = False
    for name, text in docs.items():
        changed |= _write(module, os.path.join(p["output_dir"], name), text)
    module.exit_json(changed=changed, kpis=kpis, **paths, **shown)


if __name__ == "__main__":
    main()
