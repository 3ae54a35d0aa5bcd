#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: send one Spanish notice of the certificate renewal procedure by SMTP."""

DOCUMENTATION = r"""
---
module: service_notify
short_description: Send a Spanish notice of the certificate renewal procedure
description:
  - Renders notice O(name) from its Jinja2 templates (C(<name>.txt.j2) with a subject block, and C(<name>.html.j2))
    and sends it as a text + HTML message through SMTP.
  - The templates run with strict undefined variables, so a missing O(context) entry fails the task instead of
    mailing a blank.
  - Dates are written in words in the procedure's local time (O(timezone)); C(sla_due_soon) and C(sla_breached)
    tell the Mesa de Servicios that a ticket's SLA clock is about to fall due or has (C(playbooks/sla_watch.yml)).
  - A notice names a provider (C(context.service)) as the registry (O(providers)) names it for people.
extends_documentation_fragment: [providers, attributes]
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  name:
    description: The notice.
    type: str
    required: true
    choices: [observations, folio_issued, oficio_respuesta, deployment_concluded, rollback, ticket_closed,
              quarantine, certificate_expiring, unauthenticated, sla_due_soon, sla_breached]
  to:
    description: Recipients.
    type: list
    elements: str
    required: true
  cc:
    description: Recipients in copy.
    type: list
    elements: str
    default: []
  sender:
    description: From address.
    type: str
    required: true
  reply_to:
    description: Reply-To address (the Mesa de Servicios, so answers reach its mailbox).
    type: str
  context:
    description: Variables of the template (its first line lists them), for example C(ticket_id), C(folio).
    type: dict
    default: {}
  template_dir:
    description:
      - Directory holding C(notices/) and C(oficio/); a playbook passes C({{ playbook_dir }}/../templates).
    type: path
  smtp_host:
    description: SMTP server.
    type: str
    default: localhost
  smtp_port:
    description: Port of the SMTP server.
    type: int
    default: 25
  timezone:
    description:
      - The procedure's time zone (IANA name) dates are written in. Defaults to the environment variable
        E(PROCEDURE_TIMEZONE), else C(America/Mexico_City).
    type: str
notes:
  - Check mode renders the notice (so a template error still fails) and sends nothing.
seealso:
  - module: ansible.legacy.mail_intake
"""

EXAMPLES = r"""
- name: Tell the Mesa de Servicios the deployment concluded
  service_notify:
    name: deployment_concluded
    providers: "{{ procedure_providers }}"
    to: [mesa.servicios@agricultura.gob.mx]
    sender: soas@agricultura.gob.mx
    smtp_host: smtp.agricultura.gob.mx
    template_dir: "{{ playbook_dir }}/../templates"
    context:
      ticket_id: 12
      folio: DGTIC-RENAPO-2026-000012
      service: renapo
      serial: 4F1A0C2B9D
      fingerprint: "AB:CD:..."
      hosts: [consulta-01, consulta-02]
  register: sent

- name: The notice went out
  ansible.builtin.assert:
    that: sent.recipients == ['mesa.servicios@agricultura.gob.mx']

- name: Warn the Mesa de Servicios that a ticket's attention term is due soon
  service_notify:
    name: sla_due_soon
    providers: "{{ procedure_providers }}"
    to: [mesa.servicios@agricultura.gob.mx]
    sender: mesa.servicios@agricultura.gob.mx
    template_dir: "{{ playbook_dir }}/../templates"
    context:
      ticket_id: 12
      folio: DGTIC-RENAPO-2026-000012
      service: renapo
      state: certificate_received
      clock_name: atención
      due: "2026-12-28T18:00:00-06:00"
      business_hours_left: 3.5
"""

RETURN = r"""
subject:
  description: The rendered subject.
  returned: always
  type: str
  sample: Actualización de certificado concluida, folio DGTIC-RENAPO-2026-000012 [Ticket #12]
recipients:
  description: Recipients the SMTP server accepted (empty in check mode).
  returned: always
  type: list
  elements: str
  sample: [mesa.servicios@agricultura.gob.mx]
message_id:
  description: Message-ID of the message sent.
  returned: always
  type: str
  sample: "<176.1@agricultura.gob.mx>"
"""

import smtplib

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.notify import JINJA2_IMPORT_ERROR, NOTICES, notice, send
from ansible.module_utils.providers import registry
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR, set_timezone

try:
    import jinja2
except ImportError:  # main() fails first with missing_required_lib("Jinja2")
    jinja2 = None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True, choices=list(NOTICES)),
            to=dict(type="list", elements="str", required=True),
            cc=dict(type="list", elements="str", default=[]),
            sender=dict(type="str", required=True),
            reply_to=dict(type="str"),
            context=dict(type="dict", default={}),
            template_dir=dict(type="path"),
            smtp_host=dict(type="str", default="localhost"),
            smtp_port=dict(type="int", default=25),
            timezone=dict(type="str"),
            providers=dict(type="dict", required=True),
        ),
        supports_check_mode=True,
    )
    for lib, error in (("Jinja2", JINJA2_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    try:
        set_timezone(p["timezone"])
        known = registry(p["providers"])
    except ValueError as e:  # ProviderError included: a registry defect names the provider and the key
        module.fail_json(msg=str(e))
    service = p["context"].get("service")
    if service is not None and service not in known:
        module.fail_json(msg=f"context.service {service!r} is not a provider of the registry (procedure_providers): "
                             f"{', '.join(known.names())}")
    try:
        message = notice(p["name"], sender=p["sender"], to=p["to"], cc=p["cc"], reply_to=p["reply_to"],
                         template_dir=p["template_dir"], providers=known, **p["context"])
    except jinja2.TemplateError as e:
        module.fail_json(msg=f"notice {p['name']} cannot be rendered: {type(e).__name__}: {e}")
    result = dict(subject=str(message["Subject"]), message_id=str(message["Message-ID"]), recipients=[])
    if module.check_mode:
        module.exit_json(changed=True, **result)
    try:
        result["recipients"] = send(message, p["smtp_host"], p["smtp_port"])
    except (OSError, smtplib.SMTPException) as e:
        module.fail_json(msg=f"notice {p['name']} not sent through {p['smtp_host']}:{p['smtp_port']}: {e}", **result)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
