#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: days left of the certificates a host trusts and presents, and of what endpoints present live."""

DOCUMENTATION = r"""
---
module: cert_expiry_info
short_description: Days left of certificate files and of the certificates live TLS endpoints present
description:
  - On a managed host, reads each file of O(files) (PEM bundle or DER certificate; never a key) and returns every
    certificate in it with its subject CN, serial, SHA-256 fingerprint, C(not_after), days left and the alert
    threshold it has crossed. Standard library only, so it runs under the host's own Python.
  - On the controller, O(endpoints) opens a TLS handshake with each C(host:port) and returns what it presents now
    (leaf first), without verifying it; O(scanned) merges the hosts' results so one task returns the whole scan.
  - Thresholds (O(thresholds), days) decide when a certificate alerts; the most urgent threshold reached is the
    one crossed (C(0) once expired). A certificate approaching its end is one event, C(expiry:<service>:<sha256>)
    (RV(alerts[].event), never per host), that a playbook uses as its ticket's event key, so one ticket per
    certificate lists every host that holds it. Each crossing has a C(key),
    C(expiry:<service>:<sha256>:<threshold>), under which its one notice is recorded on that ticket.
  - A certificate whose file (or endpoint) also holds its successor (same subject CN, expiring later, no threshold
    crossed) is renewed there - status C(renewed), C(RENEWED) in the table - and never alerts. With
    O(open_tickets), RV(resolved) lists the expiry tickets to close - the certificate is no longer held without
    its successor anywhere and every host of the ticket was scanned, or O(retired) says the registry retired it -
    each with its reason in Spanish.
  - With O(approved) (the fingerprints the approved-anchor registry approves, per provider), compares what each
    trust file (role C(trusts)) holds with the registry and returns the trust drift in RV(drift) - anchors held
    that the registry does not approve (a rogue anchor planted on a host) and approved anchors the file lacks.
    A provider absent from O(approved) has no registry entry at all; it is reported once in RV(registry_empty)
    (seed it with C(playbooks/anchor.yml -e op=seed)) instead of flagging every anchor. Drift is reported in
    the table, never as an alert.
  - Only reads. An unreadable file or a failed handshake is reported in RV(problems), never fails the task.
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
extends_documentation_fragment: [attributes.info]
options:
  files:
    description: Certificate files on the host (trust bundles, presented certificates).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path of a PEM bundle or a DER certificate.
        type: path
        required: true
      service:
        description: Provider the file serves, a name of the provider registry (C(procedure_providers)).
        type: str
        required: true
      role:
        description: Whether the host trusts the certificates (anchors) or presents them (its identity).
        type: str
        choices: [trusts, presents]
        default: trusts
  endpoints:
    description: TLS endpoints whose presented certificates are read now (run these on the controller).
    type: list
    elements: dict
    default: []
    suboptions:
      endpoint:
        description: C(host:port) (C([v6]:port) for IPv6).
        type: str
        required: true
      service:
        description: Provider behind the endpoint.
        type: str
        required: true
      server_name:
        description: SNI name to send, when the endpoint serves several names.
        type: str
  host:
    description: Name the rows of O(files) carry (a playbook passes C(inventory_hostname)); defaults to the node name.
    type: str
  scanned:
    description: Rows already scanned elsewhere (the hosts' RV(certificates)), merged into the alerts and the table.
    type: list
    elements: dict
    default: []
  scanned_problems:
    description: Problems reported elsewhere (the hosts' RV(problems)), shown in the table.
    type: list
    elements: dict
    default: []
  expected_hosts:
    description: Hosts that should appear in O(scanned); one that does not is reported as not scanned.
    type: list
    elements: str
    default: []
  approved:
    description:
      - "What the approved-anchor registry approves, per provider: C({provider: [fingerprint, ...]}). Entries may be
        SHA-256 fingerprints in any usual spelling or PEM certificates (C(trust_anchor_info)'s C(approved_pems))."
      - A provider with registry entries but none approved maps to an empty list (everything held is drift); a
        provider with no entry at all is left out.
      - When omitted, drift is not checked.
    type: dict
  open_tickets:
    description:
      - Open expiry tickets (as C(service_ticket_info) returns them; C(id), C(event_key) and C(hosts) are read),
        checked for renewal; see RV(resolved). Tickets without an expiry event key are ignored.
    type: list
    elements: dict
    default: []
  retired:
    description:
      - "Fingerprints the approved-anchor registry retired, per provider: C({provider: [fingerprint, ...]}). An open
        expiry ticket of a retired certificate is resolved."
    type: dict
    default: {}
  thresholds:
    description: Alert thresholds in days left.
    type: list
    elements: int
    default: [30, 15, 7, 2]
  timeout:
    description: Seconds to wait for each TLS endpoint.
    type: float
    default: 10
  now:
    description: The moment days are counted from (ISO 8601, UTC when no offset); defaults to the clock.
    type: str
notes:
  - Supports check mode; it only reads, so it reports the same in check mode.
seealso:
  - module: ansible.legacy.service_ticket
  - module: ansible.legacy.service_notify
  - module: ansible.legacy.trust_anchor_info
"""

EXAMPLES = r"""
- name: Read what a consultation host trusts and presents
  cert_expiry_info:
    host: "{{ inventory_hostname }}"
    files:
      - {path: /etc/consulta/trust/renapo-bundle.pem, service: renapo, role: trusts}
      - {path: /etc/consulta/identity/sat/cert.pem, service: sat, role: presents}
  register: host_scan

- name: Read what RENAPO presents now and merge the hosts' rows
  cert_expiry_info:
    endpoints:
      - {endpoint: "consultas.curp.gob.mx:443", service: renapo, server_name: consultas.curp.gob.mx}
    scanned: "{{ groups['consulta_hosts'] | map('extract', hostvars, ['host_scan', 'certificates']) | flatten }}"
    thresholds: [30, 15, 7, 2]
  delegate_to: localhost
  run_once: true
  register: scan

- name: Nothing expires within a month
  ansible.builtin.assert:
    that: scan.alerts | length == 0
    fail_msg: "{{ scan.table | join('\n') }}"

- name: Read the approved-anchor registry for RENAPO
  trust_anchor_info:
    store: /var/lib/consulta/tickets.db
    provider: renapo
  register: renapo_registry

- name: Compare what the hosts trust with the registry
  cert_expiry_info:
    scanned: "{{ groups['consulta_hosts'] | map('extract', hostvars, ['host_scan', 'certificates']) | flatten }}"
    approved:
      renapo: "{{ renapo_registry.approved_pems }}"
  register: drift_scan

- name: Every host trusts exactly what the registry approves
  ansible.builtin.assert:
    that: drift_scan.drift | length == 0
    fail_msg: "{{ drift_scan.table | select('match', '^DRIFT ') | join('\n') }}"
"""

RETURN = r"""
certificates:
  description: One row per certificate, most urgent first (merged rows from O(scanned) included).
  returned: always
  type: list
  elements: dict
  sample:
    - host: consulta-01
      service: renapo
      role: trusts
      source: /etc/consulta/trust/renapo-bundle.pem
      position: 1
      subject_cn: RENAPO Lab Root G1
      issuer_cn: RENAPO Lab Root G1
      serial_number: 4F1A0C2B9D
      sha256: "AB:CD:...:EF"
      not_after: "2026-03-01T12:00:00Z"
      days_left: 10
      threshold: 15
      status: expiring
      renewed_by: null
problems:
  description: Files that could not be read, handshakes that failed, expected hosts that were not scanned.
  returned: always
  type: list
  elements: dict
  sample: [{host: consulta-02, source: /etc/consulta/identity/sat/cert.pem, problem: file not found}]
alerts:
  description: One entry per crossing (service, certificate, threshold), with every host and endpoint holding it.
  returned: always
  type: list
  elements: dict
  sample:
    - key: "expiry:renapo:abcd...ef:15"
      event: "expiry:renapo:abcd...ef"
      service: renapo
      threshold: 15
      status: expiring
      days_left: 10
      not_after: "2026-03-01T12:00:00Z"
      serial_number: 4F1A0C2B9D
      sha256: "AB:CD:...:EF"
      subject_cn: RENAPO Lab Root G1
      hosts: [consulta-01]
      endpoints: []
      sources: ["consulta-01:/etc/consulta/trust/renapo-bundle.pem"]
  contains:
    key:
      description: The crossing's own key (event and threshold).
      type: str
      returned: always
    event:
      description: The certificate's expiry event, the same for every threshold; a playbook's ticket event key.
      type: str
      returned: always
drift:
  description:
    - Trust drift against O(approved), per host, provider and trust file. C(kind) is C(held_not_approved) (the file
      holds an anchor the registry does not approve) or C(approved_missing) (an approved anchor the file lacks;
      C(subject) and C(not_after) are then null). Empty when O(approved) is not given.
  returned: always
  type: list
  elements: dict
  sample:
    - kind: held_not_approved
      host: consulta-02
      service: renapo
      path: /etc/consulta/trust/renapo-bundle.pem
      fingerprint: "AB:CD:...:EF"
      subject: Rogue Root CA
      not_after: "2036-03-01T12:00:00Z"
registry_empty:
  description: Providers whose trust files were scanned but that have no registry entry at all (never seeded).
  returned: always
  type: list
  elements: dict
  sample:
    - service: sat
      hosts: [consulta-01, consulta-02]
      message: "registry empty for sat: seed it (playbooks/anchor.yml -e op=seed -e provider=sat)"
table:
  description:
    - The scan as fixed-width text lines, most urgent first; then, when O(approved) is given, the drift section (a
      C(TRUST DRIFT) heading, one C(DRIFT) line per host and anchor, one C(REGISTRY) line per empty registry);
      problems last.
  returned: always
  type: list
  elements: str
  sample: ["HOST         SERVICE  ROLE    DAYS  ALERT  NOT AFTER ...", "consulta-01  renapo   trusts  10    <=15d ..."]
resolved:
  description: Open expiry tickets (O(open_tickets)) the scan found renewed everywhere or retired, to be closed.
  returned: always
  type: list
  elements: dict
  sample:
    - ticket_id: 7
      event_key: "expiry:renapo:abcd...ef"
      reason: "certificado AB:CD:EF:01 por vencer renovado en todos los servidores: renovado en consulta-01 ..."
counts:
  description: Certificates, alerts, expiring, expired and renewed rows, problems, drift entries, resolved tickets.
  returned: always
  type: dict
  sample: {certificates: 12, alerts: 1, expiring: 1, expired: 0, renewed: 0, problems: 0, drift: 1, resolved: 0}
thresholds:
  description: The thresholds applied, largest first.
  returned: always
  type: list
  elements: int
  sample: [30, 15, 7, 2]
"""

import socket

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.expiry import (
    approved_fingerprints,
    parse_time,
    scan_endpoints,
    scan_files,
    summarize,
    thresholds,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                service=dict(type="str", required=True),
                role=dict(type="str", choices=["trusts", "presents"], default="trusts"))),
            endpoints=dict(type="list", elements="dict", default=[], options=dict(
                endpoint=dict(type="str", required=True),
                service=dict(type="str", required=True),
                server_name=dict(type="str"))),
            host=dict(type="str"),
            scanned=dict(type="list", elements="dict", default=[]),
            scanned_problems=dict(type="list", elements="dict", default=[]),
            expected_hosts=dict(type="list", elements="str", default=[]),
            approved=dict(type="dict"),
            open_tickets=dict(type="list", elements="dict", default=[]),
            retired=dict(type="dict", default={}),
            thresholds=dict(type="list", elements="int", default=[30, 15, 7, 2]),
            timeout=dict(type="float", default=10.0),
            now=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        limits = thresholds(p["thresholds"])
        now = parse_time(p["now"])
    except ValueError as e:
        module.fail_json(msg="invalid thresholds or now: %s" % e)
    rows, problems = scan_files(p["files"], p["host"] or socket.gethostname(), now, limits)
    live_rows, live_problems = scan_endpoints(p["endpoints"], now, limits, p["timeout"])
    rows = list(p["scanned"]) + rows + live_rows
    problems = list(p["scanned_problems"]) + problems + live_problems
    try:
        approved_fingerprints(p["approved"] or {})
    except ValueError as e:
        module.fail_json(msg="invalid approved anchors: %s" % e)
    try:
        approved_fingerprints(p["retired"])
    except ValueError as e:
        module.fail_json(msg="invalid retired anchors: %s" % e.args[0].replace("approved[", "retired["))
    try:
        summary = summarize(rows, problems, p["expected_hosts"], p["approved"], p["open_tickets"], p["retired"])
    except (KeyError, TypeError, ValueError) as e:
        module.fail_json(msg="a scanned row is not a cert_expiry_info row: %s %s" % (type(e).__name__, e))
    rows.sort(key=lambda r: (r["days_left"], r["host"], r["source"], r["position"]))
    module.exit_json(changed=False, certificates=rows, thresholds=limits, **summary)


if __name__ == "__main__":
    main()
