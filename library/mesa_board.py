#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: mesa_board
short_description: Write the Mesa de Servicios board (a self-contained Spanish HTML page of the open tickets)
description:
  - Reads every open ticket of the ticket store and writes one HTML page in the KPI report's style, each renewal
    request with its folio, service, requester, state, age, both SLA clocks (a tiempo, por vencer, vencido; with
    the due moment and the business hours left, in local time), the next step and its timeline (state changes and
    notes); the tickets the expiry monitor opened are listed apart.
  - The most urgent requests come first (breached, then due soon, then by due moment). The page fetches nothing
    (no JavaScript, fonts or style sheets). In check mode nothing is written.
  - Providers are named as the registry (O(providers)) names them; their SLA days are the registry's.
extends_documentation_fragment: [providers, store, attributes]
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  output:
    description: Path of the HTML page (its directory is created when missing).
    type: path
    required: true
  title:
    description: Title of the page.
    type: str
    default: Tablero de la Mesa de Servicios
  organization:
    description: Organization named under the title.
    type: str
    default: Dirección General de Tecnologías de la Información y Comunicaciones
  template_dir:
    description:
      - Directory holding C(board.html.j2) and C(_estilo.html.j2) (the project's C(templates/report)). Required
        when the module runs from Ansible's payload, where the project tree is not next to the module.
    type: path
  non_working_days:
    description:
      - Extra non-working days (DOF suspension days), YYYY-MM-DD, for the SLA clocks.
      - "A list of dates, or one list per year (C({2027: [2027-03-25]})); a year with no list gets a warning."
    type: raw
    default: []
  due_soon_business_days:
    description: A clock with no more than this many business days' worth of hours left is shown as por vencer.
    type: int
    default: 1
  now:
    description: The moment the board shows (ISO 8601); the current time when omitted.
    type: str
"""

EXAMPLES = r"""
- name: Write the Mesa de Servicios board
  mesa_board:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    output: /var/www/reportes/tablero_mesa.html
    template_dir: "{{ playbook_dir }}/../templates/report"
  register: tablero

- name: The board exists and counts the open tickets
  ansible.builtin.assert:
    that:
      - tablero.html is file
      - tablero.summary.abiertos is number
"""

RETURN = r"""
html:
  description: Path of the board.
  returned: always
  type: str
  sample: /var/www/reportes/tablero_mesa.html
summary:
  description: Open tickets, requests, monitor tickets, breached and due-soon counts.
  returned: always
  type: dict
  sample: {"abiertos": 3, "solicitudes": 2, "monitoreo": 1, "vencidos": 1, "por_vencer": 0}
tickets:
  description: The open tickets as shown (folio, state, clocks, next step), without their timelines.
  returned: always
  type: list
  elements: dict
  sample: [{"folio": "DGTIC-RENAPO-2026-000001", "estado": "requester_validated", "urgencia": "due_soon"}]
warnings_es:
  description: Warnings the page shows (e.g. the current year has no DOF list of non-working days).
  returned: always
  type: list
  elements: str
  sample: []
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.board import collect, render
from ansible.module_utils.notify import JINJA2_IMPORT_ERROR
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR, SlaPolicy
from ansible.module_utils.ticket_store import TicketStoreError, dsn_secrets, open_store
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR

try:
    from jinja2 import TemplateNotFound
except ImportError:  # main() fails first with missing_required_lib("Jinja2")
    TemplateNotFound = LookupError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", required=True),
            output=dict(type="path", required=True),
            title=dict(type="str", default="Tablero de la Mesa de Servicios"),
            organization=dict(type="str",
                              default="Dirección General de Tecnologías de la Información y Comunicaciones"),
            template_dir=dict(type="path"),
            non_working_days=dict(type="raw", default=[]),
            due_soon_business_days=dict(type="int", default=1),
            now=dict(type="str"),
            providers=dict(type="dict", required=True),
        ),
        supports_check_mode=True,
    )
    for lib, error in (("cryptography", CRYPTOGRAPHY_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR),
                       ("Jinja2", JINJA2_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    module.no_log_values.update(dsn_secrets(p["store"]))  # a password inside the DSN never reaches the output
    try:
        policy = SlaPolicy.from_options(non_working_days=p["non_working_days"],
                                        due_soon_business_days=p["due_soon_business_days"],
                                        providers=p["providers"])
        with open_store(p["store"], policy=policy, create=False, providers=policy.providers) as store:
            data = collect(store, p["now"], policy, providers=policy.providers)
        html = render(data, p["title"], p["organization"], p["template_dir"])
    except TemplateNotFound as e:
        module.fail_json(msg=f"board template {e} not found: set template_dir to the project's templates/report")
    except (TicketStoreError, ValueError) as e:
        module.fail_json(msg=f"cannot write the Mesa de Servicios board: {e}")
    changed = True
    if os.path.exists(p["output"]):
        with open(p["output"], "rb") as f:
            changed = f.read() != html.encode()
    if changed and not module.check_mode:
        os.makedirs(os.path.dirname(os.path.abspath(p["output"])), exist_ok=True)
        tmp = f"{p['output']}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(html.encode())
        module.atomic_move(tmp, p["output"])
    tickets = [{k: v for k, v in t.items() if k != "linea_de_tiempo"} for t in data["solicitudes"] + data["monitoreo"]]
    module.exit_json(changed=changed, html=p["output"], summary=data["resumen"], tickets=tickets,
                     warnings_es=data["avisos"])


if __name__ == "__main__":
    main()
