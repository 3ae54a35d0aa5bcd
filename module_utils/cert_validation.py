"""Controller-side validation of a certificate delivery (DESIGN.md §2-§3) and staging of normalised artefacts.

Pure code (no Ansible import): `validate(...)` reads and checks everything and returns a `Report` listing every
defect at once with a stable code; `stage(report, staging_dir, ...)` writes the artefacts atomically.

Trust (kind `trust`) comes only from the approved-anchor registry (DESIGN.md §2): the delivery's anchor must be one of
`approved_anchors`, and the staged bundle is exactly the approved anchors that have not expired, never what hosts
hold (a rogue anchor planted on one host must not spread). What hosts hold beyond the registry is reported as drift.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field

from ansible.module_utils.cert_files import write_atomic
from ansible.module_utils.pki_format import fingerprint_text, serial_text, sha256_fingerprint
from ansible.module_utils.tls_endpoint import presented_chain
from ansible.module_utils.x509_load import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    LoadError,
    parse_certificates,
    parse_pkcs12,
    parse_private_key,
    pem_blocks,
    read_bytes,
)

try:  # without cryptography the modules fail with missing_required_lib (x509_load.CRYPTOGRAPHY_IMPORT_ERROR)
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
except ImportError:
    pass

KINDS = ("trust", "identity")
CODES = (
    "UNREADABLE", "NO_CERTIFICATE", "MULTIPLE_LEAVES", "WRONG_PASSWORD", "KEY_MISMATCH", "NOT_YET_VALID", "EXPIRED",
    "EXPIRES_SOON", "UNTRUSTED_CHAIN", "INCOMPLETE_CHAIN", "WEAK_KEY", "WEAK_SIGNATURE", "MISSING_KEY_USAGE",
    "WRONG_SUBJECT", "WRONG_ISSUER", "MISSING_KEY", "UNAPPROVED_ANCHOR", "FINGERPRINT_MISMATCH", "BAD_SIGNATURE",
)
# How the refusal of an unapproved anchor tells the operator to proceed: evidence first, in the registry.
APPROVE_HINT = ("approve it with evidence first (ansible-playbook playbooks/anchor.yml -e provider={provider} "
                "-e op=approve -e certificate={certificate} -e operator=<you>; or record the fingerprint you "
                "confirmed by telephone or from the signed oficio: -e fingerprint={fingerprint} -e operator=<you> "
                "-e channel=telefono)")
_ASN1_TIME = "%Y%m%d%H%M%SZ"
# Without cryptography (a module then fails with missing_required_lib) the tables are empty, so importing works.
_WEAK_HASHES = () if CRYPTOGRAPHY_IMPORT_ERROR else (hashes.SHA1, hashes.MD5)
# OpenSSL's long names, as community.crypto's x509_certificate_info returns them.
_EKU_NAMES = {} if CRYPTOGRAPHY_IMPORT_ERROR else {
    ExtendedKeyUsageOID.SERVER_AUTH: "TLS Web Server Authentication",
    ExtendedKeyUsageOID.CLIENT_AUTH: "TLS Web Client Authentication",
    ExtendedKeyUsageOID.CODE_SIGNING: "Code Signing",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "E-mail Protection",
    ExtendedKeyUsageOID.TIME_STAMPING: "Time Stamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSP Signing",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "Any Extended Key Usage",
}
_KU_NAMES = (
    ("digital_signature", "Digital Signature"), ("content_commitment", "Non Repudiation"),
    ("key_encipherment", "Key Encipherment"), ("data_encipherment", "Data Encipherment"),
    ("key_agreement", "Key Agreement"), ("key_cert_sign", "Certificate Sign"), ("crl_sign", "CRL Sign"),
)


@dataclass
class Report:
    """What `validate` found: defects, warnings, facts, and the parsed objects `stage` needs."""

    kind: str
    defects: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    path: list = field(default_factory=list)  # delivered chain, leaf first
    key: object = None
    anchor: x509.Certificate | None = None
    bundle: list = field(default_factory=list)
    current_fingerprints: list = field(default_factory=list)
    drift: list = field(default_factory=list)  # held by a host, not approved: [{fingerprint, subject, not_after}]
    already_deployed: bool = False
    message: str = ""

    def defect(self, code, message):
        self.defects.append({"code": code, "message": message})

    @property
    def codes(self):
        return [d["code"] for d in self.defects]

    def error_text(self):
        return "\n".join(f"{d['code']}: {d['message']}" for d in self.defects)


# ---------------------------------------------------------------- small helpers

def colon_hex(data):
    """openssl's spelling of a digest: upper-case colon hex (the one form, as pki_format writes fingerprints)."""
    return ":".join(f"{b:02X}" for b in data)


def sha256_fp(cert):
    """The certificate's SHA-256 fingerprint in the one form ('AB:CD:...', pki_format)."""
    return sha256_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def normalise_fingerprint(text):
    """pki_format.fingerprint_text, or None when text is not a SHA-256 fingerprint (for callers that report it)."""
    try:
        return fingerprint_text(text)
    except ValueError:
        return None


def name_of(cert):
    return cert.subject.rfc4514_string()


def issued_by(cert, issuer):
    """True when issuer's key verifies cert's signature and the names link."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError:
        return _verify_legacy_signature(cert, issuer)
    except (TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _verify_legacy_signature(cert, issuer):
    """cryptography refuses SHA-1/MD5 in verify_directly_issued_by; link them anyway so WEAK_SIGNATURE is the defect."""
    try:
        algorithm = cert.signature_hash_algorithm
        public_key = issuer.public_key()
        if not isinstance(algorithm, _WEAK_HASHES):
            return False
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return False
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_ca(cert):
    try:
        return cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    except x509.ExtensionNotFound:
        return False


def _extension(cert, oid):
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _spki(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_signs_for(key, public_key):
    """True when a signature made with key verifies with public_key: the pair matches and the key is sound."""
    if _spki(key.public_key()) != _spki(public_key):
        return False
    message = b"cert_validate key check"
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            public_key.verify(key.sign(message, padding.PKCS1v15(), hashes.SHA256()), message, padding.PKCS1v15(),
                              hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            public_key.verify(key.sign(message, ec.ECDSA(hashes.SHA256())), message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, dsa.DSAPrivateKey):
            public_key.verify(key.sign(message, hashes.SHA256()), message, hashes.SHA256())
        else:  # Ed25519 / Ed448
            public_key.verify(key.sign(message), message)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _key_type_and_size(public_key):
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", public_key.key_size
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ECC", public_key.curve.key_size
    if isinstance(public_key, dsa.DSAPublicKey):
        return "DSA", public_key.key_size
    return type(public_key).__name__.replace("PublicKey", "").lstrip("_"), None


def _utc(now):
    return now or dt.datetime.now(dt.UTC)


def _unique(certs):
    seen, out = set(), []
    for cert in certs:
        fp = cert.fingerprint(hashes.SHA256())
        if fp not in seen:
            seen.add(fp)
            out.append(cert)
    return out


def certificate_facts(cert, now=None):
    """community.crypto-style facts of one certificate."""
    now = _utc(now)
    not_after = cert.not_valid_after_utc
    san = _extension(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    ku = _extension(cert, ExtensionOID.KEY_USAGE)
    eku = _extension(cert, ExtensionOID.EXTENDED_KEY_USAGE)
    key_type, key_size = _key_type_and_size(cert.public_key())
    return {
        "subject": name_of(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "serial_number": cert.serial_number,
        "serial_hex": serial_text(cert.serial_number),
        "not_before": cert.not_valid_before_utc.strftime(_ASN1_TIME),
        "not_after": not_after.strftime(_ASN1_TIME),
        "expired": not_after < now,
        "days_left": (not_after - now).days,
        "subject_alt_name": [_general_name(n) for n in san] if san else [],
        "key_usage": [label for attr, label in _KU_NAMES if getattr(ku, attr)] if ku else [],
        "extended_key_usage": [_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku] if eku else [],
        "public_key_type": key_type,
        "public_key_size": key_size,
        "public_key_fingerprints": {"sha256": colon_hex(_digest(_spki(cert.public_key())))},
        "fingerprints": {"sha1": colon_hex(cert.fingerprint(hashes.SHA1())), "sha256": sha256_fp(cert)},  # noqa: S303
        "signature_algorithm": cert.signature_algorithm_oid._name,
    }


def _digest(data):
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def _general_name(name):
    prefix = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email",
              x509.UniformResourceIdentifier: "URI", x509.DirectoryName: "dirName"}.get(type(name), "othername")
    value = name.value.rfc4514_string() if isinstance(name, x509.DirectoryName) else name.value
    return f"{prefix}:{value}"


# ---------------------------------------------------------------- chain building

def order_chain(certs, key=None):
    """(leaf-first path, end-entity candidates, unused certs). The leaf matches key when one is given."""
    certs = _unique(certs)
    tops = [c for c in certs if not any(o is not c and issued_by(o, c) for o in certs)] or certs[:1]
    leaves = [c for c in tops if not is_ca(c)] or tops
    leaf = leaves[0]
    if key is not None:
        spki = _spki(key.public_key())
        leaf = next((c for c in certs if _spki(c.public_key()) == spki), leaf)
    path = [leaf]
    while not issued_by(path[-1], path[-1]):
        nxt = next((c for c in certs if c not in path and issued_by(path[-1], c)), None)
        if nxt is None:
            break
        path.append(nxt)
    return path, leaves, [c for c in certs if c not in path]


def find_issuer(cert, pool):
    """The certificate of pool that is cert itself or that signed it, or None."""
    fp = cert.fingerprint(hashes.SHA256())
    return next((p for p in pool if p.fingerprint(hashes.SHA256()) == fp), None) or \
        next((p for p in pool if issued_by(cert, p)), None)


# ---------------------------------------------------------------- live endpoint

def fetch_endpoint_chain(endpoint, timeout=5.0, server_name=None):
    """Certificates the live endpoint presents (tls_endpoint.presented_chain: SNI, unverified; the caller decides)."""
    return [x509.load_der_x509_certificate(d) for d in presented_chain(endpoint, server_name, timeout) if d]


def endpoint_confirms(presented, anchor, delivered):
    """True when a presented certificate is the anchor or chains to it (through presented or delivered certs)."""
    anchor_fp = anchor.fingerprint(hashes.SHA256())
    pool = _unique(presented + delivered)
    for cert in presented:
        seen = set()
        while cert is not None and cert.fingerprint(hashes.SHA256()) not in seen:
            if cert.fingerprint(hashes.SHA256()) == anchor_fp or issued_by(cert, anchor):
                return True
            seen.add(cert.fingerprint(hashes.SHA256()))
            cert = next((p for p in pool if p is not cert and issued_by(cert, p)), None)
    return False


# ---------------------------------------------------------------- validation

def _read_certificate_files(paths, what, report):
    certs = []
    for path in paths:
        try:
            data = read_bytes(path, what)
            certs.extend(parse_certificates(data, f"{what} {path}") if data.strip() else [])
        except LoadError as e:
            report.defect(e.code, e.message)
    return certs


def _load_delivery(report, certificate, private_key, private_key_passphrase, pkcs12_path, pkcs12_passphrase):
    """(certificates, key) of the delivery; load failures become defects."""
    certs, key, defects_before = [], None, len(report.defects)
    try:
        if pkcs12_path:
            key, cert, extra = parse_pkcs12(read_bytes(pkcs12_path, "pkcs12"), pkcs12_passphrase,
                                            f"pkcs12 {pkcs12_path}")
            certs = ([cert] if cert else []) + extra
        else:
            data = read_bytes(certificate, "certificate")
            labels = [label for label, _block in pem_blocks(data, f"certificate {certificate}")]
            if not private_key and any("PRIVATE KEY" in label for label in labels):
                private_key = certificate  # one PEM holding certificate and key
            certs = parse_certificates(data, f"certificate {certificate}")
    except LoadError as e:
        report.defect(e.code, e.message)
    try:
        if private_key:
            key = parse_private_key(read_bytes(private_key, "private_key"), private_key_passphrase,
                                    f"private_key {private_key}")
    except LoadError as e:
        report.defect(e.code, e.message)
    if len(report.defects) == defects_before:
        if not certs:
            report.defect("NO_CERTIFICATE", f"{pkcs12_path or certificate}: the delivery holds no certificate")
        if report.kind == "identity" and key is None:
            report.defect("MISSING_KEY", "an identity delivery needs its private key (private_key or pkcs12)")
    return certs, key


def _check_dates_and_strength(report, certs, now, min_days_valid, min_rsa_bits, min_ec_bits):
    for cert in certs:
        who = f"'{name_of(cert)}'"
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if not_before > now:
            report.defect("NOT_YET_VALID", f"{who} is not valid before {not_before:%Y-%m-%d %H:%M} UTC")
        if not_after < now:
            report.defect("EXPIRED", f"{who} expired on {not_after:%Y-%m-%d %H:%M} UTC")
        elif (not_after - now) < dt.timedelta(days=min_days_valid):
            report.defect("EXPIRES_SOON", f"{who} expires on {not_after:%Y-%m-%d} UTC, "
                                          f"in {(not_after - now).days} days (min_days_valid {min_days_valid})")
        key_type, size = _key_type_and_size(cert.public_key())
        floor = min_ec_bits if key_type == "ECC" else min_rsa_bits if key_type in ("RSA", "DSA") else None
        if floor and size < floor:
            report.defect("WEAK_KEY", f"{who} has a {key_type} {size}-bit key (minimum {floor})")
        try:
            algorithm = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            algorithm = None
        if isinstance(algorithm, _WEAK_HASHES):
            report.defect("WEAK_SIGNATURE", f"{who} is signed with {algorithm.name.upper()}")


def _check_usage(report, leaf):
    ku = _extension(leaf, ExtensionOID.KEY_USAGE)
    eku = _extension(leaf, ExtensionOID.EXTENDED_KEY_USAGE)
    ekus = set(eku) if eku else set()
    who = f"'{name_of(leaf)}'"
    if report.kind == "trust":
        if not is_ca(leaf) and not ekus & {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}:
            report.defect("MISSING_KEY_USAGE", f"{who} has no serverAuth extended key usage: it cannot be a TLS server")
        return
    if ku is not None and not ku.digital_signature:
        report.defect("MISSING_KEY_USAGE", f"{who} key usage lacks digitalSignature: it cannot authenticate a client")
    if eku is not None and not ekus & {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}:
        report.defect("MISSING_KEY_USAGE", f"{who} extended key usage lacks clientAuth")
    if ku is None and eku is None:
        report.defect("MISSING_KEY_USAGE", f"{who} states neither digitalSignature nor clientAuth")


# RFC 4514 attribute types are case-insensitive; cryptography knows only the upper-case short names (CN, O, C...).
_LOWER_ATTRIBUTE_NAMES = {} if CRYPTOGRAPHY_IMPORT_ERROR else {
    k.lower(): v for k, v in getattr(x509.name, "_NAME_TO_NAMEOID", {}).items()}


def _name_key(name):
    """Comparable form of an x509.Name: RDNs in order, each a set of (OID, value casefolded, spaces collapsed)."""
    return [frozenset((a.oid.dotted_string, " ".join(str(a.value).split()).casefold()) for a in rdn)
            for rdn in name.rdns]


def parse_expected_names(expected):
    """An expected name (or list of allowed names), RFC 4514 strings, as x509.Name objects; ValueError names the bad
    one. None/empty means no expectation."""
    if not expected:
        return []
    names = []
    for text in [expected] if isinstance(expected, str) else list(expected):
        if not str(text).strip():
            continue
        try:
            names.append(x509.Name.from_rfc4514_string(str(text), _LOWER_ATTRIBUTE_NAMES))
        except ValueError:
            raise ValueError(f"'{text}' is not an RFC 4514 name such as 'CN=renapo.lab,O=RENAPO,C=MX'") from None
    return names


def name_matches(name, allowed):
    """True when name equals one of the allowed names as a WHOLE: the same RDNs in the same order; inside one
    (multi-valued) RDN the attribute order does not matter; values compare case-insensitively with runs of spaces
    taken as one (RFC 4518's insignificant-space rule, simplified). 'CN=renapo.lab CA' never equals 'CN=renapo.lab'."""
    key = _name_key(name)
    return any(_name_key(a) == key for a in allowed)


def _check_names(report, leaf, expected_subject, expected_issuer):
    for code, expected, name, what in (("WRONG_SUBJECT", expected_subject, leaf.subject, "subject"),
                                       ("WRONG_ISSUER", expected_issuer, leaf.issuer, "issuer")):
        try:
            allowed = parse_expected_names(expected)
        except ValueError as e:
            report.defect(code, f"expected_{what} {e}")
            continue
        if allowed and not name_matches(name, allowed):
            wanted = " or ".join(f"'{a.rfc4514_string()}'" for a in allowed)
            report.defect(code, f"{what} '{name.rfc4514_string()}' is not the expected {wanted} (whole name)")


def _diagnose_top(report, top, delivered, trusted, trusted_what):
    """The certificate of trusted that signed top, or None after naming why the chain stops at top.

    A missing issuer is INCOMPLETE_CHAIN naming its DN; an issuer present by name (in the delivery or in trusted)
    whose key does not verify top's signature is BAD_SIGNATURE naming both: each points at its own fix."""
    signer = next((t for t in trusted if issued_by(top, t)), None)
    if signer is not None:
        return signer
    same_name = [c for c in _unique(list(delivered) + list(trusted)) if c.subject == top.issuer]
    issuer_dn = top.issuer.rfc4514_string()
    if top.issuer == top.subject and not issued_by(top, top):
        report.defect("BAD_SIGNATURE", f"'{name_of(top)}' names itself as issuer but its self-signature does not "
                                       "verify: the certificate was altered")
    elif same_name:
        where = "the delivery" if any(c in delivered for c in same_name) else trusted_what
        report.defect("BAD_SIGNATURE", f"the signature of '{name_of(top)}' does not verify under its issuer "
                                       f"'{issuer_dn}' ({sha256_fp(same_name[0])}, in {where}): signed by another "
                                       "key of the same name, or altered")
    else:
        report.defect("INCOMPLETE_CHAIN", f"issuer '{issuer_dn}' of '{name_of(top)}' is missing from the delivery "
                                          f"and from {trusted_what} (missing intermediate?)")
    return None


def _check_identity_chain(report, path, unused, roots):
    top = path[-1]
    self_signed = issued_by(top, top)
    if not roots:
        if not self_signed and any(is_ca(c) for c in unused):
            _diagnose_top(report, top, unused, [], "trusted_roots (none given)")
        report.warnings.append("no trusted_roots given: the chain was not checked against a trusted root")
        return
    if find_issuer(top, roots) is not None:
        return
    if self_signed:
        report.defect("UNTRUSTED_CHAIN", f"the chain ends at self-signed '{name_of(top)}', "
                                         "which is not among trusted_roots")
        return
    _diagnose_top(report, top, unused, roots, "trusted_roots")
    report.defect("UNTRUSTED_CHAIN", "the chain does not lead to any certificate of trusted_roots")


def _trust_anchor(report, path, unused, approved, provider):
    """The delivery's anchor: the top of the chain when approved or self-signed, else the approved anchor that
    signed the top; None (with the defect named) when the chain is broken."""
    top = path[-1]
    approved_fps = {sha256_fp(a) for a in approved}
    if sha256_fp(top) in approved_fps or issued_by(top, top):
        return top
    return _diagnose_top(report, top, unused, approved, f"the approved anchors of {provider}")


def _check_approved(report, anchor, approved, approved_anchors, provider, now, source):
    fp = sha256_fp(anchor)
    hint = APPROVE_HINT.format(provider=provider, certificate=source or "<delivery>", fingerprint=fp.upper())
    if approved_anchors is None:
        report.defect("UNAPPROVED_ANCHOR", f"anchor '{name_of(anchor)}' ({fp}) cannot be trusted: no approved anchors "
                                           f"were given (nothing is trusted without the trust-anchor registry of "
                                           f"{provider}); {hint}")
    elif fp not in {sha256_fp(a) for a in approved}:
        report.defect("UNAPPROVED_ANCHOR", f"anchor '{name_of(anchor)}' ({fp}) is not approved in the trust-anchor "
                                           f"registry of {provider}; {hint}")
    elif anchor.not_valid_after_utc < now:
        report.defect("EXPIRED", f"approved anchor '{name_of(anchor)}' ({fp}) expired on "
                                 f"{anchor.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _check_expected_fingerprint(report, anchor, path, expected_fingerprint):
    """A consistency check only: the letter's fingerprint must be in the delivery; it never makes anything trusted."""
    if not expected_fingerprint:
        return
    try:
        wanted = fingerprint_text(expected_fingerprint)
    except ValueError as e:
        report.defect("FINGERPRINT_MISMATCH", f"expected_fingerprint: {e}")
        return
    if not any(sha256_fp(c) == wanted for c in [*([anchor] if anchor is not None else []), *path]):
        what = f"the anchor '{name_of(anchor)}' has SHA-256 {sha256_fp(anchor)}" if anchor is not None else \
            "no certificate of the delivery has it"
        report.defect("FINGERPRINT_MISMATCH", f"{what}, not the expected {wanted}")


def _approved_certificates(approved_anchors, report):
    """Parse the registry's PEM strings; an unreadable entry is a defect (the registry must be fixed, not skipped)."""
    certs = []
    for i, text in enumerate(approved_anchors or (), 1):
        data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
        try:
            found = parse_certificates(data, f"approved anchor {i}")
        except LoadError as e:
            report.defect(e.code, e.message)
            continue
        certs.extend(found)
    return _unique(certs)


def validate(kind, certificate=None, private_key=None, private_key_passphrase=None, pkcs12=None,
             pkcs12_passphrase=None, trusted_roots=(), expected_fingerprint=None, approved_anchors=None,
             min_days_valid=30, min_rsa_bits=2048, min_ec_bits=256, expected_subject=None, expected_issuer=None,
             current=None, now=None, provider="the provider"):
    """Check a delivery; every defect is listed in the returned Report (no exception for a bad delivery).

    kind trust: approved_anchors (PEM strings from the trust-anchor registry) is the only source of trust; None
    (not given) trusts nothing (UNAPPROVED_ANCHOR). expected_subject/expected_issuer: an RFC 4514 name or a list of
    allowed names, matched whole (see name_matches)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    now = _utc(now)
    report = Report(kind)
    certs, key = _load_delivery(report, certificate, private_key, private_key_passphrase, pkcs12, pkcs12_passphrase)
    roots = _read_certificate_files(trusted_roots or (), "trusted_roots", report)
    approved = _approved_certificates(approved_anchors, report) if kind == "trust" else []
    current_certs = []
    if current:
        if os.path.exists(current):
            current_certs = _unique(_read_certificate_files([current], "current", report))
        else:
            report.warnings.append(f"current {current} does not exist: nothing is deployed yet")
    report.current_fingerprints = [sha256_fp(c) for c in current_certs]
    if kind == "trust":
        approved_fps = {sha256_fp(a) for a in approved}
        report.bundle = [a for a in approved if a.not_valid_after_utc >= now]
        report.drift = [{"fingerprint": sha256_fp(c), "subject": name_of(c),
                         "not_after": c.not_valid_after_utc.strftime(_ASN1_TIME)}
                        for c in current_certs if sha256_fp(c) not in approved_fps]
    if not certs:
        return report

    path, leaves, unused = order_chain(certs, key)
    report.path, leaf = path, path[0]
    if len(leaves) > 1:
        report.defect("MULTIPLE_LEAVES", f"the delivery holds {len(leaves)} end-entity certificates: "
                                         + "; ".join(f"'{name_of(c)}'" for c in leaves))
    for cert in unused:
        report.warnings.append(f"'{name_of(cert)}' is not part of the chain of '{name_of(leaf)}' and is ignored")
    report.facts = certificate_facts(leaf, now)
    report.facts["chain"] = [name_of(c) for c in path]
    _check_dates_and_strength(report, path, now, min_days_valid, min_rsa_bits, min_ec_bits)
    _check_usage(report, leaf)
    _check_names(report, leaf, expected_subject, expected_issuer)

    if kind == "identity":
        if key is not None and not key_signs_for(key, leaf.public_key()):
            report.defect("KEY_MISMATCH", f"the private key does not belong to '{name_of(leaf)}'")
        if approved_anchors:
            report.warnings.append("approved_anchors is for kind trust: ignored for an identity")
        report.key = key
        _check_identity_chain(report, path, unused, roots)
        report.already_deployed = sha256_fp(leaf) in report.current_fingerprints
        what = f"certificate '{name_of(leaf)}' serial {report.facts['serial_hex']}"
    else:
        if key is not None:
            report.warnings.append("a trust delivery needs no private key: the key given is ignored")
        if roots:
            report.warnings.append("trusted_roots is ignored for kind trust: only approved_anchors are trusted")
        anchor = _trust_anchor(report, path, unused, approved, provider)
        _check_expected_fingerprint(report, anchor, path, expected_fingerprint)
        if anchor is not None:
            _check_approved(report, anchor, approved, approved_anchors, provider, now, certificate or pkcs12)
        report.anchor = anchor
        bundle_fps = [sha256_fp(c) for c in report.bundle]
        report.already_deployed = set(report.current_fingerprints) == set(bundle_fps)
        if anchor is not None:
            report.facts["anchor"] = {"subject": name_of(anchor), "fingerprint_sha256": sha256_fp(anchor),
                                      "not_after": anchor.not_valid_after_utc.strftime(_ASN1_TIME),
                                      "approved": sha256_fp(anchor) in {sha256_fp(a) for a in approved},
                                      "confirmed_by": f"approved in the trust-anchor registry of {provider}"}
            if not issued_by(anchor, anchor):
                report.warnings.append(f"anchor '{name_of(anchor)}' is not self-signed: OpenSSL clients such as nginx "
                                       "verify only up to a self-signed root unless partial-chain checking is on")
        report.facts["bundle_fingerprints"] = bundle_fps
        report.facts["drift"] = report.drift
        what = (f"anchor '{name_of(anchor)}' ({sha256_fp(anchor)}, approved in the trust-anchor registry)"
                if anchor is not None else "the delivery")
    report.message = (f"{what} is already deployed: nothing to change" if report.already_deployed
                      else f"{what} is accepted; " + ("it" if kind == "identity" else f"'{name_of(leaf)}'")
                      + f" expires {leaf.not_valid_after_utc:%Y-%m-%d} ({report.facts['days_left']} days left)")
    if kind == "trust" and report.drift and not report.already_deployed:
        report.message += (f"; {len(report.drift)} certificate(s) held by hosts are not in the registry and will be "
                           "removed")
    return report


# ---------------------------------------------------------------- staging

def _pem(certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _alias(cert):
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    slug = re.sub(r"[^a-z0-9]+", "-", str(cn[0].value).lower()).strip("-") if cn else "anchor"
    # lower-case as keytool lists aliases; stable so an unchanged truststore is not rewritten
    return f"{slug[:40]}-{sha256_fp(cert).replace(':', '').lower()[:8]}"


def _truststore_holds(path, passphrase, certs):
    """True when the existing truststore opens with passphrase and holds exactly certs (it is salted: no bytes cmp)."""
    try:
        with open(path, "rb") as f:
            store = pkcs12.load_pkcs12(f.read(), passphrase.encode("utf-8"))
    except (OSError, ValueError, TypeError):
        return False
    held = [(c.friendly_name, sha256_fp(c.certificate)) for c in store.additional_certs]
    return held == [(_alias(c).encode(), sha256_fp(c)) for c in certs]


def _same(path, data, mode):
    try:
        with open(path, "rb") as f:
            return f.read() == data and (os.stat(path).st_mode & 0o777) == mode
    except OSError:
        return False


def artefacts(report):
    """{name: (file name, bytes or None for the truststore, mode)} for a report without defects."""
    if report.kind == "identity":
        leaf, chain = report.path[0], [c for c in report.path[1:] if not issued_by(c, c)]
        key_pem = report.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
        return {"cert": ("cert.pem", _pem([leaf]), 0o644), "chain": ("chain.pem", _pem(chain), 0o644),
                "fullchain": ("fullchain.pem", _pem([leaf, *chain]), 0o644), "key": ("key.pem", key_pem, 0o600)}
    return {"anchor": ("anchor.pem", _pem([report.anchor]), 0o644),
            "bundle": ("bundle.pem", _pem(report.bundle), 0o644),
            "truststore": ("truststore.p12", None, 0o644)}


def stage(report, staging_dir, truststore_passphrase="changeit", check_mode=False,  # noqa: S107 - Java default
          current_truststores=()):
    """Write the normalised artefacts into staging_dir atomically; returns (changed, {name: path}).

    current_truststores: truststores the hosts hold now; one that already holds exactly the bundle is staged as it
    is, so a fresh staging dir does not make every Java host rewrite a truststore that only differs by its salt."""
    if report.defects:
        raise ValueError("a delivery with defects is never staged")
    if not check_mode:
        os.makedirs(staging_dir, mode=0o700, exist_ok=True)
    changed, staged = False, {}
    for name, (filename, data, mode) in artefacts(report).items():
        path = staged[name] = os.path.join(staging_dir, filename)
        if data is None:  # Java truststore: salted, so compare what it holds, not its bytes
            if _truststore_holds(path, truststore_passphrase, report.bundle) and \
                    (os.stat(path).st_mode & 0o777) == mode:
                continue
            held = next((p for p in current_truststores if _truststore_holds(p, truststore_passphrase, report.bundle)),
                        None)
            if held:
                with open(held, "rb") as f:
                    data = f.read()
            else:
                data = pkcs12.serialize_java_truststore(
                    [pkcs12.PKCS12Certificate(c, _alias(c).encode()) for c in report.bundle],
                    serialization.BestAvailableEncryption(truststore_passphrase.encode("utf-8")))
        elif _same(path, data, mode):
            continue
        changed = True
        if not check_mode:
            write_atomic(path, data, mode)
    return changed, staged
