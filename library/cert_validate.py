#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module cert_validate: refuse a bad certificate delivery before any host is touched."""

DOCUMENTATION = r"""
---
module: cert_validate
short_description: Validate a certificate delivery on the controller and stage normalised artefacts
description:
  - Parses a delivered certificate (PEM, DER or PKCS#7, chain in any order), its private key (PEM or DER,
    PKCS#1 or PKCS#8, encrypted or not) or a PKCS#12 file (modern or legacy RC2-40/3DES) with C(cryptography).
  - "Checks everything at once and fails listing every defect, one line each, as C(CODE: message). Codes are
    C(UNREADABLE), C(NO_CERTIFICATE), C(MULTIPLE_LEAVES), C(WRONG_PASSWORD), C(KEY_MISMATCH), C(NOT_YET_VALID),
    C(EXPIRED), C(EXPIRES_SOON), C(UNTRUSTED_CHAIN), C(INCOMPLETE_CHAIN), C(WEAK_KEY), C(WEAK_SIGNATURE),
    C(MISSING_KEY_USAGE), C(WRONG_SUBJECT), C(WRONG_ISSUER), C(MISSING_KEY), C(UNAPPROVED_ANCHOR),
    C(FINGERPRINT_MISMATCH), C(BAD_SIGNATURE)."
  - "A C(trust) delivery is trusted only through the approved-anchor registry: its anchor (the self-signed top of
    the delivered chain, or the approved anchor that signed the top) must be one of O(approved_anchors), else
    C(UNAPPROVED_ANCHOR). Without O(approved_anchors) nothing is trusted (C(UNAPPROVED_ANCHOR) too)."
  - "The staged trust bundle and Java truststore hold exactly the approved anchors that have not expired, in the
    order given, never what the hosts hold. Certificates in O(current) that the registry does not approve are
    returned as RV(drift): the rollout removes them."
  - "A delivered certificate whose issuer is neither in the delivery nor among the approved anchors (or
    O(trusted_roots) for an identity) is C(INCOMPLETE_CHAIN), naming the missing issuer; one whose signature does
    not verify under a certificate bearing its issuer's name is C(BAD_SIGNATURE), naming both."
  - When the delivery is already deployed (O(current) holds exactly the bundle, or the same identity leaf), the module
    reports C(changed=false) and says so.
  - No passphrase and no key byte ever appears in the result.
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
extends_documentation_fragment: [attributes.diff]
options:
  kind:
    description:
      - C(trust) for a peer's server certificate or chain to be trusted, C(identity) for a certificate with its key.
    type: str
    required: true
    choices: [trust, identity]
  certificate:
    description: Path of the certificate file; PEM, DER or PKCS#7; the file may hold a chain in any order.
    type: path
  private_key:
    description: Path of the private key; PEM or DER, PKCS#1 or PKCS#8, encrypted or not (SAT's C(.key)).
    type: path
  private_key_passphrase:
    description: Passphrase of O(private_key).
    type: str
  pkcs12:
    description: Path of a C(.pfx/.p12) file, modern or legacy (RC2-40/3DES).
    type: path
  pkcs12_passphrase:
    description: Passphrase of O(pkcs12).
    type: str
  trusted_roots:
    description:
      - CA certificate files the identity chain must lead to.
      - Ignored (with a warning) for C(trust) - only O(approved_anchors) are trusted there.
    type: list
    elements: path
    default: []
  expected_fingerprint:
    description:
      - SHA-256 fingerprint the provider's letter states (of the anchor or of a delivered certificate).
      - A consistency check only - a mismatch is C(FINGERPRINT_MISMATCH), a match never makes an anchor trusted
        (a forged letter states the forger's fingerprint); trust comes from O(approved_anchors).
      - C(AA:BB:..), C(aabb..), with or without colons, any case; a C(SHA256 Fingerprint=) prefix is accepted.
    type: str
  approved_anchors:
    description:
      - PEM strings of the anchors the trust-anchor registry approves for the provider (C(trust_anchor_info)'s
        C(approved_pems)). The only source of trust for C(trust) and the exact content of the staged bundle
        (expired ones dropped).
      - Not given - nothing is trusted (C(UNAPPROVED_ANCHOR)). Ignored for C(identity).
    type: list
    elements: str
  provider:
    description: Provider the delivery comes from (C(renapo), C(sat)); named in the messages.
    type: str
    default: the provider
  min_days_valid:
    description: Defect C(EXPIRES_SOON) when a certificate of the chain expires in fewer days.
    type: int
    default: 30
  min_rsa_bits:
    description: Smallest accepted RSA (and DSA) key size.
    type: int
    default: 2048
  min_ec_bits:
    description: Smallest accepted elliptic-curve key size.
    type: int
    default: 256
  expected_subject:
    description:
      - The leaf's whole subject as an RFC 4514 name (C(CN=renapo.lab,O=RENAPO,C=MX)), or a list of allowed names.
      - "Matched whole, never as a substring: the same RDNs in the same order; inside a multi-valued RDN the
        attribute order does not matter; values compare case-insensitively, runs of spaces as one. C(CN=renapo.lab CA)
        does not match C(CN=renapo.lab)."
    type: raw
  expected_issuer:
    description: The leaf's whole issuer name (RFC 4514), or a list of allowed names; matched as O(expected_subject).
    type: raw
  current:
    description:
      - Path of what is deployed now (certificate, or the hosts' trust bundles); missing means nothing deployed yet.
      - For C(trust) it only reports RV(drift) and RV(already_deployed); it never adds to what is trusted.
    type: path
  staging_dir:
    description:
      - Where normalised artefacts are written atomically when the delivery is valid (nothing in check mode).
      - identity - C(cert.pem), C(chain.pem), C(fullchain.pem), C(key.pem) (PKCS#8, unencrypted, mode 0600).
      - trust - C(anchor.pem), C(bundle.pem) (the approved anchors not expired), C(truststore.p12) (the same).
    type: path
  truststore_passphrase:
    description: Password of the staged Java PKCS#12 truststore.
    type: str
    default: changeit
  current_truststores:
    description:
      - Java truststores the hosts hold now (controller paths, e.g. fetched by the rollout). One that already holds
        exactly the staged bundle is staged byte for byte, so hosts are not rewritten for a new salt alone.
    type: list
    elements: path
    default: []
  staged_content:
    description:
      - Also return each staged artefact's bytes, base64, as RV(staged_b64), so the caller reads nothing back.
      - They include an identity's unencrypted private key; run the task with C(no_log).
    type: bool
    default: false
notes:
  - Supports check mode (nothing is written) and diff mode (fingerprints before and after, never key bytes).
requirements:
  - cryptography >= 45
"""

EXAMPLES = r"""
- name: Read the anchors the registry approves for RENAPO
  trust_anchor_info:
    store: /var/lib/renovacion/tickets.db
    provider: renapo
  register: renapo_registry

- name: Validate RENAPO's renewed certificate against the registry (the letter's fingerprint only cross-checked)
  cert_validate:
    kind: trust
    provider: renapo
    certificate: /srv/intake/renapo-2026.cer
    approved_anchors: "{{ renapo_registry.approved_pems }}"
    expected_fingerprint: "3F:2A:...:9C"
    expected_subject: "CN=renapo.gob.mx,O=Registro Nacional de Poblacion,C=MX"
    current: /srv/deployed/renapo-bundle.pem
    staging_dir: /srv/staging/renapo
  register: renapo_delivery

- name: Show what the rollout will install, and what it will remove from the hosts
  ansible.builtin.assert:
    that: renapo_delivery.anchor.fingerprint_sha256 in renapo_delivery.bundle_fingerprints
    success_msg: "{{ renapo_delivery.msg }}; drift {{ renapo_delivery.drift | map(attribute='subject') | list }}"

- name: Validate SAT's e.firma (.cer + encrypted PKCS#8 .key)
  cert_validate:
    kind: identity
    certificate: /srv/intake/sat.cer
    private_key: /srv/intake/sat.key
    private_key_passphrase: "{{ vault_sat_key_passphrase }}"
    trusted_roots: [/etc/dgtic/sat-ca.pem]
    expected_subject: "CN=SECRETARIA DE AGRICULTURA,O=SAT"
    staging_dir: /srv/staging/sat
  register: sat_delivery

- name: Refuse a delivery that expires within the month
  ansible.builtin.assert:
    that: sat_delivery.days_left >= 30
"""

RETURN = r"""
msg:
  description: One line saying what was validated, or that it is already deployed.
  returned: success
  type: str
  sample: "certificate 'CN=consulta.example' serial 0A1B is valid, expires 2027-01-01 (365 days left)"
already_deployed:
  description: The delivery is already deployed (identity - same leaf in O(current); trust - anchor in the bundle).
  returned: always
  type: bool
  sample: false
serial_number:
  description: Serial number of the leaf.
  returned: when a certificate was read
  type: int
  sample: 57005
serial_hex:
  description: Serial number in upper-case hex as C(openssl x509 -serial) prints it.
  returned: when a certificate was read
  type: str
  sample: "DEAD"
not_before:
  description: Start of validity of the leaf, ASN.1 C(YYYYMMDDHHMMSSZ).
  returned: when a certificate was read
  type: str
  sample: "20260101000000Z"
not_after:
  description: End of validity of the leaf, ASN.1 C(YYYYMMDDHHMMSSZ).
  returned: when a certificate was read
  type: str
  sample: "20270101000000Z"
expired:
  description: The leaf is expired.
  returned: when a certificate was read
  type: bool
  sample: false
days_left:
  description: Whole days until the leaf expires (negative when expired).
  returned: when a certificate was read
  type: int
  sample: 364
subject:
  description: Subject of the leaf (RFC 4514).
  returned: when a certificate was read
  type: str
  sample: "CN=consulta.example,O=RENAPO"
issuer:
  description: Issuer of the leaf (RFC 4514).
  returned: when a certificate was read
  type: str
  sample: "CN=RENAPO CA"
subject_alt_name:
  description: Subject alternative names of the leaf.
  returned: when a certificate was read
  type: list
  elements: str
  sample: ["DNS:consulta.example"]
key_usage:
  description: Key usages of the leaf.
  returned: when a certificate was read
  type: list
  elements: str
  sample: ["Digital Signature", "Key Encipherment"]
extended_key_usage:
  description: Extended key usages of the leaf.
  returned: when a certificate was read
  type: list
  elements: str
  sample: ["TLS Web Server Authentication"]
public_key_type:
  description: Leaf key algorithm.
  returned: when a certificate was read
  type: str
  sample: RSA
public_key_size:
  description: Leaf key size in bits.
  returned: when a certificate was read
  type: int
  sample: 2048
public_key_fingerprints:
  description: Fingerprints of the leaf's public key (SubjectPublicKeyInfo DER).
  returned: when a certificate was read
  type: dict
  sample: {"sha256": "d4:b3:..."}
fingerprints:
  description: Fingerprints of the leaf certificate (DER).
  returned: when a certificate was read
  type: dict
  sample: {"sha1": "a1:...", "sha256": "3f:2a:..."}
signature_algorithm:
  description: Signature algorithm of the leaf.
  returned: when a certificate was read
  type: str
  sample: sha256WithRSAEncryption
chain:
  description: Subjects of the delivered chain, leaf first.
  returned: when a certificate was read
  type: list
  elements: str
  sample: ["CN=consulta.example", "CN=RENAPO Intermediate"]
anchor:
  description: The delivery's trust anchor (subject, fingerprint_sha256, not_after, approved, confirmed_by).
  returned: kind=trust and the chain leads to an anchor
  type: dict
  sample: {"subject": "CN=RENAPO Root G2", "fingerprint_sha256": "3f:2a:...", "not_after": "20360101000000Z",
           "approved": true, "confirmed_by": "approved in the trust-anchor registry of renapo"}
bundle_fingerprints:
  description: SHA-256 fingerprints of what the staged bundle holds (the approved anchors not expired, in order).
  returned: kind=trust and a certificate was read
  type: list
  elements: str
  sample: ["11:22:...", "3f:2a:..."]
drift:
  description: Certificates in O(current) that the registry does not approve (the rollout removes them).
  returned: kind=trust and a certificate was read
  type: list
  elements: dict
  sample: [{"fingerprint": "9c:0d:...", "subject": "CN=Rogue CA", "not_after": "20300101000000Z"}]
staged:
  description: Paths of the staged artefacts (cert, chain, fullchain, key | anchor, bundle, truststore).
  returned: when staging_dir is set and there is no defect
  type: dict
  sample: {"anchor": "/srv/staging/anchor.pem", "bundle": "/srv/staging/bundle.pem",
           "truststore": "/srv/staging/truststore.p12"}
staged_b64:
  description: The staged artefacts' bytes, base64, by the same names as RV(staged) (an identity's key among them).
  returned: when staged_content is true, staging_dir is set and there is no defect
  type: dict
  sample: {"anchor": "LS0tLS1CRUdJTi...", "bundle": "LS0tLS1CRUdJTi...", "truststore": "MIIG..."}
defects:
  description: Every defect found, each with a stable code.
  returned: always
  type: list
  elements: dict
  sample: [{"code": "EXPIRED", "message": "'CN=consulta.example' expired on 2025-01-01 00:00 UTC"}]
step:
  description: C(input) when the task is refused before reading anything (a key or passphrase under ANSIBLE_DEBUG).
  returned: failed before validation
  type: str
  sample: input
"""

import base64

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.cert_validation import stage, validate
from ansible.module_utils.debug_guard import refuse_debug
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kind=dict(type="str", required=True, choices=["trust", "identity"]),
            certificate=dict(type="path"),
            private_key=dict(type="path"),
            private_key_passphrase=dict(type="str", no_log=True),
            pkcs12=dict(type="path"),
            pkcs12_passphrase=dict(type="str", no_log=True),
            trusted_roots=dict(type="list", elements="path", default=[]),
            expected_fingerprint=dict(type="str"),
            approved_anchors=dict(type="list", elements="str"),
            provider=dict(type="str", default="the provider"),
            min_days_valid=dict(type="int", default=30),
            min_rsa_bits=dict(type="int", default=2048),
            min_ec_bits=dict(type="int", default=256),
            expected_subject=dict(type="raw"),
            expected_issuer=dict(type="raw"),
            current=dict(type="path"),
            staging_dir=dict(type="path"),
            truststore_passphrase=dict(type="str", no_log=True, default="changeit"),
            current_truststores=dict(type="list", elements="path", default=[]),
            staged_content=dict(type="bool", default=False),
        ),
        required_one_of=[("certificate", "pkcs12")],
        mutually_exclusive=[("certificate", "pkcs12"), ("private_key", "pkcs12")],
        supports_check_mode=True,
    )
    refuse_debug(module, any(module.params[o] for o in ("private_key", "private_key_passphrase", "pkcs12")))
    if CRYPTOGRAPHY_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    p = module.params
    for option in ("expected_subject", "expected_issuer"):
        if p[option] is not None and not isinstance(p[option], (str, list)):
            module.fail_json(msg=f"{option} must be an RFC 4514 name or a list of them")
    report = validate(
        p["kind"], certificate=p["certificate"], private_key=p["private_key"],
        private_key_passphrase=p["private_key_passphrase"], pkcs12=p["pkcs12"],
        pkcs12_passphrase=p["pkcs12_passphrase"], trusted_roots=p["trusted_roots"],
        expected_fingerprint=p["expected_fingerprint"], approved_anchors=p["approved_anchors"],
        min_days_valid=p["min_days_valid"], min_rsa_bits=p["min_rsa_bits"], min_ec_bits=p["min_ec_bits"],
        expected_subject=p["expected_subject"], expected_issuer=p["expected_issuer"], current=p["current"],
        provider=p["provider"],
    )
    for warning in report.warnings:
        module.warn(warning)
    result = dict(report.facts, changed=False, already_deployed=report.already_deployed, defects=report.defects)
    if report.defects:
        module.fail_json(msg=report.error_text(), **result)
    if p["staging_dir"]:
        try:
            staged_changed, result["staged"] = stage(report, p["staging_dir"], p["truststore_passphrase"],
                                                     check_mode=module.check_mode,
                                                     current_truststores=p["current_truststores"])
        except OSError as e:
            module.fail_json(msg=f"STAGING: cannot write to {p['staging_dir']}: {e.strerror or e}", **result)
        # One round trip instead of a read-back per artefact (the rollout's hot path).
        if p["staged_content"] and not module.check_mode:
            staged_b64 = {}
            for name, path in result["staged"].items():
                with open(path, "rb") as f:
                    staged_b64[name] = base64.b64encode(f.read()).decode("ascii")
            result["staged_b64"] = staged_b64
        # Already deployed means nothing new reaches a host, whatever the staging directory held.
        result["changed"] = staged_changed and not report.already_deployed
    if module._diff:
        after = report.facts.get("bundle_fingerprints") or [report.facts["fingerprints"]["sha256"]]
        drifted = {d["fingerprint"] for d in report.drift}
        before = [fp + ("  (not in the trust-anchor registry: removed)" if fp in drifted else "")
                  for fp in report.current_fingerprints]
        result["diff"] = {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n"}
    module.exit_json(msg=report.message, **result)


if __name__ == "__main__":
    main()
