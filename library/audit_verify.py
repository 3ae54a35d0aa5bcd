#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: verify the ticket store's tamper-evident audit chain and name its first broken link."""

DOCUMENTATION = r"""
---
module: audit_verify
short_description: Verify the ticket store's audit chain and fail naming the first broken link
description:
  - Every entry of the ticket audit log and of the trust-anchor registry audit is chained to the one before by a
    SHA-256 hash over that entry's hash and the entry's content, and, when the store has an audit key, by an HMAC of
    that hash. This module recomputes the chain and fails naming the first broken link (table, id, what differs),
    for instance an edited or replaced entry, a removed one, an entry written outside the store's API, a chain
    recomputed without the key, a ticket or trust anchor whose state is not the one its last audit entry records.
  - It returns the number of links and the last hash (C(head)); record it outside the store (the job log, the Mesa's
    ticket) so that a cut tail is evident too.
  - Never changes anything (opening an older store applies its schema migrations, as every store module does).
version_added: "0.3.0"
author: DGTIC Operaciones (@dgtic-operaciones)
extends_documentation_fragment: [store, attributes.info]
options:
  hmac_key_file:
    description:
      - File holding the audit HMAC key (at least 16 bytes; an AWX credential's injected file). With it every link's
        HMAC is checked too. Defaults to the file named by E(TICKET_STORE_AUDIT_KEY_FILE), else hashes only.
    type: path
  check_states:
    description: Also check that every ticket's and trust anchor's state is the one its last audit entry records.
    type: bool
    default: true
notes:
  - Supports check mode (it only reads).
seealso:
  - module: ansible.legacy.service_ticket_info
"""

EXAMPLES = r"""
- name: Prove the audit log was not rewritten
  audit_verify:
    store: "{{ ticket_store }}"
    hmac_key_file: "{{ lookup('env', 'TICKET_STORE_AUDIT_KEY_FILE') }}"
  register: audit

- name: Keep the chain's head in the job log
  ansible.builtin.debug:
    msg: "audit chain: {{ audit.entries }} entries, head {{ audit.head }}"
"""

RETURN = r"""
entries:
  description: Links in the audit chain.
  returned: always
  type: int
  sample: 42
head:
  description: Hash of the chain's last link (null when the chain is empty).
  returned: always
  type: str
  sample: 3f1c...e9
broken:
  description: The first broken link (table, id, problem); only when the task fails because of it.
  returned: failed
  type: dict
  sample: {"table": "audit_log", "id": 2, "problem": "hash does not match: the entry was edited or replaced"}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR
from ansible.module_utils.ticket_store import TicketStoreError, dsn_secrets, open_store, read_audit_key
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", required=True),
            hmac_key_file=dict(type="path"),
            check_states=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    for lib, error in (("cryptography", CRYPTOGRAPHY_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    module.no_log_values.update(dsn_secrets(p["store"]))  # a password inside the DSN never reaches the output
    try:
        key = read_audit_key(p["hmac_key_file"]) if p["hmac_key_file"] else None
        with open_store(p["store"], create=False, audit_key=key) as store:
            broken = store.verify_audit(check_states=p["check_states"])
            head = store.audit_head()
    except TicketStoreError as e:
        module.fail_json(msg=str(e))
    if broken:
        module.fail_json(msg=f"audit chain broken at {broken['table']} id {broken['id']}: {broken['problem']}",
                         broken=broken, **head)
    module.exit_json(changed=False, **head)


if __name__ == "__main__":
    main()
