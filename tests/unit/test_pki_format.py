"""pki_format: fingerprint, serial, PEM and DER primitives, each checked against openssl itself (the oracle)."""
import re
import subprocess

import pytest
from ansible.module_utils import pki_format as pf


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Certificates made by openssl with serials chosen to hit the odd-digit and leading-zero cases: {serial: pem}."""
    d = tmp_path_factory.mktemp("pki")
    key = d / "k.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    out = {}
    for serial in (1, 0x0B0C, 0xABC, 0x80, 0x7F, 0xFF00, 2**159 - 1, 0x1000000000000000000000000000001):
        pem = openssl("req", "-x509", "-new", "-key", str(key), "-subj", "/CN=serial %d" % serial, "-days", "30",
                      "-set_serial", str(serial))
        out[serial] = pem
    return out


def test_serial_text_matches_openssl(certs):
    for serial, pem in certs.items():
        want = openssl("x509", "-noout", "-serial", data=pem).decode().strip().split("=", 1)[1]
        assert pf.serial_text(serial) == want, serial


@pytest.mark.parametrize(("n", "text"), [(0, "00"), (0xB, "0B"), (0xB0C, "0B0C"), (0x1A2B, "1A2B"), (-0xB, "-0B")])
def test_serial_text_even_digits(n, text):
    assert pf.serial_text(n) == text


@pytest.mark.parametrize("bad", ["0B", 1.5, None, True])
def test_serial_text_refuses_non_integers(bad):
    with pytest.raises(ValueError, match="integer"):
        pf.serial_text(bad)


def test_sha256_fingerprint_and_pem_blocks_match_openssl(certs):
    bundle = b"".join(certs.values())
    blocks = pf.pem_blocks(bundle)
    assert [label for label, _ in blocks] == ["CERTIFICATE"] * len(certs)
    for (_label, der), pem in zip(blocks, certs.values(), strict=True):
        assert der == openssl("x509", "-outform", "DER", data=pem)
        want = openssl("x509", "-noout", "-fingerprint", "-sha256", data=pem).decode().strip().split("=", 1)[1]
        assert pf.sha256_fingerprint(der) == want
        assert pf.fingerprint_text(pem.decode()) == want
        # pem_encode writes what openssl writes
        assert pf.pem_encode("CERTIFICATE", der).encode() == openssl("x509", data=pem)


def test_fingerprint_text_accepts_usual_spellings(certs):
    pem = next(iter(certs.values()))
    want = openssl("x509", "-noout", "-fingerprint", "-sha256", data=pem).decode().strip().split("=", 1)[1]
    digits = want.replace(":", "")
    for spelling in (want, want.lower(), digits, digits.lower(), "sha256:" + digits.lower(),
                     "SHA256 Fingerprint=" + want, "sha256 Fingerprint=" + want.lower(), "SHA-256: " + want,
                     " ".join(want.split(":")), "  %s\n" % want, digits.encode()):
        assert pf.fingerprint_text(spelling) == want, spelling


@pytest.mark.parametrize(("bad", "defect"), [
    ("", "no hex digits"), ("sha256:", "no hex digits"), ("AB" * 31, "62 hex digits, not 64"),
    ("AB" * 20, "SHA-1"), ("ZZ" * 32, "'Z' is not a hex digit"), ("AB-" * 32, "'-' is not a hex digit"),
    (None, "must be text"),
])
def test_fingerprint_text_names_the_defect(bad, defect):
    with pytest.raises(ValueError, match=re.escape(defect)):
        pf.fingerprint_text(bad)


def test_fingerprint_text_pem_must_hold_one_certificate(certs):
    with pytest.raises(ValueError, match="exactly one certificate, not 2"):
        pf.fingerprint_text(b"".join(list(certs.values())[:2]))


def test_pem_blocks_labels_text_and_legacy_headers(tmp_path):
    key = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024")
    # A legacy encrypted key carries RFC 1421 headers inside the block; the block text stays whole for loaders.
    legacy = openssl("rsa", "-aes128", "-traditional", "-passout", "pass:x", data=key)
    assert b"Proc-Type" in legacy
    text = "intro\n" + key.decode() + "between\n" + legacy.decode() + "-----BEGIN CERTIFICATE-----\nAAA"
    found = pf.pem_matches(text)
    assert [f[0] for f in found] == ["PRIVATE KEY", "RSA PRIVATE KEY"]  # the unterminated block is not a block
    assert found[0][1] == openssl("pkcs8", "-topk8", "-nocrypt", "-outform", "DER", data=key)
    assert found[1][2] == legacy.strip()
    with pytest.raises(ValueError, match=r"PEM block 1 \(CERTIFICATE\): bad base64"):
        pf.pem_blocks("-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n")
    assert pf.pem_blocks("-----BEGIN CERTIFICATE-----\nAAA=\n-----END X509 CRL-----") == []


def _asn1parse(der):
    """openssl asn1parse's (offset, header length, content length) of the top-level elements' children."""
    out = openssl("asn1parse", "-inform", "DER", data=der).decode()
    return [tuple(int(x) for x in m.groups()) + (int(d),)
            for m, d in ((re.search(r"^\s*(\d+):d=\s*\d+\s+hl=\s*(\d+)\s+l=\s*(\d+)", line),
                          re.search(r"d=\s*(\d+)", line).group(1)) for line in out.splitlines())]


def _walk(der, start, end, depth):
    """(offset, header length, content length, depth) of every element, descending as asn1parse does."""
    out, pos = [], start
    while pos < end:
        tag, s, e = pf.der_tlv(der, pos)
        out.append((pos, s - pos, e - s, depth))
        if tag & 0x20:  # constructed: asn1parse shows its children too
            out.extend(_walk(der, s, e, depth + 1))
        pos = e
    return out


def test_der_tlv_matches_openssl_asn1parse(certs, tmp_path):
    p12 = tmp_path / "x.p12"
    key = tmp_path / "k.pem"
    pem = certs[0x0B0C]
    (tmp_path / "c.pem").write_bytes(pem)
    key.write_bytes(openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"))
    openssl("req", "-x509", "-new", "-key", str(key), "-subj", "/CN=p12", "-days", "3", "-out",
            str(tmp_path / "r.pem"))
    openssl("pkcs12", "-export", "-inkey", str(key), "-in", str(tmp_path / "r.pem"), "-passout", "pass:x",
            "-out", str(p12))
    for der in (openssl("x509", "-outform", "DER", data=pem), p12.read_bytes()):
        # walk every constructed element the way asn1parse does, compare offsets and lengths
        mine = _walk(der, 0, len(der), 0)
        assert mine == _asn1parse(der)
        assert pf.der_well_formed(der)
        assert not pf.der_well_formed(der[:-1])
        assert not pf.der_well_formed(der + b"\x00")


@pytest.mark.parametrize(("data", "defect"), [
    (b"\x30", "truncated DER at offset 0"), (b"\x30\x05\x02\x01", "truncated DER: element"),
    (b"\x30\x80\x00\x00", "indefinite length"), (b"\x3f\x01\x00", "multi-byte DER tag"),
    (b"\x30\x85\x00\x00\x00\x00\x01\x00", "length of 5 bytes"), (b"\x30\x82\x01", "truncated DER length"),
])
def test_der_tlv_names_the_defect(data, defect):
    with pytest.raises(ValueError, match=re.escape(defect)):
        pf.der_tlv(data, 0)
    assert not pf.der_well_formed(data)


def test_der_well_formed_wants_one_sequence():
    assert pf.der_well_formed(b"\x30\x00")
    assert pf.der_well_formed(b"\x30\x81\x80" + b"\x05\x00" * 64)
    assert not pf.der_well_formed(b"\x02\x01\x03")  # an INTEGER, not a SEQUENCE
    assert not pf.der_well_formed(b"")
    assert not pf.der_well_formed(b"\x30\x00\x30\x00")
