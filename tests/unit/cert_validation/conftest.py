"""A catalogue of good and bad certificate deliveries, generated with cryptography for each session (no keys committed).

Each case is `(validate kwargs, expected defect codes)`; an empty code list means the delivery must pass.
"""
from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.hazmat.primitives.serialization.pkcs12 import PBES
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
PASSPHRASE = "Pw-s3cr3t-never-printed"
SERVER_AUTH, CLIENT_AUTH = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
PEM, DER = serialization.Encoding.PEM, serialization.Encoding.DER

GOOD = [
    "identity_pem_fullchain", "identity_pem_any_order_pkcs1_encrypted", "identity_der_leaf",
    "identity_sat_cer_key", "identity_p12_modern", "identity_p12_legacy_3des", "identity_p12_legacy_rc2",
    "identity_combined_pem", "identity_ec", "trust_self_signed_fingerprint", "trust_chain_fingerprint_plain",
    "trust_fingerprint_of_leaf", "trust_leaf_under_approved_anchor", "trust_p7b", "trust_exact_subject",
    "trust_subject_one_of_several",
]
BAD = {
    "garbage_certificate": ["UNREADABLE"],
    "missing_file": ["UNREADABLE"],
    "truncated_p12": ["UNREADABLE"],
    "key_only_pem": ["NO_CERTIFICATE"],
    "two_leaves": ["MULTIPLE_LEAVES"],
    "p12_wrong_password": ["WRONG_PASSWORD"],
    "sat_key_wrong_password": ["WRONG_PASSWORD"],
    "encrypted_key_no_password": ["WRONG_PASSWORD"],
    "key_mismatch": ["KEY_MISMATCH"],
    "corrupt_key": ["KEY_MISMATCH"],
    "not_yet_valid": ["NOT_YET_VALID"],
    "expired": ["EXPIRED"],
    "expires_soon": ["EXPIRES_SOON"],
    "rogue_chain_with_root": ["UNTRUSTED_CHAIN"],
    "rogue_leaf_alone": ["UNTRUSTED_CHAIN", "BAD_SIGNATURE"],
    "missing_intermediate": ["INCOMPLETE_CHAIN"],
    "identity_bad_intermediate": ["BAD_SIGNATURE"],
    "rsa_1024": ["WEAK_KEY"],
    "ec_192": ["WEAK_KEY"],
    "sha1_signature": ["WEAK_SIGNATURE"],
    "identity_server_only": ["MISSING_KEY_USAGE"],
    "trust_client_only": ["MISSING_KEY_USAGE"],
    "wrong_subject": ["WRONG_SUBJECT"],
    "wrong_issuer": ["WRONG_ISSUER"],
    "identity_without_key": ["MISSING_KEY"],
    "trust_unapproved": ["UNAPPROVED_ANCHOR"],
    "trust_no_registry": ["UNAPPROVED_ANCHOR"],
    "trust_forged_letter": ["UNAPPROVED_ANCHOR"],
    "trust_fingerprint_mismatch": ["FINGERPRINT_MISMATCH"],
    "trust_missing_issuer": ["INCOMPLETE_CHAIN"],
    "trust_bad_signature": ["BAD_SIGNATURE"],
    "trust_bad_signature_in_delivery": ["BAD_SIGNATURE"],
    "trust_tampered_self_signed": ["BAD_SIGNATURE"],
    "trust_subject_substring": ["WRONG_SUBJECT"],
    "md5_signature": ["WEAK_SIGNATURE"],
    "several_at_once": ["EXPIRED", "WEAK_KEY", "MISSING_KEY_USAGE", "KEY_MISMATCH"],
}


def pytest_generate_tests(metafunc):
    if "good_case" in metafunc.fixturenames:
        metafunc.parametrize("good_case", GOOD)
    if "bad_case" in metafunc.fixturenames:
        metafunc.parametrize("bad_case", sorted(BAD))


@dataclass
class Issued:
    cert: x509.Certificate
    key: object


_KEYS = {}


def key(name, kind="rsa", size=2048):
    """One generated key per name and session (RSA generation dominates the fixture time)."""
    if name not in _KEYS:
        _KEYS[name] = (rsa.generate_private_key(65537, size) if kind == "rsa"
                       else ec.generate_private_key({256: ec.SECP256R1(), 192: ec.SECP192R1()}[size]))
    return _KEYS[name]


def issue(cn, signer=None, *, k=None, ca=False, ekus=(SERVER_AUTH,), digital_signature=True, start=-DAY,
          days=365, algorithm=None, san=None, org="Lab"):
    """A certificate for cn signed by signer (self-signed when signer is None)."""
    k = k or key(cn)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signing_key = (signer.cert.subject, signer.key) if signer else (name, k)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(NOW + start).not_valid_after(NOW + days * DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(digital_signature, False, True, False, False, False, False, False, False),
                            critical=True)
        if ekus:
            b = b.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san or f"{cn}.example")]), critical=False)
    return Issued(b.sign(signing_key, algorithm or hashes.SHA256()), k)


def pem(*items):
    return b"".join(i.cert.public_bytes(PEM) for i in items)


def key_bytes(k, encoding=PEM, fmt=serialization.PrivateFormat.PKCS8, passphrase=None):
    enc = serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    return k.private_bytes(encoding, fmt, enc)


def fingerprint(issued):
    return issued.cert.fingerprint(hashes.SHA256()).hex()


def pem_str(*items):
    """PEM strings, one per certificate: what the trust-anchor registry returns as approved_pems."""
    return [pem(i).decode() for i in items]


def tampered(issued):
    """The same certificate with one byte of its signature flipped (an altered copy)."""
    der = bytearray(issued.cert.public_bytes(DER))
    der[-5] ^= 0x01
    return Issued(x509.load_der_x509_certificate(bytes(der)), issued.key)


class Catalogue:
    """Writes the deliveries into a directory and maps case names to validate() kwargs."""

    def __init__(self, root):
        self.root = root
        self.cases = {}
        self.pki = {}

    def file(self, name, data):
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def add(self, name, kind, **kwargs):
        self.cases[name] = dict(kind=kind, **kwargs)


def build(root):
    c = Catalogue(root)
    f = c.file
    # A two-level identity PKI, a RENAPO-like server PKI (today's and the renewed anchor), a rogue CA, a SAT CA.
    ca = issue("Lab Root CA", ca=True, days=3650)
    inter = issue("Lab Issuing CA", ca, ca=True, days=1825)
    client = issue("consulta-client", inter, ekus=(CLIENT_AUTH,))
    other_client = issue("other-client", inter, ekus=(CLIENT_AUTH,))
    renapo_old = issue("RENAPO Root G1", ca=True, days=3650)
    renapo_new = issue("RENAPO Root G2", ca=True, days=3650)
    renapo_leaf = issue("consultas.renapo.lab", renapo_new, san="127.0.0.1")
    renapo_self = issue("ws.renapo.lab", ekus=(SERVER_AUTH,), days=730)
    rogue = issue("Lab Root CA", ca=True, k=key("rogue"))  # same name as the real root, other key
    rogue_leaf = issue("consulta-client-rogue", rogue, ekus=(CLIENT_AUTH,))
    impostor = issue("RENAPO Root G2", ca=True, k=key("impostor"))  # RENAPO's new root's name, another key
    impostor_leaf = issue("consultas.renapo.lab", impostor, k=key("impostor-leaf"), san="127.0.0.1")
    lookalike = issue("renapo.lab CA", renapo_new, k=key("lookalike"))  # 'CN=renapo.lab' as a substring
    sat_ca = issue("AC del Servicio de Administracion Tributaria", ca=True, days=3650, org="SAT")
    sat_leaf = issue("SECRETARIA DE AGRICULTURA", sat_ca, ekus=(CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION),
                     org="SAT")
    c.pki = dict(ca=ca, inter=inter, client=client, renapo_old=renapo_old, renapo_new=renapo_new,
                 renapo_leaf=renapo_leaf, renapo_self=renapo_self, sat_ca=sat_ca, sat_leaf=sat_leaf,
                 impostor=impostor, rogue=rogue)
    # The registry's answer (approved_pems): today's RENAPO root and the renewed one.
    approved = pem_str(renapo_old, renapo_new)

    roots = [f("root.pem", pem(ca))]
    key_pem = f("client.key", key_bytes(client.key))
    current_bundle = f("current-bundle.pem", pem(renapo_old))
    p12 = lambda name, enc, items=(inter,): f(name, pkcs12.serialize_key_and_certificates(  # noqa: E731
        b"client", client.key, client.cert, [i.cert for i in items], enc))

    # ---- good deliveries
    c.add("identity_pem_fullchain", "identity", certificate=f("fullchain.pem", pem(client, inter)),
          private_key=key_pem, trusted_roots=roots)
    pkcs1 = serialization.PrivateFormat.TraditionalOpenSSL
    c.add("identity_pem_any_order_pkcs1_encrypted", "identity", certificate=f("shuffled.pem", pem(ca, client, inter)),
          private_key=f("client-pkcs1-enc.key", key_bytes(client.key, fmt=pkcs1, passphrase=PASSPHRASE)),
          private_key_passphrase=PASSPHRASE, trusted_roots=roots)
    c.add("identity_der_leaf", "identity", certificate=f("client.der", client.cert.public_bytes(DER)),
          private_key=f("client-pkcs8.der", key_bytes(client.key, DER)),
          trusted_roots=[f("inter.pem", pem(inter))])
    sat_cer = f("sat.cer", sat_leaf.cert.public_bytes(DER))
    sat_roots = [f("sat-ca.pem", pem(sat_ca))]
    sat_key = f("sat.key", key_bytes(sat_leaf.key, DER, passphrase=PASSPHRASE))
    c.add("identity_sat_cer_key", "identity", certificate=sat_cer, private_key=sat_key,
          private_key_passphrase=PASSPHRASE, trusted_roots=sat_roots,
          expected_subject="CN=SECRETARIA DE AGRICULTURA,O=SAT",
          expected_issuer="cn=AC del Servicio de  Administracion Tributaria,o=SAT")  # case and spaces do not matter
    c.add("identity_p12_modern", "identity", pkcs12=p12("modern.p12", serialization.BestAvailableEncryption(
        PASSPHRASE.encode())), pkcs12_passphrase=PASSPHRASE, trusted_roots=roots)
    legacy = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(2048)
              .key_cert_algorithm(PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(hashes.SHA1())  # noqa: S303 - what legacy files use
              .build(PASSPHRASE.encode()))
    c.add("identity_p12_legacy_3des", "identity", pkcs12=p12("legacy-3des.p12", legacy),
          pkcs12_passphrase=PASSPHRASE, trusted_roots=roots)
    c.add("identity_p12_legacy_rc2", "identity", pkcs12=_openssl_rc2(c, client, inter), pkcs12_passphrase=PASSPHRASE,
          trusted_roots=roots)
    combined = pem(client, inter) + key_bytes(client.key)
    c.add("identity_combined_pem", "identity", certificate=f("combined.pem", combined), trusted_roots=roots)
    ec_leaf = issue("consulta-ec", inter, k=key("ec256", "ec", 256), ekus=(CLIENT_AUTH,))
    c.add("identity_ec", "identity", certificate=f("ec.pem", pem(ec_leaf, inter)),
          private_key=f("ec.key", key_bytes(ec_leaf.key, fmt=pkcs1)),
          trusted_roots=roots)
    c.add("trust_self_signed_fingerprint", "trust", certificate=f("renapo-self.cer",
                                                                  renapo_self.cert.public_bytes(DER)),
          expected_fingerprint=renapo_self.cert.fingerprint(hashes.SHA256()).hex(":").upper(),
          current=current_bundle, approved_anchors=pem_str(renapo_old, renapo_self))
    c.add("trust_chain_fingerprint_plain", "trust", certificate=f("renapo-chain.pem", pem(renapo_new, renapo_leaf)),
          expected_fingerprint=fingerprint(renapo_new), current=current_bundle, approved_anchors=approved)
    c.add("trust_fingerprint_of_leaf", "trust", certificate=f("renapo-chain2.pem", pem(renapo_leaf, renapo_new)),
          expected_fingerprint="SHA256 Fingerprint=" + renapo_leaf.cert.fingerprint(hashes.SHA256()).hex(":").upper(),
          current=current_bundle, approved_anchors=approved)
    c.add("trust_leaf_under_approved_anchor", "trust", certificate=f("renapo-leaf.pem", pem(renapo_leaf)),
          current=current_bundle, approved_anchors=approved)
    c.add("trust_p7b", "trust", certificate=f("renapo.p7b", pkcs7.serialize_certificates(
        [renapo_leaf.cert, renapo_new.cert], DER)), approved_anchors=approved)
    c.add("trust_exact_subject", "trust", certificate=str(root / "renapo-chain.pem"), approved_anchors=approved,
          expected_subject="CN=consultas.renapo.lab,O=Lab", expected_issuer="CN=RENAPO Root G2,O=Lab")
    c.add("trust_subject_one_of_several", "trust", certificate=str(root / "renapo-chain.pem"),
          approved_anchors=approved,
          expected_subject=["CN=ws.renapo.lab,O=Lab", "O=Lab+CN=other", "CN=consultas.renapo.lab,O=Lab"])

    # ---- bad deliveries, one code each (and one with several)
    c.add("garbage_certificate", "trust", certificate=f("garbage.cer", b"\x30\x82\x01\x00 not a certificate"))
    c.add("missing_file", "trust", certificate=str(root / "does-not-exist.pem"))
    modern = (root / "modern.p12").read_bytes()
    c.add("truncated_p12", "identity", pkcs12=f("truncated.p12", modern[: len(modern) // 2]),
          pkcs12_passphrase=PASSPHRASE)
    c.add("key_only_pem", "trust", certificate=key_pem)
    c.add("two_leaves", "identity", certificate=f("two-leaves.pem", pem(client, other_client, inter)),
          private_key=key_pem, trusted_roots=roots)
    c.add("p12_wrong_password", "identity", pkcs12=str(root / "modern.p12"), pkcs12_passphrase="wrong")
    c.add("sat_key_wrong_password", "identity", certificate=sat_cer, private_key=sat_key,
          private_key_passphrase="wrong", trusted_roots=sat_roots)
    c.add("encrypted_key_no_password", "identity", certificate=sat_cer, private_key=sat_key, trusted_roots=sat_roots)
    c.add("key_mismatch", "identity", certificate=str(root / "fullchain.pem"),
          private_key=f("other.key", key_bytes(key("other"))), trusted_roots=roots)
    n = client.key.private_numbers()
    corrupt = rsa.RSAPrivateNumbers(n.p, n.q, n.d + 2, n.dmp1 + 2, n.dmq1, n.iqmp, n.public_numbers).private_key(
        unsafe_skip_rsa_key_validation=True)  # right public half, broken private half
    c.add("corrupt_key", "identity", certificate=str(root / "fullchain.pem"),
          private_key=f("corrupt.key", key_bytes(corrupt)), trusted_roots=roots)
    for name, kwargs in (("not_yet_valid", dict(start=3 * DAY)), ("expired", dict(start=-400 * DAY, days=-1)),
                         ("expires_soon", dict(days=10))):
        leaf = issue(f"consulta-{name}", inter, k=client.key, ekus=(CLIENT_AUTH,), **kwargs)
        c.add(name, "identity", certificate=f(f"{name}.pem", pem(leaf, inter)), private_key=key_pem,
              trusted_roots=roots)
    rogue_pem = pem(rogue_leaf)
    c.add("rogue_chain_with_root", "identity", certificate=f("rogue-chain.pem", rogue_pem + pem(rogue)),
          private_key=f("rogue.key", key_bytes(rogue_leaf.key)), trusted_roots=roots)
    c.add("rogue_leaf_alone", "identity", certificate=f("rogue-leaf.pem", rogue_pem),
          private_key=str(root / "rogue.key"), trusted_roots=roots)
    c.add("missing_intermediate", "identity", certificate=f("leaf-only.pem", pem(client)), private_key=key_pem,
          trusted_roots=roots)
    c.add("identity_bad_intermediate", "identity", certificate=f("bad-inter.pem", pem(client, tampered(inter))),
          private_key=key_pem, trusted_roots=roots)
    weak = issue("consulta-weak", inter, k=key("rsa1024", size=1024), ekus=(CLIENT_AUTH,))
    c.add("rsa_1024", "identity", certificate=f("weak.pem", pem(weak, inter)),
          private_key=f("weak.key", key_bytes(weak.key)), trusted_roots=roots)
    weak_ec = issue("consulta-ec192", inter, k=key("ec192", "ec", 192), ekus=(CLIENT_AUTH,))
    c.add("ec_192", "identity", certificate=f("ec192.pem", pem(weak_ec, inter)),
          private_key=f("ec192.key", key_bytes(weak_ec.key)), trusted_roots=roots)
    for digest in ("sha1", "md5"):
        c.add(f"{digest}_signature", "identity", certificate=_openssl_signed(c, digest, client, inter),
              private_key=key_pem, trusted_roots=roots)
    server_only = issue("consulta-server-only", inter, k=client.key, ekus=(SERVER_AUTH,))
    c.add("identity_server_only", "identity", certificate=f("server-only.pem", pem(server_only, inter)),
          private_key=key_pem, trusted_roots=roots)
    client_only = issue("ws-client-only.renapo.lab", ekus=(CLIENT_AUTH,))
    c.add("trust_client_only", "trust", certificate=f("client-only.pem", pem(client_only)),
          expected_fingerprint=fingerprint(client_only), approved_anchors=pem_str(client_only))
    c.add("wrong_subject", "identity", certificate=str(root / "fullchain.pem"), private_key=key_pem,
          trusted_roots=roots, expected_subject="CN=other")
    c.add("wrong_issuer", "identity", certificate=str(root / "fullchain.pem"), private_key=key_pem,
          trusted_roots=roots, expected_issuer="CN=SAT")
    c.add("identity_without_key", "identity", certificate=str(root / "fullchain.pem"), trusted_roots=roots)
    c.add("trust_unapproved", "trust", certificate=str(root / "renapo-chain.pem"), current=current_bundle,
          approved_anchors=pem_str(renapo_old))
    c.add("trust_no_registry", "trust", certificate=str(root / "renapo-chain.pem"), current=current_bundle)
    # The forger's delivery with a letter stating the forger's own fingerprint: the match trusts nothing.
    c.add("trust_forged_letter", "trust", certificate=f("rogue-anchor.pem", pem(rogue)),
          expected_fingerprint=fingerprint(rogue), current=current_bundle, approved_anchors=approved)
    c.add("trust_fingerprint_mismatch", "trust", certificate=str(root / "renapo-chain.pem"),
          expected_fingerprint=fingerprint(renapo_old), current=current_bundle, approved_anchors=approved)
    c.add("trust_missing_issuer", "trust", certificate=str(root / "renapo-leaf.pem"),
          approved_anchors=pem_str(renapo_old))
    c.add("trust_bad_signature", "trust", certificate=f("impostor-leaf.pem", pem(impostor_leaf)),
          approved_anchors=approved)
    c.add("trust_bad_signature_in_delivery", "trust", certificate=f("impostor-chain.pem", pem(impostor_leaf,
                                                                                             renapo_new)),
          approved_anchors=approved)
    c.add("trust_tampered_self_signed", "trust", certificate=f("tampered-self.pem", pem(tampered(renapo_self))),
          approved_anchors=pem_str(renapo_self))
    c.add("trust_subject_substring", "trust", certificate=f("lookalike.pem", pem(lookalike)),
          approved_anchors=approved, expected_subject="CN=renapo.lab,O=Lab")
    many = issue("consulta-many", inter, k=key("rsa1024"), ekus=(SERVER_AUTH,), start=-400 * DAY, days=-2)
    c.add("several_at_once", "identity", certificate=f("many.pem", pem(many, inter)), private_key=key_pem,
          trusted_roots=roots)
    assert set(c.cases) == set(GOOD) | set(BAD), set(c.cases) ^ (set(GOOD) | set(BAD))
    return c


def _openssl_rc2(c, client, inter):
    """A legacy RC2-40 PKCS#12 as old Windows exports it; cryptography cannot write RC2, openssl -legacy can."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    cert = c.file("rc2-in.pem", pem(client, inter))
    k = c.file("rc2-in.key", key_bytes(client.key))
    out = str(c.root / "legacy-rc2.p12")
    subprocess.run(["openssl", "pkcs12", "-export", "-legacy", "-certpbe", "PBE-SHA1-RC2-40", "-keypbe",
                    "PBE-SHA1-3DES", "-in", cert, "-inkey", k, "-out", out, "-passout", f"pass:{PASSPHRASE}"],
                   check=True, capture_output=True)
    return out


def _openssl_signed(c, digest, leaf, signer):
    """A leaf signed with SHA-1/MD5: cryptography no longer signs with them, openssl still does."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    paths = {n: c.file(f"{digest}-{n}", data) for n, data in (
        ("leaf.key", key_bytes(leaf.key)), ("ca.pem", pem(signer)), ("ca.key", key_bytes(signer.key)),
        ("ext", b"basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n"
                b"extendedKeyUsage=clientAuth\n"))}
    csr = subprocess.run(["openssl", "req", "-new", "-key", paths["leaf.key"], "-subj", f"/O=Lab/CN=consulta-{digest}"],
                         check=True, capture_output=True).stdout
    out = subprocess.run(["openssl", "x509", "-req", f"-{digest}", "-days", "365", "-CA", paths["ca.pem"], "-CAkey",
                          paths["ca.key"], "-extfile", paths["ext"]], input=csr, check=True, capture_output=True).stdout
    return c.file(f"{digest}.pem", out + pem(signer))


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory):
    return build(tmp_path_factory.mktemp("deliveries"))


class TLSServer:
    """A real TLS endpoint on an ephemeral loopback port presenting a given chain."""

    def __init__(self, chain_pem, key_pem, tmp):
        (tmp / "srv.pem").write_bytes(chain_pem)
        (tmp / "srv.key").write_bytes(key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tmp / "srv.pem", tmp / "srv.key")
        self.sni = []  # the server name each client sent (None: no SNI extension)
        self.ctx.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self):
        self.sock.close()


@pytest.fixture
def tls_server(tmp_path):
    servers = []

    def start(chain_pem, key_pem, server=False):
        servers.append(TLSServer(chain_pem, key_pem, tmp_path))
        return servers[-1] if server else servers[-1].endpoint

    yield start
    for s in servers:
        s.close()
