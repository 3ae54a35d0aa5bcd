#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: take or release a provider's fleet lock (one rollout per provider at a time)."""

DOCUMENTATION = r"""
---
module: fleet_lock
short_description: Take or release a provider's fleet lock in the ticket store
description:
  - One rollout per provider at a time. O(state=present) takes the provider's lock for O(holder) for O(ttl)
    seconds; taking it again as the same holder extends it. A live lock of another holder fails the task naming
    that holder, since when it is held and when it expires, with the command that releases it by force.
  - A lock past its expiry is taken over (recorded in the registry audit).
  - O(state=absent) releases the lock; only its holder may, unless O(force) (recorded with O(holder) as who forced).
  - With O(state=present) the task reports changed whenever it took or extended the lock; with O(state=absent), when
    it released one.
  - O(provider) is a provider of the registry (O(providers)); another one fails naming the registry's.
extends_documentation_fragment: [providers, store, attributes]
version_added: "0.2.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  provider:
    description: The provider whose fleet the rollout changes.
    type: str
    required: true
  holder:
    description: Who holds the lock, recognisable by a person (e.g. C(awx-job-41 (jdoe)) or C(host:pid user)).
    type: str
    required: true
  state:
    description: C(present) takes or extends the lock; C(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  ttl:
    description: Seconds the lock lives from now unless extended or released (a dead holder's lock expires).
    type: int
    default: 3600
  force:
    description: With O(state=absent), release the lock even though another holder has it (that holder is dead).
    type: bool
    default: false
  now:
    description: The current time (ISO 8601); defaults to the clock.
    type: str
notes:
  - Check mode runs the change in a transaction that is rolled back.
seealso:
  - module: ansible.legacy.trust_anchor_info
"""

EXAMPLES = r"""
- name: One rollout of RENAPO at a time
  fleet_lock:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    provider: renapo
    holder: "{{ tower_job_id | default('local') }} ({{ lookup('env', 'USER') }})"
    ttl: 3600
  register: lock

- name: The lock is ours
  ansible.builtin.assert:
    that: lock.holder == (tower_job_id | default('local')) ~ ' (' ~ lookup('env', 'USER') ~ ')'

- name: Release it when the rollout ends
  fleet_lock:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    provider: renapo
    holder: "{{ lock.holder }}"
    state: absent
"""

RETURN = r"""
acquired:
  description: True when this call took the lock (it was free or expired); false when the holder already held it.
  returned: when O(state=present)
  type: bool
  sample: true
holder:
  description: Who holds the lock now (O(state=present)), or who held the lock that was released (O(state=absent)).
  returned: always
  type: str
  sample: awx-job-41 (jdoe)
acquired_at:
  description: When the holder took the lock.
  returned: when O(state=present)
  type: str
  sample: "2026-03-01T11:00:00-06:00"
expires_at:
  description: When the lock expires unless extended or released.
  returned: when O(state=present)
  type: str
  sample: "2026-03-01T12:00:00-06:00"
released:
  description: Whether a lock was released.
  returned: when O(state=absent)
  type: bool
  sample: true
forced:
  description: Whether the released lock belonged to another holder.
  returned: when O(state=absent)
  type: bool
  sample: false
"""

import shlex

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR
from ansible.module_utils.ticket_store import FleetLocked, TicketStoreError, dsn_secrets, open_store, redact
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR


def force_command(store, provider):
    args = f"store={redact(store)} provider={provider} holder=<you> state=absent force=true"
    return f"ansible localhost -m fleet_lock -a {shlex.quote(args)}"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", required=True),
            provider=dict(type="str", required=True),
            holder=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            ttl=dict(type="int", default=3600),
            force=dict(type="bool", default=False),
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
    try:
        with open_store(p["store"], create=not module.check_mode, providers=p["providers"]) as store:
            if p["state"] == "present":
                result = store.fleet_lock(p["provider"], p["holder"], ttl=p["ttl"], now=p["now"],
                                          dry_run=module.check_mode)
                changed = True  # taken or extended: the store's record of the lock changed either way
            else:
                result = store.fleet_unlock(p["provider"], p["holder"], force=p["force"], actor=p["holder"],
                                            now=p["now"], dry_run=module.check_mode)
                changed = result["released"]
    except FleetLocked as e:
        module.fail_json(msg=f"{e}. Another rollout of {p['provider']} is running; wait for it. If you know that "
                             f"{e.holder} is dead, release its lock: {force_command(p['store'], p['provider'])}",
                         holder=e.holder, acquired_at=e.since, expires_at=e.expires)
    except (TicketStoreError, ValueError) as e:
        module.fail_json(msg=str(e))
    result.pop("provider", None)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
