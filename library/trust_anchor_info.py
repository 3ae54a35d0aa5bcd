#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read the approved-anchor registry, the PEMs hosts must trust, and the fleet lock."""

DOCUMENTATION = r"""
---
module: trust_anchor_info
short_description: Read the approved-anchor registry and a provider's fleet lock
description:
  - Returns the entries of the approved-anchor registry (state, who and when, evidence, PEM), oldest approval first.
  - With O(provider), also RV(approved_pems) (the anchors the provider's hosts must trust now, approved and
    unexpired) and the provider's fleet lock.
  - Only reads; a store file that does not exist yet, or a PostgreSQL database without the schema, reads as empty and
    is left untouched.
  - O(provider) is a provider of the registry (O(providers)); another one fails naming the registry's.
extends_documentation_fragment: [providers, store, attributes.info]
version_added: "0.2.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  provider:
    description: Only this provider's entries; also returns its RV(approved_pems) and RV(lock).
    type: str
  states:
    description: Only entries in these states (all by default).
    type: list
    elements: str
    choices: [pending, approved, retired]
  now:
    description: The moment expiry is judged at (ISO 8601); defaults to the clock.
    type: str
seealso:
  - module: ansible.legacy.trust_anchor
  - module: ansible.legacy.fleet_lock
"""

EXAMPLES = r"""
- name: What RENAPO's consultation hosts must trust
  trust_anchor_info:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    provider: renapo
  register: registry

- name: The registry has an approved anchor and no rollout holds the lock
  ansible.builtin.assert:
    that:
      - registry.approved_pems | length > 0
      - registry.lock is none
    fail_msg: "Approved anchors: {{ registry.approved_pems | length }}; lock: {{ registry.lock }}"

- name: Anchors waiting for evidence
  trust_anchor_info:
    store: /var/lib/renovacion/tickets.db
    states: [pending]
  register: waiting
"""

RETURN = r"""
anchors:
  description: The registry entries, oldest approval first (never-approved ones last), each with its evidence.
  returned: always
  type: list
  elements: dict
  sample:
    - provider: renapo
      fingerprint: "3F:1A:...:9C"
      subject: CN=RENAPO CA 2026,O=RENAPO
      not_before: "2026-01-01T00:00:00+00:00"
      not_after: "2036-01-01T00:00:00+00:00"
      pem: "-----BEGIN CERTIFICATE-----\n..."
      state: approved
      created_at: "2026-03-01T10:00:00-06:00"
      created_by: intake
      approved_at: "2026-03-01T11:00:00-06:00"
      approved_by: jdoe
      retired_at: null
      retired_by: null
      ticket: DGTIC-RENAPO-2026-000123
      evidence:
        - {kind: operator, detail: oficio DG/123/2026, actor: jdoe, at: "2026-03-01T10:30:00-06:00",
           ticket: DGTIC-RENAPO-2026-000123, message_id: null}
approved_pems:
  description:
    - PEM of every approved, unexpired anchor of O(provider), oldest approval first; what its hosts' bundle holds.
    - Empty without O(provider) (a bundle is per provider).
  returned: always
  type: list
  elements: str
  sample: ["-----BEGIN CERTIFICATE-----\n..."]
lock:
  description: The provider's fleet lock, or null when free.
  returned: when O(provider) is given
  type: dict
  sample: {provider: renapo, holder: "awx-job-41 (jdoe)", acquired_at: "2026-03-01T11:00:00-06:00",
           expires_at: "2026-03-01T12:00:00-06:00", expired: false}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR, now_local, to_datetime
from ansible.module_utils.ticket_store import TicketStoreError, dsn_secrets, open_store
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", required=True),
            provider=dict(type="str"),
            states=dict(type="list", elements="str", choices=["pending", "approved", "retired"]),
            now=dict(type="str"),
            providers=dict(type="dict", required=True),
        ),
        supports_check_mode=True,
    )
    for lib, error in (("cryptography", CRYPTOGRAPHY_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    module.no_log_values.update(dsn_secrets(p["store"]))  # a password inside the DSN never reaches the output
    output = dict(changed=False)
    try:
        now = to_datetime(p["now"]) if p["now"] else now_local()
        # create=False: the registry is only checked against (the store writes it on a write, and this one reads)
        with open_store(p["store"], create=False, providers=p["providers"]) as store:
            output["anchors"] = store.anchors(p["provider"], p["states"])
            output["approved_pems"] = []
            if p["provider"]:
                output["approved_pems"] = [a["pem"] for a in store.approved_anchors(p["provider"], now=now)]
                output["lock"] = store.fleet_lock_info(p["provider"], now=now)
    except (TicketStoreError, ValueError) as e:
        module.fail_json(msg=str(e))
    module.exit_json(**output)


if __name__ == "__main__":
    main()
