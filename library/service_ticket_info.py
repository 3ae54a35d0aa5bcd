#!/usr/bin/python
"""Ansible module: read certificate renewal tickets with their SLA status and audit log."""

DOCUMENTATION = r"""
---
module: service_ticket_info
short_description: Read certificate renewal tickets, their SLA status and audit log
description:
  - Returns one ticket (by id or folio) or the tickets matching O(service), O(state) and O(breached_only),
    each with the status of its SLA clocks at O(now) and its audit log (the ticket's timeline).
  - SLA clocks count Mexican business days (federal holidays, weekends and O(non_working_days)). Each clock is
    C(on_time), C(due_soon) (due within the next business day) or C(breached); C(null) before it starts.
  - Only reads; a store file that does not exist yet, or a PostgreSQL database without the ticket schema, reads
    as empty and is left untouched.
version_added: "0.1.0"
author: DGTIC automation team
options:
  store:
    description:
      - Ticket store. A SQLite file path or C(sqlite:///relative.db) / C(sqlite:////absolute.db) (one controller),
        or a PostgreSQL URL C(postgresql://user@host:5432/dbname) (shared store, e.g. under AWX; needs psycopg 3).
      - Give a PostgreSQL password through the environment (E(PGPASSWORD), E(PGPASSFILE)) rather than in the URL;
        a password written in the URL (C(user:password@) or C(?password=)) is masked in every result and message.
    type: str
    required: true
  ticket:
    description: Ticket id or folio. When given, the filters are ignored.
    type: str
  service:
    description: Only tickets of this provider.
    type: str
    choices: [renapo, sat]
  state:
    description: Only tickets in these states.
    type: list
    elements: str
    choices: [received, observations, folio_issued, requester_validated, rejected, certificate_received,
              deploying, deployed, rolled_back, notified, closed]
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
  non_working_days:
    description: Extra non-working days (DOF suspension days), C(YYYY-MM-DD), on top of Mexican holidays.
    type: list
    elements: str
    default: []
  sla_days:
    description: Business days per service and clock, overriding the defaults (first contact 5, attention 1).
    type: dict
"""

EXAMPLES = r"""
- name: Tickets of RENAPO whose SLA is breached
  service_ticket_info:
    store: /var/lib/renovacion/tickets.db
    service: renapo
    breached_only: true
  register: late

- name: Nothing is late
  ansible.builtin.assert:
    that: late.tickets | length == 0
    fail_msg: "Late tickets: {{ late.tickets | map(attribute='folio') | join(', ') }}"

- name: One ticket's timeline
  service_ticket_info:
    store: /var/lib/renovacion/tickets.db
    ticket: DGTIC-RENAPO-2026-000001
  register: one

- name: Print it
  ansible.builtin.debug:
    msg: "{{ one.ticket.audit | map(attribute='to_state') | join(' -> ') }}"
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
        first_contact: {due: "2026-02-09T10:00:00-06:00", met_at: "2026-01-30T11:00:00-06:00", status: on_time}
        attention: {due: "2026-02-03T13:00:00-06:00", met_at: null, status: due_soon}
        breached: false
      audit:
        - {at: "2026-01-30T10:00:00-06:00", actor: mesa.servicios, from_state: null, to_state: received,
           reason: ticket opened, serial: null, hosts: []}
ticket:
  description: The ticket asked for with O(ticket) (same form as an item of RV(tickets)).
  returned: when O(ticket) is given
  type: dict
  sample: {id: 1, folio: DGTIC-RENAPO-2026-000001, state: closed}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sla import SlaPolicy, now_local, to_datetime
from ansible.module_utils.ticket_store import STATES, TicketStoreError, dsn_secrets, open_store


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", required=True),
            ticket=dict(type="str"),
            service=dict(type="str", choices=["renapo", "sat"]),
            state=dict(type="list", elements="str", choices=list(STATES)),
            breached_only=dict(type="bool", default=False),
            audit=dict(type="bool", default=True),
            now=dict(type="str"),
            non_working_days=dict(type="list", elements="str", default=[]),
            sla_days=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    module.no_log_values.update(dsn_secrets(p["store"]))  # a password inside the DSN never reaches the output
    try:
        policy = SlaPolicy.from_options(p["sla_days"], p["non_working_days"])
        now = to_datetime(p["now"]) if p["now"] else now_local()
        with open_store(p["store"], policy, create=False) as store:
            found = [store.get(p["ticket"])] if p["ticket"] else store.find(p["service"], p["state"])
            tickets = []
            for ticket in found:
                ticket["sla"] = policy.ticket_status(ticket, now)
                if p["breached_only"] and not ticket["sla"]["breached"]:
                    continue
                if p["audit"]:
                    ticket["audit"] = store.audit(ticket["id"])
                tickets.append(ticket)
    except (TicketStoreError, ValueError) as e:
        module.fail_json(msg=str(e))
    output = dict(changed=False, tickets=tickets)
    if p["ticket"]:
        output["ticket"] = tickets[0] if tickets else None
    module.exit_json(**output)


if __name__ == "__main__":
    main()
