#!/usr/bin/python
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
    C(MISSING_KEY_USAGE), C(WRONG_SUBJECT), C(WRONG_ISSUER), C(MISSING_KEY), C(UNCONFIRMED_ANCHOR),
    C(FINGERPRINT_MISMATCH)."
  - A C(trust) delivery adds an anchor (the self-signed certificate, or the top of the delivered chain) to the
    trust bundle. A new anchor is accepted only when already trusted (in O(current) or O(trusted_roots)), when
    its SHA-256 fingerprint (or that of a certificate it signed in the delivery) equals O(expected_fingerprint),
    or when the live O(confirm_endpoint) presents a certificate chaining to it.
  - When the delivery is already deployed (O(current)), the module reports C(changed=false) and says so.
  - No passphrase and no key byte ever appears in the result.
version_added: "0.1.0"
author: DGTIC certificate renewal team
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
    description: CA certificate files the identity chain must lead to; also count as already trusted anchors.
    type: list
    elements: path
    default: []
  expected_fingerprint:
    description:
      - SHA-256 fingerprint of the new anchor as stated through a second channel (the provider's letter).
      - C(AA:BB:..), C(aabb..), with or without colons, any case; a C(SHA256 Fingerprint=) prefix is accepted.
    type: str
  confirm_endpoint:
    description: C(host:port) whose live TLS certificate may confirm a new anchor (once the provider switched).
    type: str
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
    description: Regular expression (searched) on the leaf's subject as an RFC 4514 string.
    type: str
  expected_issuer:
    description: Regular expression (searched) on the leaf's issuer as an RFC 4514 string.
    type: str
  current:
    description: Path of what is deployed now (certificate, or trust bundle); missing means nothing deployed yet.
    type: path
  staging_dir:
    description:
      - Where normalised artefacts are written atomically when the delivery is valid (nothing in check mode).
      - identity - C(cert.pem), C(chain.pem), C(fullchain.pem), C(key.pem) (PKCS#8, unencrypted, mode 0600).
      - trust - C(anchor.pem), C(bundle.pem) (valid entries of O(current) plus the anchor), C(truststore.p12).
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
  endpoint_timeout:
    description: Seconds to wait for O(confirm_endpoint).
    type: float
    default: 5.0
notes:
  - Supports check mode (nothing is written) and diff mode (fingerprints before and after, never key bytes).
requirements:
  - cryptography >= 45
"""

EXAMPLES = r"""
- name: Validate RENAPO's renewed certificate against the fingerprint in its letter
  cert_validate:
    kind: trust
    certificate: /srv/intake/renapo-2026.cer
    expected_fingerprint: "3F:2A:...:9C"
    current: /srv/deployed/renapo-bundle.pem
    staging_dir: /srv/staging/renapo
  register: renapo_delivery

- name: Show what the rollout will add
  ansible.builtin.assert:
    that: renapo_delivery.anchor.fingerprint_sha256 in renapo_delivery.bundle_fingerprints
    success_msg: "{{ renapo_delivery.msg }}"

- name: Validate SAT's e.firma (.cer + encrypted PKCS#8 .key)
  cert_validate:
    kind: identity
    certificate: /srv/intake/sat.cer
    private_key: /srv/intake/sat.key
    private_key_passphrase: "{{ vault_sat_key_passphrase }}"
    trusted_roots: [/etc/dgtic/sat-ca.pem]
    expected_subject: "CN=SECRETARIA"
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
  description: The trust anchor the delivery adds (subject, fingerprint_sha256, not_after, confirmed_by).
  returned: kind=trust and a certificate was read
  type: dict
  sample: {"subject": "CN=RENAPO Root G2", "fingerprint_sha256": "3f:2a:...", "not_after": "20360101000000Z",
           "confirmed_by": "confirmed by expected_fingerprint"}
bundle_fingerprints:
  description: SHA-256 fingerprints of what the staged bundle holds (valid current entries first, new anchor last).
  returned: kind=trust and a certificate was read
  type: list
  elements: str
  sample: ["11:22:...", "3f:2a:..."]
staged:
  description: Paths of the staged artefacts (cert, chain, fullchain, key | anchor, bundle, truststore).
  returned: when staging_dir is set and there is no defect
  type: dict
  sample: {"anchor": "/srv/staging/anchor.pem", "bundle": "/srv/staging/bundle.pem",
           "truststore": "/srv/staging/truststore.p12"}
defects:
  description: Every defect found, each with a stable code.
  returned: always
  type: list
  elements: dict
  sample: [{"code": "EXPIRED", "message": "'CN=consulta.example' expired on 2025-01-01 00:00 UTC"}]
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.cert_validation import stage, validate
except ImportError as exc:  # cryptography missing on the controller
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None


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
            confirm_endpoint=dict(type="str"),
            min_days_valid=dict(type="int", default=30),
            min_rsa_bits=dict(type="int", default=2048),
            min_ec_bits=dict(type="int", default=256),
            expected_subject=dict(type="str"),
            expected_issuer=dict(type="str"),
            current=dict(type="path"),
            staging_dir=dict(type="path"),
            truststore_passphrase=dict(type="str", no_log=True, default="changeit"),
            current_truststores=dict(type="list", elements="path", default=[]),
            endpoint_timeout=dict(type="float", default=5.0),
        ),
        required_one_of=[("certificate", "pkcs12")],
        mutually_exclusive=[("certificate", "pkcs12"), ("private_key", "pkcs12")],
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=f"cert_validate needs the cryptography library on the controller: {IMPORT_ERROR}")
    p = module.params
    report = validate(
        p["kind"], certificate=p["certificate"], private_key=p["private_key"],
        private_key_passphrase=p["private_key_passphrase"], pkcs12=p["pkcs12"],
        pkcs12_passphrase=p["pkcs12_passphrase"], trusted_roots=p["trusted_roots"],
        expected_fingerprint=p["expected_fingerprint"], confirm_endpoint=p["confirm_endpoint"],
        min_days_valid=p["min_days_valid"], min_rsa_bits=p["min_rsa_bits"], min_ec_bits=p["min_ec_bits"],
        expected_subject=p["expected_subject"], expected_issuer=p["expected_issuer"], current=p["current"],
        endpoint_timeout=p["endpoint_timeout"],
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
        # Already deployed means nothing new reaches a host, whatever the staging directory held.
        result["changed"] = staged_changed and not report.already_deployed
    if module._diff:
        after = report.facts.get("bundle_fingerprints") or [report.facts["fingerprints"]["sha256"]]
        result["diff"] = {"before": "\n".join(report.current_fingerprints) + "\n", "after": "\n".join(after) + "\n"}
    module.exit_json(msg=report.message, **result)


if __name__ == "__main__":
    main()
