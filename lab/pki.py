"""The lab's certificate authorities: RENAPO's server certificate by generation, and the SAT CA with its clients.

Layout under STATE/pki (keys 0600, everything written atomically, every call idempotent):
  renapo/genN/{ca.pem, ca.key, server.pem, server.key, mode}   ca.pem is the generation's trust anchor;
                                                              server.pem is the served chain (leaf first)
  renapo/presented                                            the generation the RENAPO simulator serves
  sat/{ca.pem, ca.key, server.pem, server.key, clients/<name>.pem|.key}
RENAPO's renewal comes in two steps, as RENAPO does it: publish() (new anchor, mailed with a letter) then switch().
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RENAPO_HOST = "renapo.lab"
SAT_HOST = "sat.lab"
CA_DAYS = 3650
LEAF_DAYS = 365
# A file is reused only while it stays valid at least this long: a lab up today still works next week.
MIN_LEFT = dt.timedelta(days=7)


@contextlib.contextmanager
def _lock(state: Path):
    """One writer at a time: labctl and the simulators' process may both create the PKI of the same state."""
    d = Path(state) / "pki"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Atomic write (temp file + rename) so a reader never sees half a certificate or key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write_key(path: Path, key) -> Path:
    return _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), 0o600)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _usable(*paths: Path) -> bool:
    """All files present and the first certificate in each .pem still valid for a while."""
    if not all(p.exists() for p in paths):
        return False
    return all(_load(p).not_valid_after_utc > _now() + MIN_LEFT for p in paths if p.suffix == ".pem")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as RENAPO's letter states it: AA:BB:..."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "MX"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, days: int, *, ca: bool,
          san: list | None = None, eku: list | None = None) -> x509.Certificate:
    now = _now()
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    # A CA signs certificates; a leaf only signs handshakes (ECDSA: digitalSignature covers server and client auth).
    b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), critical=True)
    if issuer_key is not key:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _server_san(host: str) -> list:
    return [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def _make_ca(d: Path, cn: str, org: str) -> tuple[x509.Certificate, object]:
    key = _new_key()
    cert = _cert(_name(cn, org), key, _name(cn, org), key, CA_DAYS, ca=True)
    _write_key(d / "ca.key", key)
    _write(d / "ca.pem", _pem(cert))
    return cert, key


def _make_server(d: Path, host: str, org: str, ca_cert, ca_key) -> None:
    key = _new_key()
    cert = _cert(_name(host, org), key, ca_cert.subject, ca_key, LEAF_DAYS, ca=False, san=_server_san(host),
                 eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    _write_key(d / "server.key", key)
    _write(d / "server.pem", _pem(cert, ca_cert))


# ---------------------------------------------------------------- RENAPO generations

def _renapo(state: Path) -> Path:
    return Path(state) / "pki" / "renapo"


def _generations(state: Path) -> list[str]:
    d = _renapo(state)
    gens = [p.name for p in d.glob("gen*") if p.name[3:].isdigit() and (p / "server.pem").exists()]
    return sorted(gens, key=lambda g: int(g[3:]))


def _make_generation(state: Path, n: int, mode: str) -> Path:
    d = _renapo(state) / f"gen{n}"
    org = "Registro Nacional de Poblacion (lab)"
    if mode == "ca":
        ca_cert, ca_key = _make_ca(d, f"RENAPO Lab Root G{n}", org)
        _make_server(d, RENAPO_HOST, org, ca_cert, ca_key)
    elif mode == "selfsigned":
        # Its own anchor (ca.pem = server.pem); CA:TRUE as `openssl req -x509` makes it, or strict verifiers refuse it.
        key = _new_key()
        cert = _cert(_name(RENAPO_HOST, org), key, _name(RENAPO_HOST, org), key, LEAF_DAYS, ca=True,
                     san=_server_san(RENAPO_HOST), eku=[ExtendedKeyUsageOID.SERVER_AUTH])
        _write_key(d / "server.key", key)
        _write(d / "ca.pem", _pem(cert))
        _write(d / "server.pem", _pem(cert))
    else:
        raise ValueError(f"mode must be 'ca' or 'selfsigned', not {mode!r}")
    _write(d / "mode", mode.encode())
    return d


def generation_paths(state: Path, gen: str) -> dict:
    d = _renapo(state) / gen
    return {"anchor": d / "ca.pem", "server_cert": d / "server.pem", "server_key": d / "server.key"}


def current_generation(state: Path) -> str:
    return (_renapo(state) / "presented").read_text().strip()


def ensure(state: Path) -> dict:
    """Creates what is missing (RENAPO gen1 presented, SAT CA + server) and returns the paths."""
    with _lock(state):
        return _ensure(Path(state))


def _ensure(state: Path) -> dict:
    g1 = _renapo(state) / "gen1"
    if not _usable(g1 / "ca.pem", g1 / "server.pem", g1 / "server.key"):
        _make_generation(state, 1, "ca")
    presented = _renapo(state) / "presented"
    if not presented.exists():
        _write(presented, b"gen1\n")
    sat = state / "pki" / "sat"
    if not _usable(sat / "ca.pem", sat / "ca.key"):
        _make_ca(sat, "SAT CA (lab)", "Servicio de Administracion Tributaria (lab)")
        (sat / "server.pem").unlink(missing_ok=True)
    if not _usable(sat / "server.pem", sat / "server.key"):
        _make_server(sat, SAT_HOST, "Servicio de Administracion Tributaria (lab)", _load(sat / "ca.pem"),
                     _load_key(sat / "ca.key"))
    gen = current_generation(state)
    cur = generation_paths(state, gen)
    return {"pki_dir": state / "pki", "renapo_anchor": g1 / "ca.pem", "renapo_generation": gen,
            "renapo_presented_anchor": cur["anchor"], "renapo_server_cert": cur["server_cert"],
            "renapo_server_key": cur["server_key"], "sat_ca": sat / "ca.pem", "sat_ca_key": sat / "ca.key",
            "sat_server_cert": sat / "server.pem", "sat_server_key": sat / "server.key"}


def issue_sat_client(state: Path, name: str, days: int = LEAF_DAYS) -> tuple[Path, Path]:
    """A client identity from the lab SAT CA (clientAuth): clients/<name>.pem (leaf + CA) and <name>.key (0600)."""
    state = Path(state)
    with _lock(state):
        _ensure(state)
        return _issue_sat_client(state, name, days)


def _issue_sat_client(state: Path, name: str, days: int) -> tuple[Path, Path]:
    sat = state / "pki" / "sat"
    cert_path, key_path = sat / "clients" / f"{name}.pem", sat / "clients" / f"{name}.key"
    if _usable(cert_path, key_path):
        return cert_path, key_path
    ca_cert, ca_key = _load(sat / "ca.pem"), _load_key(sat / "ca.key")
    key = _new_key()
    cert = _cert(_name(name, "Secretaria (lab) - cliente SAT"), key, ca_cert.subject, ca_key, days, ca=False,
                 eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _write_key(key_path, key)
    _write(cert_path, _pem(cert, ca_cert))
    return cert_path, key_path


OFICIO = """\
REGISTRO NACIONAL DE POBLACION E IDENTIDAD (LABORATORIO)
Direccion de Servicios de Consulta

Oficio No. RENAPO/DSC/{year}/{gen}
Ciudad de Mexico, a {fecha}.

A las dependencias usuarias del servicio ConsultaPorCurpService:

Por medio del presente se informa que el certificado del servicio web {host} sera renovado.
Se adjunta el nuevo certificado: {attachments}.
Para que la consulta no se interrumpa, agreguen la nueva raiz de confianza a su almacen de
certificados antes del cambio.

Raiz de confianza: {anchor_subject}
Huella digital SHA-256 de la nueva raiz de confianza:
{fingerprint}

Certificado del servidor: {leaf_subject}, numero de serie {serial}, vigente del {nb} al {na}.

Verifiquen que la huella del archivo recibido coincida con la indicada en este oficio; no instalen un
certificado cuya huella no coincida.

Atentamente,
Direccion de Servicios de Consulta, RENAPO (laboratorio)
"""


def publish(state: Path, mode: str = "ca") -> dict:
    """RENAPO's renewal, step 1: a new generation with a new anchor, and the e-mail it would send (outbox).

    Does not change what is presented. While a published generation is not yet presented, publishing again
    returns that pending publication (RENAPO announces one renewal at a time).
    """
    state = Path(state)
    with _lock(state):
        _ensure(state)
        return _publish(state, mode)


def _publish(state: Path, mode: str) -> dict:
    gens = _generations(state)
    latest, presented = gens[-1], current_generation(state)
    n = int(latest[3:])
    if int(presented[3:]) >= n:
        n += 1
        _make_generation(state, n, mode)
    gen = f"gen{n}"
    paths = generation_paths(state, gen)
    anchor = _load(paths["anchor"])
    chain = x509.load_pem_x509_certificates(paths["server_cert"].read_bytes())
    leaf = chain[0]
    outbox = state / "renapo" / "outbox" / gen
    pem_name, cer_name = f"renapo_ws_{gen}.pem", f"renapo_raiz_{gen}.cer"
    if not (outbox / "oficio.txt").exists():
        _write(outbox / pem_name, _pem(*chain) if chain[-1] == anchor else _pem(*chain, anchor))
        _write(outbox / cer_name, anchor.public_bytes(serialization.Encoding.DER))
        today = _now().date()
        _write(outbox / "oficio.txt", OFICIO.format(
            year=today.year, gen=gen.upper(), fecha=today.strftime("%d/%m/%Y"), host=RENAPO_HOST,
            attachments=f"{pem_name}, {cer_name}", anchor_subject=anchor.subject.rfc4514_string(),
            fingerprint=fingerprint(anchor), leaf_subject=leaf.subject.rfc4514_string(),
            serial=format(leaf.serial_number, "X"), nb=leaf.not_valid_before_utc.strftime("%d/%m/%Y"),
            na=leaf.not_valid_after_utc.strftime("%d/%m/%Y")).encode("utf-8"))
    return {"generation": gen, "anchor": paths["anchor"], "leaf": paths["server_cert"],
            "fingerprint_sha256": fingerprint(anchor), "outbox": outbox,
            "attachments": [outbox / pem_name, outbox / cer_name], "oficio": outbox / "oficio.txt",
            "mode": (paths["anchor"].parent / "mode").read_text().strip()}


def switch(state: Path) -> str:
    """RENAPO's renewal, step 2: present the latest published generation (the simulator reloads per handshake)."""
    state = Path(state)
    with _lock(state):
        _ensure(state)
        latest = _generations(state)[-1]
        if current_generation(state) != latest:
            _write(_renapo(state) / "presented", f"{latest}\n".encode())
        return latest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True, type=Path)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ensure")
    sub.add_parser("publish").add_argument("--mode", choices=("ca", "selfsigned"), default="ca")
    sub.add_parser("switch")
    sub.add_parser("current")
    sub.add_parser("client").add_argument("name")
    args = ap.parse_args(argv)
    if args.cmd == "ensure":
        out = ensure(args.state)
    elif args.cmd == "publish":
        out = publish(args.state, args.mode)
    elif args.cmd == "switch":
        out = {"presented": switch(args.state)}
    elif args.cmd == "current":
        out = {"presented": current_generation(args.state)}
    else:
        out = dict(zip(("cert", "key"), issue_sat_client(args.state, args.name), strict=True))
    print(json.dumps(out, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
