#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: a ticket as a person reads it, in Spanish (formatting only: module_utils/ticket_view.py)."""

DOCUMENTATION = r"""
---
module: ticket_view
short_description: Format tickets as a person reads them, in Spanish
description:
  - Formats each ticket that M(ansible.legacy.service_ticket_info) returned (with C(sla) and C(audit)) as printable
    Spanish lines (RV(views[].lines)) - state, SLA clocks in local time, the requester's observations in words, the
    evidence behind the anchor its delivery brought, the work notes kept apart, and its timeline.
  - Reads nothing and changes nothing; the registry entries come from M(ansible.legacy.trust_anchor_info).
  - Providers are named as the provider registry (O(providers)) names them for people.
extends_documentation_fragment: [providers, attributes.info]
version_added: "0.3.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  tickets:
    description:
      - Tickets as M(ansible.legacy.service_ticket_info) returns them
        (RV(ansible.legacy.service_ticket_info#module:tickets)).
    type: list
    elements: dict
    required: true
  anchors:
    description:
      - Registry entries as M(ansible.legacy.trust_anchor_info) returns them; those behind each ticket's delivery are
        shown.
    type: list
    elements: dict
    default: []
  catalog:
    description:
      - The catalog of systems and the services each may consult (C(procedure_catalog)); the requester's
        observations are evaluated against it, as intake did.
    type: dict
    default: {}
  timezone:
    description: IANA time zone the moments are shown in.
    type: str
    default: America/Mexico_City
seealso:
  - module: ansible.legacy.service_ticket_info
  - module: ansible.legacy.trust_anchor_info
"""

EXAMPLES = r"""
- name: Read ticket 1
  service_ticket_info:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    ticket: "1"
  register: found

- name: Format it
  ticket_view:
    providers: "{{ procedure_providers }}"
    tickets: "{{ found.tickets }}"
    catalog: "{{ procedure_catalog }}"
  register: view

- name: Print it
  ansible.builtin.debug:
    msg: "{{ view.views[0].lines }}"
"""

RETURN = r"""
views:
  description: One entry per ticket, in the order given.
  returned: always
  type: list
  elements: dict
  sample:
    - id: 1
      folio: null
      state: observations
      state_es: con observaciones (espera la respuesta del solicitante)
      observations: ["Falta el dato: cargo de quien turna."]
      observation_history: [faltaba un dato]
      work_notes: ["01/12/2026 16:18 Correo procesado: <a1@agricultura.gob.mx> [contenido 95b6...]"]
      anchors: []
      timeline: ["01/12/2026 16:18 recibido (mesa.servicios): solicitud recibida por correo"]
      lines: ["Ticket 1 — folio (sin folio) — servicio RENAPO", "Estado: con observaciones ..."]
  contains:
    lines:
      description: The whole view as printable Spanish lines, in reading order.
      type: list
      elements: str
      returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.ticket_view import render


def main():
    module = AnsibleModule(
        argument_spec=dict(
            tickets=dict(type="list", elements="dict", required=True),
            anchors=dict(type="list", elements="dict", default=[]),
            catalog=dict(type="dict", default={}),
            timezone=dict(type="str", default="America/Mexico_City"),
            providers=dict(type="dict", required=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        views = [{"id": t.get("id"), "folio": t.get("folio"),
                  **render(t, p["anchors"], p["catalog"], p["timezone"], providers=p["providers"])}
                 for t in p["tickets"]]
    except (ValueError, KeyError) as e:
        module.fail_json(msg=f"no se pudo presentar el ticket: {e}")
    module.exit_json(changed=False, views=views)


if __name__ == "__main__":
    main()
