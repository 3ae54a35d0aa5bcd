#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: record, approve, retire or seed a provider's trust anchor in the approved-anchor registry."""

DOCUMENTATION = r"""
---
module: trust_anchor
short_description: Keep a provider's approved trust anchors and the evidence behind each
description:
  - The approved-anchor registry in the ticket store is the only source of what the consultation hosts trust for a
    provider (DESIGN.md §2). Each entry is C(pending), C(approved) or C(retired), with who and when, and the
    evidence recorded for its SHA-256 fingerprint.
  - O(state=pending) records the anchor of O(certificate) (new entries are C(pending); recording it again changes
    nothing) and the O(evidence) given. With only O(fingerprint), the evidence is recorded for that fingerprint
    before the certificate arrives (an operator read it from the signed oficio).
  - O(state=approved) does the same, then approves the entry when its evidence satisfies O(policy), that is at least one
    piece of C(endpoint), C(operator) (O(policy.operators) DISTINCT operators) or C(authenticated_mail) evidence,
    as the policy accepts. A C(claim) (a fingerprint stated only in an unauthenticated e-mail) never counts, nor does
    a C(seed). An expired certificate is never approved.
  - With O(state=approved), when the policy accepts C(endpoint) and O(endpoint) is given, the module connects to the
    live endpoint (SNI O(server_name)) and, if the chain it presents ends in the anchor, records C(endpoint) evidence
    before deciding.
  - A refusal fails the task with the evidence there is, what is missing, and the exact commands that supply it;
    the anchor and the evidence of this call stay recorded and the refusal is in the registry audit.
  - O(state=retired) retires the entry (the next rollout removes it from every host).
  - O(state=seeded) is the explicit, one-time seeding of an empty registry from what today's hosts trust; every
    self-signed certificate held by every file of O(certificates) enters C(approved) with C(seed) evidence (an
    expired one enters C(retired)); one held by some files only is left out and named in a warning. Refused once
    the provider has any entry.
  - Every change is written in one transaction with a row in the registry audit.
extends_documentation_fragment: [providers, store, attributes.diff]
version_added: "0.2.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  provider:
    description: The provider whose registry this is, a provider of kind C(trust) in the registry (O(providers)).
    type: str
    required: true
  state:
    description:
      - C(pending) records; C(approved) records and approves; C(retired) retires; C(seeded) seeds an empty registry.
    type: str
    choices: [pending, approved, retired, seeded]
    default: pending
  certificate:
    description:
      - Controller path of the delivered certificate file (PEM or DER, one certificate or a chain). The anchor is the
        self-signed certificate, or the self-signed top of the chain.
    type: path
  fingerprint:
    description:
      - SHA-256 fingerprint of an anchor (any usual spelling, e.g. C(AA:BB:...), C(sha256:aabb...)).
      - Identifies an entry already recorded, or the fingerprint evidence is recorded for before the certificate
        arrives. With O(certificate) it must match the certificate's anchor.
    type: str
  evidence:
    description:
      - Evidence recorded with this call, by O(actor). C(endpoint) evidence is only recorded by the module's own
        connection to O(endpoint), never by hand.
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description:
          - C(operator) a named operator confirmed the fingerprint (signed oficio, telephone);
            C(authenticated_mail) the authenticated delivery's letter states it; C(claim) an unauthenticated e-mail
            states it (kept, never evidence).
        type: str
        choices: [operator, authenticated_mail, claim]
        required: true
      detail:
        description: Where the fingerprint was read or confirmed (oficio number, call, message).
        type: str
        required: true
      message_id:
        description: Message-ID of the e-mail the evidence comes from.
        type: str
  actor:
    description: Who makes the change (the operator's name), recorded with the evidence and in the audit.
    type: str
    required: true
  ticket:
    description: Ticket id or folio the anchor or the evidence belongs to.
    type: str
  policy:
    description:
      - The provider's evidence policy (inventory, C(procedure_providers.<provider>.evidence)).
      - Defaults to accepting C(endpoint), C(operator) and C(authenticated_mail) with one operator.
    type: dict
    suboptions:
      accept:
        description: Kinds of evidence that approve an anchor (any one suffices).
        type: list
        elements: str
        choices: [endpoint, operator, authenticated_mail]
      operators:
        description: How many DIFFERENT operators must record C(operator) evidence (2 is four eyes).
        type: int
        default: 1
  endpoint:
    description: The provider's live endpoint, C(host:port), asked to present the anchor (O(state=approved)).
    type: str
  server_name:
    description: The name sent as SNI to O(endpoint) (the service's virtual host).
    type: str
  endpoint_timeout:
    description: Seconds to wait for O(endpoint).
    type: float
    default: 5.0
  certificates:
    description:
      - Controller paths of today's trust bundles or anchors (PEM/DER), one per host, for O(state=seeded); a
        self-signed certificate is seeded only when every file holds it (one planted on a single host is not).
    type: list
    elements: path
  reason:
    description: Why (required to retire and to seed), recorded in the registry audit.
    type: str
  now:
    description: The current time (ISO 8601) for the records and the expiry check; defaults to the clock.
    type: str
notes:
  - Check mode runs everything in one transaction that is rolled back (the endpoint is still asked), so it reports
    exactly what would change. On a store that does not exist yet nothing is created.
  - Diff mode shows the entry's state and evidence before and after.
seealso:
  - module: ansible.legacy.trust_anchor_info
  - module: ansible.legacy.fleet_lock
"""

EXAMPLES = r"""
- name: Record the anchor RENAPO delivered, with the claim its unauthenticated letter makes
  trust_anchor:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    provider: renapo
    certificate: /var/lib/renovacion/deliveries/DGTIC-RENAPO-2026-000123/renapo_ws.pem
    state: pending
    evidence:
      - kind: claim
        detail: carta del correo <20260301.1@renapo.gob.mx>
    ticket: DGTIC-RENAPO-2026-000123
    actor: intake
  register: recorded

- name: An operator confirmed the fingerprint by telephone
  trust_anchor:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    provider: renapo
    fingerprint: "{{ recorded.anchor.fingerprint }}"
    evidence:
      - kind: operator
        detail: confirmada por teléfono con RENAPO (Lic. Pérez), folio DGTIC-RENAPO-2026-000123
    actor: jdoe

- name: Approve it on its evidence; RENAPO's endpoint is asked too
  trust_anchor:
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    provider: renapo
    fingerprint: "{{ recorded.anchor.fingerprint }}"
    state: approved
    policy:
      accept: [endpoint, operator, authenticated_mail]
      operators: 1
    endpoint: consultas.renapo.gob.mx:443
    server_name: consultas.renapo.gob.mx
    actor: jdoe
  register: approval

- name: The anchor is approved
  ansible.builtin.assert:
    that:
      - approval.approved
      - approval.anchor.evidence | selectattr('kind', 'in', ['endpoint', 'operator']) | list | length > 0
"""

RETURN = r"""
anchor:
  description:
    - The registry entry after the call (as it would be, in check mode), with its evidence, oldest first.
    - When only evidence exists for the fingerprint (no certificate recorded yet) the fields other than
      C(provider), C(fingerprint) and C(evidence) are null.
    - C(serial_hex) is the certificate's serial in hexadecimal, when a certificate is recorded.
  returned: unless O(state=seeded)
  type: dict
  sample:
    provider: renapo
    fingerprint: "3F:1A:...:9C"
    subject: CN=RENAPO CA 2026,O=RENAPO
    not_before: "2026-01-01T00:00:00+00:00"
    not_after: "2036-01-01T00:00:00+00:00"
    pem: "-----BEGIN CERTIFICATE-----\n..."
    serial_hex: 4D2F03DA70D5
    state: approved
    created_at: "2026-03-01T10:00:00-06:00"
    created_by: intake
    approved_at: "2026-03-01T11:00:00-06:00"
    approved_by: jdoe
    retired_at: null
    retired_by: null
    ticket: DGTIC-RENAPO-2026-000123
    evidence:
      - {kind: claim, detail: carta del correo, actor: intake, at: "2026-03-01T10:00:00-06:00",
         ticket: DGTIC-RENAPO-2026-000123, message_id: "<20260301.1@renapo.gob.mx>"}
      - {kind: endpoint, detail: "consultas.renapo.gob.mx:443 (SNI consultas.renapo.gob.mx) presented ...",
         actor: jdoe, at: "2026-03-01T11:00:00-06:00", ticket: null, message_id: null}
anchors:
  description: The entries seeded (O(state=seeded)).
  returned: when O(state=seeded)
  type: list
  elements: dict
  sample: [{provider: renapo, fingerprint: "3F:1A:...:9C", state: approved, subject: CN=RENAPO CA 2024}]
approved:
  description: Whether the entry is approved after the call.
  returned: always
  type: bool
  sample: true
fingerprint:
  description: The anchor's SHA-256 fingerprint, upper-case colon hex.
  returned: unless O(state=seeded)
  type: str
  sample: "3F:1A:...:9C"
endpoint_check:
  description: What the live endpoint presented, when it was asked.
  returned: when O(endpoint) was asked
  type: dict
  sample: {endpoint: "consultas.renapo.gob.mx:443", server_name: consultas.renapo.gob.mx, confirmed: true,
           presented: [CN=consultas.renapo.gob.mx, CN=RENAPO CA 2026], error: null}
"""

from ansible.module_utils.anchor_registry import PolicyError, canonical_fingerprint, commands, normalise_policy
from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.cert_validation import (
    endpoint_confirms,
    fetch_endpoint_chain,
    issued_by,
    name_of,
    order_chain,
    sha256_fp,
)
from ansible.module_utils.providers import ProviderError, registry
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR
from ansible.module_utils.ticket_store import (
    AnchorNotApproved,
    AnchorNotFound,
    TicketStoreError,
    dsn_secrets,
    open_store,
)
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR, LoadError, parse_certificates, read_bytes


class Refused(Exception):
    """A defect of the task's input, reported as the task's failure."""


def read_certificates(path):
    try:
        return parse_certificates(read_bytes(path, "certificate"), path)
    except LoadError as e:
        raise Refused(e.message) from None


def anchor_of(path):
    """(anchor, every certificate of the file): the self-signed certificate, or the self-signed top of a chain."""
    certs = read_certificates(path)
    if not certs:
        raise Refused(f"{path}: no certificate in the file")
    roots = [c for c in certs if issued_by(c, c)]
    if len(roots) > 1:
        raise Refused(f"{path} holds {len(roots)} self-signed certificates ("
                      + ", ".join(f"'{name_of(c)}'" for c in roots) + "): give one anchor or one chain")
    chain, _leaves, _unused = order_chain(certs)
    top = chain[-1]
    if not issued_by(top, top):
        raise Refused(f"{path}: incomplete chain: '{name_of(top)}' is issued by '{top.issuer.rfc4514_string()}', "
                      "which the file does not contain; the anchor is the self-signed top of the chain")
    return top, certs


def seed_anchors(paths):
    """(self-signed certificates held by EVERY file, notes on the others) for seeding: an anchor planted on one host
    is not in every host's bundle, so it is never seeded (it shows as drift instead)."""
    per_file, skipped = [], set()
    for path in paths:
        roots = {}
        for cert in read_certificates(path):
            if issued_by(cert, cert):
                roots[sha256_fp(cert)] = cert
            else:
                skipped.add(f"{name_of(cert)} (not self-signed, so not an anchor)")
        per_file.append(roots)
    common = set.intersection(*(set(r) for r in per_file)) if per_file else set()
    for roots in per_file:
        skipped.update(f"{name_of(c)} (held by some of the files only: review it, it may be planted)"
                       for fp, c in roots.items() if fp not in common)
    anchors = [c for fp, c in per_file[0].items() if fp in common] if per_file else []
    if not anchors:
        raise Refused("no self-signed certificate is held by every one of " + ", ".join(paths) + ": nothing to seed")
    return anchors, sorted(skipped)


def check_endpoint(endpoint, server_name, timeout, anchor, delivered):
    """Ask the live endpoint for its chain; confirmed when it ends in the anchor."""
    result = {"endpoint": endpoint, "server_name": server_name, "confirmed": False, "presented": [], "error": None}
    try:
        presented = fetch_endpoint_chain(endpoint, timeout, server_name=server_name)  # the one fetch, with SNI
    except (OSError, ValueError) as e:
        result["error"] = f"{endpoint} unreachable: {e}"
        return result
    result["presented"] = [name_of(c) for c in presented]
    result["confirmed"] = endpoint_confirms(presented, anchor, delivered)
    return result


def endpoint_detail(check):
    return (f"{check['endpoint']} (SNI {check['server_name'] or 'none'}) presented a chain ending in this anchor: "
            + " <- ".join(check["presented"]))


def summary(anchor):
    return {"fingerprint": anchor["fingerprint"], "state": anchor["state"],
            "evidence": [f"{e['kind']} by {e['actor']}: {e['detail']}" for e in anchor["evidence"]]}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", required=True),
            provider=dict(type="str", required=True),
            state=dict(type="str", default="pending", choices=["pending", "approved", "retired", "seeded"]),
            certificate=dict(type="path"),
            fingerprint=dict(type="str"),
            evidence=dict(type="list", elements="dict", default=[], options=dict(
                kind=dict(type="str", required=True, choices=["operator", "authenticated_mail", "claim"]),
                detail=dict(type="str", required=True),
                message_id=dict(type="str"),
            )),
            actor=dict(type="str", required=True),
            ticket=dict(type="str"),
            policy=dict(type="dict", options=dict(
                accept=dict(type="list", elements="str", choices=["endpoint", "operator", "authenticated_mail"]),
                operators=dict(type="int", default=1),
            )),
            endpoint=dict(type="str"),
            server_name=dict(type="str"),
            endpoint_timeout=dict(type="float", default=5.0),
            certificates=dict(type="list", elements="path"),
            reason=dict(type="str"),
            now=dict(type="str"),
            providers=dict(type="dict", required=True),
        ),
        mutually_exclusive=[("certificate", "certificates")],
        required_if=[("state", "seeded", ("certificates", "reason")), ("state", "retired", ("reason",))],
        supports_check_mode=True,
    )
    for lib, error in (("cryptography", CRYPTOGRAPHY_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    module.no_log_values.update(dsn_secrets(p["store"]))  # a password inside the DSN never reaches the output
    try:
        known = registry(p["providers"])
    except ProviderError as e:
        module.fail_json(msg=f"provider registry (providers): {e}")
    trusted = [t.name for t in known.of_kind("trust")]
    if p["provider"] not in trusted:
        module.fail_json(msg=f"provider {p['provider']!r} has no trust anchors: the trust providers of the registry "
                             f"(procedure_providers) are {', '.join(trusted) or 'none'}")
    try:
        if p["state"] == "seeded":
            seed(module, p)
        else:
            keep(module, p)
    except Refused as e:
        module.fail_json(msg=str(e))
    except (TicketStoreError, PolicyError, ValueError) as e:
        module.fail_json(msg=str(e))


def seed(module, p):
    anchors, skipped = seed_anchors(p["certificates"])
    with open_store(p["store"], create=not module.check_mode, providers=p["providers"]) as store, \
            store.transaction(dry_run=module.check_mode):
        seeded = store.anchor_seed(p["provider"], anchors, actor=p["actor"], reason=p["reason"], now=p["now"])
    for anchor in seeded:
        anchor.pop("changed", None)
    if skipped:
        module.warn("not seeded: " + "; ".join(skipped))
    module.exit_json(changed=True, anchors=seeded, approved=any(a["state"] == "approved" for a in seeded))


def keep(module, p):
    provider, state, actor, now = p["provider"], p["state"], p["actor"], p["now"]
    if not (p["certificate"] or p["fingerprint"]):
        raise Refused(f"state={state} needs the anchor: give certificate (the delivered file) or fingerprint")
    cert, delivered = anchor_of(p["certificate"]) if p["certificate"] else (None, [])
    fingerprint = canonical_fingerprint(p["fingerprint"]) if p["fingerprint"] else None
    if cert is not None:
        own = canonical_fingerprint(sha256_fp(cert))
        if fingerprint and fingerprint != own:
            raise Refused(f"the anchor of {p['certificate']} ('{name_of(cert)}') has SHA-256 {own}, not the given "
                          f"fingerprint {fingerprint}")
        fingerprint = own
    policy = normalise_policy(p["policy"]) if state == "approved" else None
    evidence = [{k: v for k, v in item.items() if v is not None} for item in p["evidence"]]
    with open_store(p["store"], create=not module.check_mode, providers=p["providers"]) as store:
        try:
            before = store.anchor(provider, fingerprint)
        except TicketStoreError:  # not recorded yet (or a provider the store refuses, reported below)
            before = None
        check = None
        if state == "approved" and p["endpoint"]:
            if "endpoint" not in policy["accept"]:
                module.warn(f"endpoint {p['endpoint']} not asked: the {provider} policy does not accept endpoint "
                            "evidence")
            elif cert is not None or before is not None:
                anchor_cert = cert or parse_certificates(before["pem"].encode(), "registry")[0]
                check = check_endpoint(p["endpoint"], p["server_name"], p["endpoint_timeout"], anchor_cert,
                                       delivered or [anchor_cert])
        refusal, not_found, changed = None, None, False
        with store.transaction(dry_run=module.check_mode):
            if cert is not None:
                changed |= store.anchor_record(provider, cert, actor=actor, ticket=p["ticket"], evidence=evidence,
                                               now=now)["changed"]
            else:
                for item in evidence:
                    changed |= store.anchor_add_evidence(provider, fingerprint, item["kind"], item["detail"],
                                                         actor=actor, ticket=p["ticket"],
                                                         message_id=item.get("message_id"), now=now)["changed"]
            if check and check["confirmed"]:
                changed |= store.anchor_add_evidence(provider, fingerprint, "endpoint", endpoint_detail(check),
                                                     actor=actor, ticket=p["ticket"], now=now)["changed"]
            if state == "approved":
                try:
                    changed |= store.anchor_approve(provider, fingerprint, actor=actor, policy=policy,
                                                    now=now)["changed"]
                except AnchorNotApproved as e:
                    refusal = e  # reported after the commit: this call's evidence and the refusal stay recorded
                except AnchorNotFound as e:
                    not_found = f"{e}; or give certificate= with the delivered file"
            elif state == "retired":
                try:
                    changed |= store.anchor_retire(provider, fingerprint, actor=actor, reason=p["reason"],
                                                   now=now)["changed"]
                except AnchorNotFound as e:
                    not_found = str(e)
            try:
                anchor = store.anchor(provider, fingerprint)
            except AnchorNotFound:
                anchor = {"provider": provider, "fingerprint": fingerprint, "state": None,
                          "evidence": store.anchor_evidence(provider, fingerprint)}
                for item in anchor["evidence"]:
                    item.pop("provider", None)
                    item.pop("fingerprint", None)
    if anchor.get("pem"):  # the serial as people read it in a notice (the store keeps the certificate itself)
        anchor["serial_hex"] = format(parse_certificates(anchor["pem"].encode(), "registry")[0].serial_number, "X")
    output = dict(changed=changed, anchor=anchor, fingerprint=fingerprint, approved=anchor["state"] == "approved")
    if check is not None:
        output["endpoint_check"] = check
    if module._diff:
        output["diff"] = dict(before=summary(before) if before else {}, after=summary(anchor))
    if not_found is not None:
        module.fail_json(msg=not_found, **output)
    if refusal is not None:
        module.fail_json(msg=refusal_text(refusal, check, p), **output)
    module.exit_json(**output)


def refusal_text(refusal, check, p):
    lines = [str(refusal)]
    if check is not None and check["error"]:
        lines.append(f"Endpoint asked: {check['error']}")
    elif check is not None and not check["confirmed"]:
        lines.append(f"Endpoint asked: {check['endpoint']} (SNI {check['server_name'] or 'none'}) presents "
                     + " <- ".join(check["presented"]) + ", which does not end in this anchor")
    todo = commands(p["provider"], refusal.fingerprint, refusal.missing, certificate=p["certificate"])
    if todo and not refusal.evaluation.get("expired"):
        lines.append("To supply it (any one):")
        lines += [f"  {command}" for command in todo]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
