"""Reads a certificate delivery with `cryptography`: PEM/DER/PKCS#7 certificates, PEM/DER keys, PKCS#12 files.

Pure code (no Ansible import). Every failure is a `LoadError(code, message)`; messages name the file and the
defect, never a passphrase or a key byte.
"""
from __future__ import annotations

import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY", b"DSA PRIVATE KEY")


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


def pem_blocks(data):
    """(label, block bytes) of every PEM block in data."""
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def parse_certificates(data, source):
    """Every certificate in data: PEM (any number, any order), DER, or PKCS#7 (PEM or DER)."""
    try:
        if b"-----BEGIN" in data:
            blocks = pem_blocks(data)
            certs = []
            for label, block in blocks:
                if label in (b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"):
                    certs.append(x509.load_pem_x509_certificate(block))
                elif label in (b"PKCS7", b"CMS"):
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
        keys = [block for label, block in pem_blocks(data) if label in _KEY_LABELS]
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
    if len(data) < 8 or data[0] != 0x30:
        return False
    n, pos = data[1], 2
    if n & 0x80:
        width = n & 0x7F
        if not 1 <= width <= 4:
            return False
        n, pos = int.from_bytes(data[2:2 + width], "big"), 2 + width
    return pos + n == len(data) and data[pos:pos + 3] == b"\x02\x01\x03"


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
