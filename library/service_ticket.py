#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: open, move and annotate a Mesa de Servicios ticket of the certificate renewal procedure."""

DOCUMENTATION = r"""
---
module: service_ticket
short_description: Open, transition and annotate a certificate renewal ticket
description:
  - Opens a ticket of the certificate renewal procedure for a provider of the registry (O(providers)), moves it
    through the state machine C(received -> observations -> received),
    C(received -> folio_issued -> requester_validated | rejected),
    C(requester_validated -> certificate_received -> deploying -> deployed | rolled_back),
    C(rolled_back -> deploying | certificate_received | notified), C(deployed -> notified -> closed),
    C(rejected -> notified -> closed), or appends a note to it. Every change is appended to the ticket's audit log.
  - "The Mesa de Servicios' lifecycle: C(cancelled) from any open state with a O(reason); C(duplicate) from any
    open state with O(duplicate_of) naming the original ticket (it must exist and not be a duplicate itself);
    C(closed -> reopened) with a O(reason) within O(reopen_business_days) business days of the close (refused after,
    naming the deadline), then C(reopened -> requester_validated | certificate_received | deploying | notified)."
  - "Expiry-monitor tickets (O(source=monitor)), one per certificate event (O(event_key)), take a short path:
    C(received -> acknowledged -> closed) or C(received -> closed), closing always with a O(reason) (how the
    certificate was renewed); C(cancelled) and C(duplicate) as above."
  - A folio such as C(DGTIC-RENAPO-2026-000123), unique and gap-free per service and year (the procedure's local
    year), is issued when the ticket enters C(folio_issued). SLA due dates are set on the ticket in the procedure's
    time zone (O(timezone)); the clock starts at O(received_at) (the next business opening when out of hours) and
    terms fall at close of business, skipping weekends, federal holidays, Semana Santa and O(non_working_days).
    Late transitions flag a breach.
  - Idempotent. Opening with a known O(message_id) returns that ticket; opening with the O(event_key) of an open
    ticket returns it with O(hosts) merged; asking for the state the ticket is already in, with no new data, changes
    nothing; a notice already recorded (O(notice_sent)) is not recorded again. An invalid transition fails listing
    the allowed next states.
  - The store never holds key material or passphrases; a value that looks like one fails the task.
extends_documentation_fragment: [providers, store, attributes.diff]
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  state:
    description:
      - C(present) opens a ticket (when O(ticket) is not given) or makes sure it exists and applies the note.
      - Any other value is the ticket state to move O(ticket) to.
    type: str
    default: present
    choices: [present, received, observations, folio_issued, requester_validated, rejected, certificate_received,
              deploying, deployed, rolled_back, notified, closed, reopened, cancelled, duplicate, acknowledged]
  ticket:
    description:
      - Ticket id or folio. Required unless O(state=present) opens a new ticket.
    type: str
  service:
    description:
      - Provider the request is about, a name of the provider registry (O(providers)). Required to open a ticket.
    type: str
  requester:
    description: Who asks for the renewal.
    type: dict
    suboptions:
      name:
        description: Full name.
        type: str
      email:
        description: E-mail address replies go to.
        type: str
      unit:
        description: Administrative unit.
        type: str
      system:
        description: System or application that consults the service.
        type: str
  forwarded_by:
    description: Who turned the request to the Mesa de Servicios (Director de Área or higher).
    type: dict
    suboptions:
      name:
        description: Full name.
        type: str
      rank:
        description: Rank, for example C(Director de Área).
        type: str
  source:
    description: How the request arrived.
    type: str
    choices: [mail, monitor, manual, provider]
    default: manual
  message_id:
    description: Message-ID of the request e-mail; opening twice with the same one returns the first ticket.
    type: str
  event_key:
    description:
      - The event a ticket is about, for example C(expiry:renapo:<sha256>) (a certificate about to expire). Opening
        with the key of an open ticket returns that ticket (O(hosts) and O(annotate) merged into it), so one event
        has one open ticket whoever finds it; once that ticket is closed, the event can open a new one.
    type: str
  received_at:
    description:
      - When the request arrived (ISO 8601; the receiving server's time). Starts the first-contact clock; defaults
        to O(now). Without an offset it is read in O(timezone).
    type: str
  actor:
    description: Who makes the change, recorded in the audit log.
    type: str
    default: ansible
  reason:
    description:
      - Why, recorded in the audit log. Required to cancel, to reopen and to close an expiry-monitor ticket; kept as
        the ticket's C(close_reason) when it enters C(closed), C(cancelled) or C(duplicate).
    type: str
  duplicate_of:
    description: With O(state=duplicate), the id or folio of the ticket this one duplicates.
    type: str
  notice_sent:
    description:
      - Key of a notice just sent about the ticket (for example C(sla:attention:due_soon:<due>)), recorded on it once
        so the sender's next run finds it in RV(ticket.notices) and does not send it again.
    type: str
  serial:
    description: Serial number (hex) of the certificate received or deployed.
    type: str
  hosts:
    description: Hosts the deployment targets; added to those already recorded.
    type: list
    elements: str
  verified_hosts:
    description: Hosts whose post-deploy consultation passed; added to those already recorded.
    type: list
    elements: str
  cause:
    description: Cause of a rollback or a rejection.
    type: str
  annotate:
    description: Note appended to the ticket's observations (a note already recorded is not repeated).
    type: str
  now:
    description: The current time (ISO 8601) for the SLA clocks and the audit log; defaults to the clock.
    type: str
  timezone:
    description:
      - The procedure's time zone (IANA name); stored moments carry its offset and business hours are its local
        hours, whatever the controller's system zone is.
      - Defaults to the environment variable E(PROCEDURE_TIMEZONE), else C(America/Mexico_City).
    type: str
  business_hours:
    description: Business hours in O(timezone), C(HH:MM-HH:MM) (opening inclusive, closing exclusive).
    type: str
    default: "09:00-18:00"
  semana_santa:
    description:
      - "Whether Holy Thursday and Good Friday are non-working (the federal administration does not work them);
        C(true)/C(false) for every year, or per year, for example C({2027: false})."
    type: raw
    default: true
  non_working_days:
    description:
      - "DOF non-working days (the yearly acuerdo de días inhábiles, suspensions) on top of weekends and federal
        holidays, C(YYYY-MM-DD). Per year, C({2026: [...], 2027: [...]}) (a year with an empty list has a DOF list
        with no days), or a flat list."
      - When the current year has no list, RV(sla_warnings) says so.
    type: raw
    default: []
  sla_days:
    description:
      - Business days per provider and clock, overriding the registry's C(sla_days) (O(providers)).
      - 'For example C({<provider>: {attention: 2}}).'
    type: dict
  reopen_business_days:
    description: Business days after its close during which a closed ticket may be reopened.
    type: int
    default: 10
notes:
  - Check mode runs the change in a transaction that is rolled back, so it reports exactly what would change.
  - Diff mode returns the ticket before and after.
"""

EXAMPLES = r"""
- name: Open a ticket for a RENAPO renewal request
  service_ticket:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    service: renapo
    source: mail
    message_id: "<20260130.1@agricultura.gob.mx>"
    requester:
      name: Ana López
      email: ana.lopez@agricultura.gob.mx
      unit: Dirección General de Padrones
      system: Padrón de Productores
    forwarded_by:
      name: Luis Pérez
      rank: Director de Área
    actor: mesa.servicios
  register: opened

- name: Issue the folio
  service_ticket:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    ticket: "{{ opened.ticket.id }}"
    state: folio_issued
    actor: mesa.servicios
  register: issued

- name: The folio follows the DGTIC format
  ansible.builtin.assert:
    that:
      - issued.ticket.folio is match('DGTIC-RENAPO-[0-9]{4}-[0-9]{6}$')
      - issued.allowed_next == ['requester_validated', 'rejected', 'cancelled', 'duplicate']

- name: Record a host verified after the rollout
  service_ticket:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    ticket: "{{ issued.ticket.folio }}"
    state: deploying
    verified_hosts: [web01]
    actor: rollout

- name: The Mesa cancels a request the requester withdrew
  service_ticket:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    ticket: "{{ opened.ticket.id }}"
    state: cancelled
    reason: el solicitante retiró la solicitud por correo del 3 de febrero
    actor: mesa.servicios
  register: cancelled

- name: The cancelled ticket is final
  ansible.builtin.assert:
    that:
      - cancelled.ticket.close_reason is search('retiró')
      - cancelled.allowed_next == []

- name: The expiry ticket of a renewed certificate is closed
  service_ticket:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    ticket: "{{ expiry_ticket_id }}"
    state: closed
    reason: certificado renovado en consulta-01 y consulta-02
    actor: mesa.servicios

- name: Same ticket in the shared PostgreSQL store (AWX), the password from a credential's environment
  service_ticket:
    store: postgresql://tickets@db.example.gob.mx:5432/tickets
    providers: "{{ procedure_providers }}"
    ticket: "{{ issued.ticket.folio }}"
    state: deploying
    verified_hosts: [web02]
    actor: rollout
  environment:
    PGPASSWORD: "{{ ticket_store_password }}"
  register: shared

- name: The shared store records the host
  ansible.builtin.assert:
    that: "'web02' in shared.ticket.verified_hosts"
"""

RETURN = r"""
ticket:
  description: The ticket after the change (as it would be, in check mode).
  returned: success
  type: dict
  sample:
    id: 1
    service: renapo
    state: folio_issued
    folio: DGTIC-RENAPO-2026-000001
    requester: {name: Ana López, email: ana.lopez@agricultura.gob.mx, unit: DGP, system: Padrón}
    forwarded_by: {name: Luis Pérez, rank: Director de Área}
    source: mail
    message_id: "<20260130.1@agricultura.gob.mx>"
    received_at: "2026-01-30T10:00:00-06:00"
    first_contact_due: "2026-02-09T18:00:00-06:00"
    first_contact_at: "2026-01-30T11:00:00-06:00"
    certificate_received_at: null
    attention_due: null
    attended_at: null
    sla_first_contact_breached: false
    sla_attention_breached: false
    deployed_serial: null
    hosts: []
    verified_hosts: []
    cause: null
    observations: []
    closed_at: null
    close_reason: null
    duplicate_of: null
    event_key: null
    notices: []
    allowed_next: [requester_validated, rejected, cancelled, duplicate]
  contains:
    notices:
      description: The notices recorded as sent for the ticket (O(notice_sent)), each with its name and moment.
      type: list
      elements: dict
      returned: always
sla:
  description:
    - The ticket's SLA clocks at O(now), moments in local time (O(timezone)). Each clock has C(due), C(met_at),
      C(status) (C(on_time), C(due_soon), C(breached), or null before it starts or once the ticket was cancelled in
      time), C(business_hours_left) and C(stopped_at); C(breached) says whether any clock is.
  returned: success
  type: dict
  sample:
    first_contact: {due: "2026-02-09T18:00:00-06:00", met_at: "2026-01-30T11:00:00-06:00", status: on_time,
                    business_hours_left: null, stopped_at: null}
    attention: {due: null, met_at: null, status: null, business_hours_left: null, stopped_at: null}
    breached: false
sla_warnings:
  description: What the SLA report must say, in Spanish (the current year has no DOF list of non-working days).
  returned: success
  type: list
  elements: str
  sample: ["No hay lista de días inhábiles del DOF para 2028: ..."]
allowed_next:
  description: States the ticket may move to next.
  returned: always
  type: list
  elements: str
  sample: [requester_validated, rejected, cancelled, duplicate]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.providers import ProviderError, checked
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR, MODULE_OPTIONS, now_local, policy_from_params, to_datetime
from ansible.module_utils.ticket_store import (
    SOURCES,
    STATES,
    InvalidTransition,
    TicketStoreError,
    dsn_secrets,
    open_store,
)
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", *STATES]),
            ticket=dict(type="str"),
            service=dict(type="str"),  # checked against the registry (providers) below
            requester=dict(type="dict", options=dict(name=dict(type="str"), email=dict(type="str"),
                                                     unit=dict(type="str"), system=dict(type="str"))),
            forwarded_by=dict(type="dict", options=dict(name=dict(type="str"), rank=dict(type="str"))),
            source=dict(type="str", default="manual", choices=list(SOURCES)),
            message_id=dict(type="str"),
            event_key=dict(type="str", no_log=False),  # an expiry event's name, not a secret
            received_at=dict(type="str"),
            actor=dict(type="str", default="ansible"),
            reason=dict(type="str"),
            duplicate_of=dict(type="str"),
            notice_sent=dict(type="str"),
            serial=dict(type="str"),
            hosts=dict(type="list", elements="str"),
            verified_hosts=dict(type="list", elements="str"),
            cause=dict(type="str"),
            annotate=dict(type="str"),
            now=dict(type="str"),
            reopen_business_days=dict(type="int", default=10),
            **MODULE_OPTIONS,
        ),
        required_one_of=[("ticket", "service")],
        supports_check_mode=True,
    )
    for lib, error in (("cryptography", CRYPTOGRAPHY_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    module.no_log_values.update(dsn_secrets(p["store"]))  # a password inside the DSN never reaches the output
    if p["state"] != "present" and not p["ticket"]:
        module.fail_json(msg=f"state={p['state']} moves an existing ticket: give its id or folio in 'ticket'")
    try:
        known = checked(p["providers"], p["service"])
    except ProviderError as e:
        module.fail_json(msg=str(e))
    try:
        policy = policy_from_params(p, reopen_business_days=p["reopen_business_days"])
        now = to_datetime(p["now"]) if p["now"] else now_local()
    except ValueError as e:
        module.fail_json(msg=f"invalid SLA settings: {e}")
    common = dict(actor=p["actor"], now=now)
    data = dict(reason=p["reason"], serial=p["serial"], hosts=p["hosts"], verified_hosts=p["verified_hosts"],
                cause=p["cause"], note=p["annotate"], duplicate_of=p["duplicate_of"], notice=p["notice_sent"])
    try:
        with open_store(p["store"], policy, create=not module.check_mode, providers=known) as store, \
                store.transaction(dry_run=module.check_mode):  # check mode previews and rolls back the whole task
            if p["ticket"]:
                target = None if p["state"] == "present" else p["state"]
                result = store.transition(p["ticket"], target, **data, **common)
            else:
                result = store.create(p["service"], requester=p["requester"], forwarded_by=p["forwarded_by"],
                                      source=p["source"], message_id=p["message_id"], hosts=p["hosts"] or (),
                                      received_at=p["received_at"], reason=p["reason"], note=p["annotate"],
                                      event_key=p["event_key"], **common)
                if p["notice_sent"]:
                    noticed = store.record_notice(result.ticket["id"], p["notice_sent"], **common)
                    result = result._replace(ticket=noticed.ticket, changed=result.changed or noticed.changed)
    except InvalidTransition as e:
        module.fail_json(msg=str(e), allowed_next=e.allowed)
    except (TicketStoreError, ValueError) as e:
        module.fail_json(msg=str(e))
    warnings = policy.warnings(now)
    for warning in warnings:
        module.warn(warning)
    output = dict(changed=result.changed, ticket=result.ticket, allowed_next=result.ticket["allowed_next"],
                  sla=policy.ticket_status(result.ticket, now), sla_warnings=warnings)
    if module._diff:
        output["diff"] = dict(before=result.before or {}, after=result.ticket)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
