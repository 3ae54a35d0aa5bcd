"""Reads a certificate delivery with `cryptography`: PEM/DER/PKCS#7 certificates, PEM/DER keys, PKCS#12 files.

Pure code (no Ansible import). Every failure is a `LoadError(code, message)`; messages name the file and the
defect, never a passphrase or a key byte.
"""
from __future__ import annotations

from ansible.module_utils.pki_format import CERT_LABELS, der_tlv, der_well_formed, pem_matches

try:  # a module without cryptography fails with missing_required_lib("cryptography"), not an import traceback
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12
except ImportError:
    import traceback
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None

_KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY")


class LoadError(Exception):
    """A delivery file that cannot be used, with its defect code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise LoadError("UNREADABLE", f"{what} {path}: {e.strerror or e}") from None


def _password(passphrase):
    return None if passphrase is None else passphrase.encode("utf-8")


def pem_blocks(data, source="data"):
    """(label, block bytes) of every PEM block in data (pki_format reads them); a block that is not base64 is
    UNREADABLE."""
    try:
        return [(label, block) for label, _der, block in pem_matches(data)]
    except ValueError as e:
        raise LoadError("UNREADABLE", f"{source}: {e}") from None


def parse_certificates(data, source):
    """Every certificate in data: PEM (any number, any order), DER, or PKCS#7 (PEM or DER)."""
    try:
        if b"-----BEGIN" in data:
            blocks = pem_blocks(data, source)
            certs = []
            for label, block in blocks:
                if label in CERT_LABELS:
                    certs.append(x509.load_pem_x509_certificate(block))
                elif label in ("PKCS7", "CMS"):
                    certs.extend(_pkcs7().load_pem_pkcs7_certificates(block))
            if not blocks:
                raise ValueError("no complete PEM block")
            return certs
        if not data:
            raise ValueError("empty file")
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError as der_error:
            try:
                return list(_pkcs7().load_der_pkcs7_certificates(data))
            except ValueError:
                raise der_error from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise LoadError("UNREADABLE", f"{source}: not a readable PEM/DER certificate file ({_short(e)})") from None


def _pkcs7():
    from cryptography.hazmat.primitives.serialization import pkcs7  # ~7 ms to import and rarely needed

    return pkcs7


def _short(exc):
    # cryptography's parser errors can be long multi-line ASN.1 traces: one line is enough to act on.
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def parse_private_key(data, passphrase, source):
    """A private key from PEM or DER, PKCS#1 or PKCS#8, encrypted or not."""
    loader = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    if b"-----BEGIN" in data:
        keys = [block for label, block in pem_blocks(data, source) if label in _KEY_LABELS]
        if not keys:
            raise LoadError("UNREADABLE", f"{source}: no PEM private key block")
        data = keys[0]
    # RSA consistency checking costs ~60 ms per load; the caller proves the key by a signature against the leaf.
    try:
        return loader(data, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError:
        pass  # encrypted: handled below
    except (ValueError, UnsupportedAlgorithm) as e:
        raise LoadError("UNREADABLE", f"{source}: not a readable private key ({_short(e)})") from None
    if not passphrase:
        raise LoadError("WRONG_PASSWORD", f"{source}: the private key is encrypted and no passphrase was given")
    try:
        return loader(data, password=_password(passphrase), unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise LoadError("WRONG_PASSWORD", f"{source}: the passphrase does not decrypt the private key") from None


def _looks_like_pkcs12(data):
    """True when data is one whole DER SEQUENCE starting with INTEGER 3 (PFX version): corrupt vs wrong password."""
    if not der_well_formed(data):
        return False
    _tag, start, _end = der_tlv(data, 0)
    return data[start:start + 3] == b"\x02\x01\x03"


def parse_pkcs12(data, passphrase, source):
    """(key, certificate, additional certificates) from a PKCS#12 file, modern (AES) or legacy (RC2-40/3DES)."""
    if not _looks_like_pkcs12(data):
        raise LoadError("UNREADABLE", f"{source}: not a readable PKCS#12 file")
    attempts = [_password(passphrase)] if passphrase else [None, b""]
    for password in attempts:
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, password)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return key, cert, list(extra or [])
    if passphrase:
        raise LoadError("WRONG_PASSWORD", f"{source}: the passphrase does not open the PKCS#12 file")
    raise LoadError("WRONG_PASSWORD", f"{source}: the PKCS#12 file is protected and no passphrase was given")
