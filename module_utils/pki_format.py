# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one implementation of each PKI text primitive: fingerprint, serial, PEM blocks, DER lengths.

Every layer (hosts, controller, mail intake, the ticket store, the anchor registry) spells a certificate the same
way because it calls these functions: a SHA-256 fingerprint is openssl's ``AB:CD:...`` (upper-case colon hex, what
``openssl x509 -fingerprint -sha256`` prints), a serial is openssl's ``x509 -serial`` form (upper-case hex, an even
number of digits). Two spellings of one certificate would make comparisons fail silently.

Stdlib only: this runs on the managed hosts under Debian's /usr/bin/python3 as well as on the controller.
"""
import base64
import binascii
import hashlib
import re

# One PEM block (RFC 7468): the END label must repeat the BEGIN label.
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
# RFC 1421 headers of legacy encrypted keys ("Proc-Type: 4,ENCRYPTED", "DEK-Info: ...") precede a blank line.
_PEM_HEADERS_RE = re.compile(rb"^\s*(?:[A-Za-z0-9-]+:[^\n]*\n)+\s*\n", re.DOTALL)
# The prefixes people and tools put before a SHA-256 fingerprint: "sha256:", "SHA256 Fingerprint=", "SHA-256: ".
_FP_PREFIX_RE = re.compile(r"^\s*sha-?256(?:\s*fingerprint)?\s*[:=]?\s*", re.IGNORECASE)
_FP_SEPARATORS_RE = re.compile(r"[\s:]")
CERT_LABELS = ("CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE")


def _colon_hex(data):
    return ":".join("%02X" % b for b in data)


def sha256_fingerprint(der):
    """openssl's SHA-256 fingerprint of DER bytes: 'AB:CD:...' (32 upper-case colon-separated pairs)."""
    return _colon_hex(hashlib.sha256(bytes(der)).digest())


def fingerprint_text(value):
    """The one form ('AB:CD:...') of a SHA-256 fingerprint from any usual spelling: colons or spaces or none, any
    case, a 'sha256:' / 'SHA256 Fingerprint=' prefix; or from a PEM text holding exactly one certificate.
    Raises ValueError naming the defect."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    if not isinstance(value, str):
        raise ValueError("a SHA-256 fingerprint must be text, not %s" % type(value).__name__)
    if "-----BEGIN" in value:
        certs = [der for label, der in pem_blocks(value) if label in CERT_LABELS]
        if len(certs) != 1:
            raise ValueError("a fingerprint given as PEM must hold exactly one certificate, not %d" % len(certs))
        return sha256_fingerprint(certs[0])
    shown = value.strip()[:80]
    digits = _FP_SEPARATORS_RE.sub("", _FP_PREFIX_RE.sub("", value))
    if not digits:
        raise ValueError("%r is not a SHA-256 fingerprint: it holds no hex digits" % shown)
    bad = sorted({c for c in digits if c not in "0123456789abcdefABCDEF"})
    if bad:
        raise ValueError("%r is not a SHA-256 fingerprint: %r is not a hex digit" % (shown, "".join(bad)[:10]))
    if len(digits) != 64:
        raise ValueError("%r is not a SHA-256 fingerprint: %d hex digits, not 64%s" % (
            shown, len(digits), " (a SHA-1 fingerprint?)" if len(digits) == 40 else ""))
    return _colon_hex(bytes.fromhex(digits))


def serial_text(n):
    """openssl's `x509 -serial` form of a serial number: upper-case hex, an even number of digits ('0B0C');
    a negative serial (non-conforming, but found in the wild) keeps its sign, as openssl prints it."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError("a serial number must be an integer, not %s" % type(n).__name__)
    digits = "%X" % abs(n)
    if len(digits) % 2:
        digits = "0" + digits
    return ("-" if n < 0 else "") + digits


def _as_bytes(data):
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


def pem_matches(data):
    """[(label, der, block bytes)] for every complete PEM block in data (str or bytes), in order. `block bytes` is
    the block's own text, for loaders that need it (legacy encrypted keys carry headers outside the DER)."""
    data = _as_bytes(data)
    out = []
    for i, m in enumerate(_PEM_RE.finditer(data), 1):
        label = m.group(1).decode("ascii")
        body = _PEM_HEADERS_RE.sub(b"", m.group(2), count=1)
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("PEM block %d (%s): bad base64: %s" % (i, label, exc)) from None
        out.append((label, der, m.group(0)))
    return out


def pem_blocks(data):
    """[(label, der)] for every complete PEM block in data (str or bytes), in order; ValueError on bad base64."""
    return [(label, der) for label, der, _block in pem_matches(data)]


def pem_encode(label, der):
    """One PEM block (str) as openssl writes it: 64-character base64 lines, trailing newline."""
    b64 = base64.b64encode(bytes(der)).decode("ascii")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)


def der_tlv(data, pos=0):
    """(tag, content_start, content_end) of the DER element at pos; ValueError naming the defect.

    Single-byte tags and definite lengths only (what certificates, keys, PKCS#7 and PKCS#12 use); the content must
    fit in data."""
    if pos < 0 or pos + 2 > len(data):
        raise ValueError("truncated DER at offset %d" % pos)
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tag at offset %d" % (pos - 2))
    if length == 0x80:
        raise ValueError("indefinite length (BER, not DER) at offset %d" % (pos - 2))
    if length & 0x80:
        width = length & 0x7F
        if width > 4:
            raise ValueError("DER length of %d bytes at offset %d" % (width, pos - 2))
        if pos + width > len(data):
            raise ValueError("truncated DER length at offset %d" % (pos - 2))
        length = int.from_bytes(data[pos:pos + width], "big")
        pos += width
    if pos + length > len(data):
        raise ValueError("truncated DER: element at offset %d needs %d bytes, %d left" % (
            pos, length, len(data) - pos))
    return tag, pos, pos + length


def der_children(data, start, end):
    """(tag, content_start, content_end) of each element between start and end (a constructed element's content)."""
    pos = start
    while pos < end:
        tag, s, e = der_tlv(data, pos)
        if e > end:
            raise ValueError("DER element at offset %d overruns its parent" % pos)
        yield tag, s, e
        pos = e


def der_well_formed(data):
    """True when data is one DER SEQUENCE covering exactly the data: what every certificate, key, PKCS#7 and
    PKCS#12 file is (a corrupt or truncated upload is not)."""
    try:
        tag, _start, end = der_tlv(bytes(data), 0)
    except (ValueError, TypeError):
        return False
    return tag == 0x30 and end == len(data)
