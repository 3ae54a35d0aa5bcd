#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read certificate renewal tickets with their SLA status and audit log."""

DOCUMENTATION = r"""
---
module: service_ticket_info
short_description: Read certificate renewal tickets, their SLA status and audit log
description:
  - Returns one ticket (by id or folio) or the tickets matching O(service), O(state), O(source), O(open_only) and
    O(breached_only), each with the status of its SLA clocks at O(now) and its audit log (the ticket's timeline).
  - SLA clocks run on the procedure's clock (O(timezone), America/Mexico_City by default) and are returned in local
    time. They count business hours of business days (weekends, federal holidays, Semana Santa and
    O(non_working_days) excluded); terms fall at close of business. Each clock is C(on_time), C(due_soon) (no more
    than O(due_soon_business_days) business days of business hours left), C(breached), or C(null) before it starts
    (or once the ticket was cancelled or marked duplicate before its term).
  - RV(sla_warnings) holds what every SLA report must show (in Spanish), for example that the current year has no
    DOF list of non-working days; they are also emitted as warnings.
  - RV(sla_notices) lists the due-soon and breach notices due at O(now) that no listed ticket has had yet (one per
    open ticket, clock and clock state); C(playbooks/sla_watch.yml) sends them and records each on its ticket.
  - Only reads; a store file that does not exist yet, or a PostgreSQL database without the ticket schema, reads
    as empty and is left untouched.
extends_documentation_fragment: [providers, store, attributes.info]
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  ticket:
    description: Ticket id or folio. When given, the filters are ignored.
    type: str
  service:
    description: Only tickets of this provider, a name of the provider registry (O(providers)).
    type: str
  state:
    description: Only tickets in these states.
    type: list
    elements: str
    choices: [received, observations, folio_issued, requester_validated, rejected, certificate_received,
              deploying, deployed, rolled_back, notified, closed, reopened, cancelled, duplicate, acknowledged]
  source:
    description: Only tickets of this source (C(monitor) for the expiry monitor's).
    type: str
    choices: [mail, monitor, manual, provider]
  open_only:
    description: Only tickets not in a final state (C(closed), C(cancelled), C(duplicate)).
    type: bool
    default: false
  breached_only:
    description: Only tickets with an SLA clock breached at O(now).
    type: bool
    default: false
  audit:
    description: Include each ticket's audit log.
    type: bool
    default: true
  now:
    description: The moment the SLA status is computed at (ISO 8601); defaults to the clock.
    type: str
  due_soon_business_days:
    description: A clock is C(due_soon) when no more than this many business days of business hours are left.
    type: int
    default: 1
  timezone:
    description:
      - The procedure's time zone (IANA name) the clocks are computed and returned in, whatever the controller's
        system zone is.
      - Defaults to the environment variable E(PROCEDURE_TIMEZONE), else C(America/Mexico_City).
    type: str
  business_hours:
    description: Business hours in O(timezone), C(HH:MM-HH:MM) (opening inclusive, closing exclusive).
    type: str
    default: "09:00-18:00"
  semana_santa:
    description:
      - "Whether Holy Thursday and Good Friday are non-working; C(true)/C(false) for every year, or per year, for
        example C({2027: false})."
    type: raw
    default: true
  non_working_days:
    description:
      - "DOF non-working days, C(YYYY-MM-DD), per year C({2026: [...], 2027: [...]}) (an empty list: the DOF
        published none) or a flat list. When the current year has no list, RV(sla_warnings) says so."
    type: raw
    default: []
  sla_days:
    description: Business days per provider and clock, overriding the registry's C(sla_days) (O(providers)).
    type: dict
"""

EXAMPLES = r"""
- name: Tickets of RENAPO whose SLA is breached
  service_ticket_info:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    service: renapo
    breached_only: true
    non_working_days:
      2026: ["2026-11-02"]
  register: late

- name: Nothing is late
  ansible.builtin.assert:
    that: late.tickets | length == 0
    fail_msg: "Late tickets: {{ late.tickets | map(attribute='folio') | join(', ') }}"

- name: One ticket's timeline
  service_ticket_info:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    ticket: DGTIC-RENAPO-2026-000001
  register: one

- name: Print it
  ansible.builtin.debug:
    msg: "{{ one.ticket.audit | map(attribute='to_state') | join(' -> ') }}"

- name: Open expiry tickets and the SLA notices due now
  service_ticket_info:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    open_only: true
    audit: false
  register: watch

- name: Show what would be sent
  ansible.builtin.debug:
    msg: "{{ watch.sla_notices | map(attribute='key') | list }}"
"""

RETURN = r"""
tickets:
  description: The tickets found, oldest first, each as service_ticket returns it plus C(sla) and C(audit).
  returned: always
  type: list
  elements: dict
  sample:
    - id: 1
      folio: DGTIC-RENAPO-2026-000001
      service: renapo
      state: deploying
      sla:
        first_contact: {due: "2026-02-09T18:00:00-06:00", met_at: "2026-01-30T11:00:00-06:00", status: on_time,
                        business_hours_left: null, stopped_at: null}
        attention: {due: "2026-02-03T18:00:00-06:00", met_at: null, status: due_soon, business_hours_left: 5.0,
                    stopped_at: null}
        breached: false
      audit:
        - {at: "2026-01-30T10:00:00-06:00", actor: mesa.servicios, from_state: null, to_state: received,
           reason: ticket opened, serial: null, hosts: []}
ticket:
  description: The ticket asked for with O(ticket) (same form as an item of RV(tickets)).
  returned: when O(ticket) is given
  type: dict
  sample: {id: 1, folio: DGTIC-RENAPO-2026-000001, state: closed}
sla_warnings:
  description: What every SLA report must show, in Spanish (the current year has no DOF list of non-working days).
  returned: always
  type: list
  elements: str
  sample: ["No hay lista de días inhábiles del DOF para 2028: ..."]
sla_notices:
  description:
    - The SLA notices due at O(now) that the listed tickets have not had (C(key) not in the ticket's C(notices)),
      one per open ticket, clock and clock state, the breach replacing a due-soon notice never sent. Dates are
      local; C(due_text) is the term in words.
  returned: always
  type: list
  elements: dict
  sample:
    - key: "sla:attention:due_soon:2026-02-03T18:00:00-06:00"
      notice: sla_due_soon
      ticket_id: 1
      folio: DGTIC-RENAPO-2026-000001
      service: renapo
      state: certificate_received
      clock: attention
      status: due_soon
      due: "2026-02-03T18:00:00-06:00"
      due_text: "martes 3 de febrero de 2026 a las 18:00 h"
      business_hours_left: 5.0
      requester: Ana López
now:
  description: The moment the clocks were computed at, in local time.
  returned: always
  type: str
  sample: "2026-02-03T13:00:00-06:00"
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.notify import JINJA2_IMPORT_ERROR
from ansible.module_utils.providers import ProviderError, checked
from ansible.module_utils.sla import (
    HOLIDAYS_IMPORT_ERROR,
    MODULE_OPTIONS,
    iso,
    now_local,
    policy_from_params,
    to_datetime,
)
from ansible.module_utils.sla_watch import due_notices
from ansible.module_utils.ticket_store import SOURCES, STATES, TicketStoreError, dsn_secrets, open_store
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", required=True),
            ticket=dict(type="str"),
            service=dict(type="str"),  # checked against the registry (providers) below
            state=dict(type="list", elements="str", choices=list(STATES)),
            source=dict(type="str", choices=list(SOURCES)),
            open_only=dict(type="bool", default=False),
            breached_only=dict(type="bool", default=False),
            audit=dict(type="bool", default=True),
            now=dict(type="str"),
            due_soon_business_days=dict(type="int", default=1),
            **MODULE_OPTIONS,
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
        known = checked(p["providers"], p["service"])
    except ProviderError as e:
        module.fail_json(msg=str(e))
    try:
        policy = policy_from_params(p, due_soon_business_days=p["due_soon_business_days"])
        now = to_datetime(p["now"]) if p["now"] else now_local()
        with open_store(p["store"], policy, create=False, providers=known) as store:
            found = ([store.get(p["ticket"])] if p["ticket"]
                     else store.find(p["service"], p["state"], source=p["source"], open_only=p["open_only"]))
            tickets = []
            for ticket in found:
                ticket["sla"] = policy.ticket_status(ticket, now)
                if p["breached_only"] and not ticket["sla"]["breached"]:
                    continue
                if p["audit"]:
                    ticket["audit"] = store.audit(ticket["id"])
                tickets.append(ticket)
        notices = due_notices(tickets, policy, now)
    except (TicketStoreError, ValueError) as e:
        module.fail_json(msg=str(e))
    warnings = policy.warnings(now)
    for warning in warnings:
        module.warn(warning)
    output = dict(changed=False, tickets=tickets, sla_warnings=warnings, sla_notices=notices, now=iso(now))
    if p["ticket"]:
        output["ticket"] = tickets[0] if tickets else None
    module.exit_json(**output)


if __name__ == "__main__":
    main()
