"""mail_auth: real DKIM signatures (dkimpy, RSA keys made here) checked against a real DNS server (dnsmasq).

The receiving server is simulated the way the lab's OpenDKIM behaves: it verifies the message against the same DNS
and puts its own Authentication-Results header on top. Everything else is what a sender (or a forger) can write.
"""
import base64
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP

import dkim
import dns.nameserver
import dns.resolver
import pytest
from ansible.module_utils.mail_auth import (
    MAX_SIGNATURES,
    AuthVerdict,
    aligned,
    authenticate,
    domain_in,
    organizational_domain,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TRUSTED = "mx.agricultura.gob.mx"
RENAPO = "renapo.gob.mx"
# (signing domain, selector) -> which test key signs for it; the DNS serves one TXT record per entry.
SIGNERS = {
    ("renapo.gob.mx", "lab2026"): "renapo",
    ("correo.renapo.gob.mx", "s1"): "renapo",
    ("otro.example", "s1"): "otro",
    ("renapo-gob.mx", "s1"): "lookalike",
}
SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


# --- fixtures: keys, a real DNS server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys():
    made = {}
    for name in sorted(set(SIGNERS.values())):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        made[name] = {
            "private_pem": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption()),
            "public_b64": base64.b64encode(key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode(),
        }
    return made


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def txt_record(name: str, text: str) -> str:
    """dnsmasq's txt-record= line, the value split into strings of at most 255 bytes."""
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)]
    return f"txt-record={name}," + ",".join(f'"{chunk}"' for chunk in chunks)


@pytest.fixture(scope="module")
def nameserver(keys, tmp_path_factory):
    """A real dnsmasq on 127.0.0.1:<free port> serving the selectors' keys; yields "127.0.0.1@port"."""
    binary = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if shutil.os.path.exists("/usr/sbin/dnsmasq") else None)
    if not binary:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base; scripts/bootstrap.sh installs it)")
    workdir = tmp_path_factory.mktemp("dns")
    lines = [txt_record(f"{selector}._domainkey.{domain}", f"v=DKIM1; k=rsa; p={keys[who]['public_b64']}")
             for (domain, selector), who in SIGNERS.items()]
    lines += ["local=/mx/", "local=/example/"]  # unknown names answer NXDOMAIN, nothing goes upstream
    conf = workdir / "dnsmasq.conf"
    conf.write_text("\n".join(lines) + "\n")
    port = free_port()
    log = open(workdir / "dnsmasq.log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([binary, "-k", "--no-resolv", "--no-hosts", "--bind-interfaces",
                             "--listen-address=127.0.0.1", f"--port={port}", f"--conf-file={conf}", "--pid-file=",
                             "--log-facility=-"], stdout=log, stderr=subprocess.STDOUT)
    try:
        resolver = query_resolver(f"127.0.0.1@{port}")
        for _ in range(100):
            try:
                resolver.resolve(f"lab2026._domainkey.{RENAPO}", "TXT", lifetime=0.2)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None:
                    pytest.fail(f"dnsmasq exited: {(workdir / 'dnsmasq.log').read_text()}")
                time.sleep(0.05)
        else:
            pytest.fail("dnsmasq did not answer within 5 s")
        yield f"127.0.0.1@{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query_resolver(server: str) -> dns.resolver.Resolver:
    address, port = server.split("@")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(address, int(port))]
    return resolver


# --- messages as senders and the receiving server make them ------------------------------------------------------
def message(sender=f"Dirección General del RENAPO <avisos@{RENAPO}>", body=None, extra=(), subject=None) -> bytes:
    msg = EmailMessage()
    if sender is not None:
        msg["From"] = sender
    msg["To"] = "mesa.servicios@agricultura.gob.mx"
    msg["Subject"] = subject or "Renovación del certificado del servicio de consulta por CURP"
    msg["Date"] = "Mon, 02 Mar 2026 10:00:00 -0600"
    msg["Message-ID"] = "<renovacion-2026@renapo.gob.mx>"
    for name, value in extra:
        msg[name] = value
    msg.set_content(body or "Huella SHA-256 del certificado: " + ":".join(["AB"] * 32) + "\n")
    return msg.as_bytes(policy=SMTP)


def sign(raw: bytes, keys, domain=RENAPO, selector=None, **options) -> bytes:
    selector = selector or next(s for (d, s) in SIGNERS if d == domain)
    key = keys[SIGNERS[(domain, selector)]]["private_pem"]
    return dkim.sign(raw, selector.encode(), domain.encode(), key, include_headers=SIGNED_HEADERS, **options) + raw


def prepend(raw: bytes, header: str) -> bytes:
    return header.encode() + b"\r\n" + raw


def received_by_mx(raw: bytes, server: str, authserv_id=TRUSTED) -> bytes:
    """What the trusted MX does: verify each signature against the DNS, put its Authentication-Results on top."""
    resolver = query_resolver(server)

    def dnsfunc(name, timeout=5):
        try:
            return b"".join(resolver.resolve(name.decode(), "TXT", lifetime=timeout)[0].strings)
        except dns.resolver.NXDOMAIN:
            return None

    verifier = dkim.DKIM(raw)
    signatures = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"]
    results = []
    for index, value in enumerate(signatures):
        tags = dkim.util.parse_tag_value(value)
        try:
            outcome = "pass" if verifier.verify(idx=index, dnsfunc=dnsfunc) else "fail"
        except dkim.DKIMException:
            outcome = "fail"
        results.append(f"dkim={outcome} (2048-bit key; unprotected) header.d={tags[b'd'].decode()} "
                       f"header.i={tags.get(b'i', b'@' + tags[b'd']).decode()} header.a=rsa-sha256 "
                       f"header.s={tags[b's'].decode()} header.b={tags[b'b'][:8].decode()}")
    return prepend(raw, f"Authentication-Results: {authserv_id};\r\n\t" + (";\r\n\t".join(results) or "dkim=none"))


def alter_body(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    return head + sep + body.replace(b"AB:AB", b"CD:AB", 1)


# --- the table ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    build: object  # (keys, nameserver) -> raw bytes
    mode: str
    authenticated: bool
    detail: str  # a fragment the detail must hold
    method: str | None = None
    pass_domains: list = field(default_factory=list)
    from_domain: str = RENAPO
    trusted: tuple = (TRUSTED, "mx2.agricultura.gob.mx")


def genuine(k, ns):
    return sign(message(), k)


def stamped(build):
    return lambda k, ns: received_by_mx(build(k, ns), ns)


FORGED_AR = f"Authentication-Results: {TRUSTED}; dkim=pass header.d={RENAPO} header.i=@{RENAPO}"

CASES = [
    Case("genuine-via-header", stamped(genuine), "header", True,
         f"dkim=pass header.d={RENAPO} aligned with {RENAPO} from trusted {TRUSTED}", "header", [RENAPO]),
    Case("genuine-via-dkim", genuine, "dkim", True,
         f"dkim=pass d={RENAPO} aligned with {RENAPO} (direct verification)", "dkim", [RENAPO]),
    Case("genuine-both", stamped(genuine), "both", True, "header: dkim=pass", "header+dkim", [RENAPO]),
    Case("genuine-either-header-suffices", stamped(genuine), "either", True, "header: dkim=pass", "header", [RENAPO]),
    Case("genuine-either-falls-back-to-dkim", genuine, "either", True,
         "header: no Authentication-Results header | dkim: dkim=pass", "dkim", [RENAPO]),
    Case("subdomain-signer-aligns", stamped(lambda k, ns: sign(message(), k, domain="correo.renapo.gob.mx")), "both",
         True, "aligned with renapo.gob.mx", "header+dkim", ["correo.renapo.gob.mx"]),
    Case("subdomain-from-aligns", lambda k, ns: sign(message(sender="avisos@x.renapo.gob.mx"), k), "dkim", True,
         "aligned with x.renapo.gob.mx", "dkim", [RENAPO], "x.renapo.gob.mx"),
    Case("unsigned-renapo-from-header", stamped(lambda k, ns: message()), "header", False,
         f"dkim=none from trusted {TRUSTED}"),
    Case("unsigned-renapo-from-dkim", lambda k, ns: message(), "dkim", False, "dkim=none (no DKIM-Signature header)"),
    Case("body-altered-header", stamped(lambda k, ns: alter_body(genuine(k, ns))), "header", False,
         f"dkim=fail header.d={RENAPO} from trusted {TRUSTED}"),
    Case("body-altered-dkim", lambda k, ns: alter_body(genuine(k, ns)), "dkim", False,
         f"dkim=fail d={RENAPO} (body hash mismatch"),
    Case("other-domain-header", stamped(lambda k, ns: sign(message(), k, domain="otro.example")), "header", False,
         f"dkim=pass header.d=otro.example not aligned with {RENAPO}", None, ["otro.example"]),
    Case("other-domain-dkim", lambda k, ns: sign(message(), k, domain="otro.example"), "dkim", False,
         f"dkim=pass d=otro.example not aligned with {RENAPO}", None, ["otro.example"]),
    Case("lookalike-signs-renapo-from", stamped(lambda k, ns: sign(message(), k, domain="renapo-gob.mx")), "both",
         False, f"not aligned with {RENAPO}", None, ["renapo-gob.mx"]),
    # The look-alike authenticates as itself; the caller's domain_in(from_domain, provider domains) refuses it.
    Case("lookalike-own-domain", lambda k, ns: sign(message(sender="avisos@renapo-gob.mx"), k, domain="renapo-gob.mx"),
         "dkim", True, "aligned with renapo-gob.mx", "dkim", ["renapo-gob.mx"], "renapo-gob.mx"),
    Case("forged-ar-below-trusted", stamped(lambda k, ns: prepend(message(), FORGED_AR)), "header", False,
         f"dkim=none from trusted {TRUSTED}; 1 lower Authentication-Results header(s) ignored"),
    Case("forged-ar-below-untrusted-top",
         lambda k, ns: prepend(prepend(message(), FORGED_AR),
                               f"Authentication-Results: mx.evil.example; dkim=pass header.d={RENAPO}"), "header",
         False, "topmost Authentication-Results is from untrusted authserv-id mx.evil.example; 1 lower"),
    Case("untrusted-ar-at-top", lambda k, ns: received_by_mx(genuine(k, ns), ns, authserv_id="mx.evil.example"),
         "header", False, "untrusted authserv-id mx.evil.example"),
    Case("no-trusted-configured", stamped(genuine), "header", False, "no trusted authserv-id configured", trusted=()),
    Case("two-from-headers", stamped(lambda k, ns: sign(prepend(message(), "From: director@agricultura.gob.mx"), k)),
         "both", False, "2 From: headers", from_domain=""),
    Case("two-from-addresses",
         stamped(lambda k, ns: sign(message(sender=f"avisos@{RENAPO}, director@agricultura.gob.mx"), k)),
         "both", False, "several From: addresses", from_domain=""),
    Case("no-from", stamped(lambda k, ns: sign(message(sender=None), k)), "both", False,
         "no From: header", from_domain=""),
    Case("unparseable-from", lambda k, ns: message(sender="RENAPO <avisos@>"), "dkim", False, "From:",
         from_domain=""),
    Case("garbage-bytes", lambda k, ns: random.Random(7).randbytes(4096), "both", False, "malformed message",
         from_domain=""),
    Case("huge-header", lambda k, ns: prepend(genuine(k, ns), "X-Relleno: " + "a" * (2 * 1024 * 1024)), "both",
         False, "header section larger than", from_domain=""),
    Case("broken-signature-tags",
         lambda k, ns: prepend(message(), f"DKIM-Signature: v=1; a=rsa-sha256; d={RENAPO}; s=lab2026; h=from; b=@@@;"),
         "dkim", False, f"dkim=fail d={RENAPO}"),
    Case("unknown-selector", lambda k, ns: sign(message(), k).replace(b"s=lab2026", b"s=nada", 1), "dkim", False,
         "dkim=permerror d=renapo.gob.mx (no key at nada._domainkey.renapo.gob.mx"),
    Case("length-tag-not-accepted", lambda k, ns: sign(message(), k, length=True), "dkim", False,
         "l= leaves part of the body unsigned"),
    Case("length-tag-not-accepted-header", stamped(lambda k, ns: sign(message(), k, length=True)), "header", False,
         "signature has l=", None, [RENAPO]),
    Case("too-many-signatures",
         lambda k, ns: sign(_many_signed(k), k),
         "dkim", True, f"more signature(s) not checked (limit {MAX_SIGNATURES})", "dkim", [RENAPO, "otro.example"]),
]


def _many_signed(keys) -> bytes:
    """A message carrying MAX_SIGNATURES + 2 signatures by otro.example (the outermost one, by RENAPO, is added)."""
    raw = message()
    for _ in range(MAX_SIGNATURES + 2):
        raw = sign(raw, keys, domain="otro.example")
    return raw


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_authenticate(case, keys, nameserver):
    raw = case.build(keys, nameserver)
    started = time.monotonic()
    verdict = authenticate(raw, trusted_authserv_ids=case.trusted, mode=case.mode, nameservers=[nameserver],
                           timeout=3.0)
    assert time.monotonic() - started < 3.0
    assert isinstance(verdict, AuthVerdict)
    assert verdict.authenticated is case.authenticated, verdict.detail
    assert verdict.method == case.method, verdict.detail
    assert case.detail in verdict.detail
    assert verdict.from_domain == case.from_domain
    assert verdict.from_address == (f"avisos@{case.from_domain}" if case.from_domain else "")
    assert verdict.dkim_pass_domains == case.pass_domains
    assert "\n" not in verdict.detail and "\r" not in verdict.detail


# --- DNS that cannot answer -------------------------------------------------------------------------------------
def test_dns_refused_fails_fast(keys):
    port = free_port()  # nothing listens: the kernel answers with port unreachable
    started = time.monotonic()
    verdict = authenticate(sign(message(), keys), mode="dkim", nameservers=[f"127.0.0.1@{port}"], timeout=2.0)
    assert time.monotonic() - started < 3.0
    assert not verdict.authenticated and verdict.method is None
    assert f"dkim=temperror d={RENAPO}" in verdict.detail
    assert f"lab2026._domainkey.{RENAPO}" in verdict.detail and f"127.0.0.1@{port}" in verdict.detail


def test_dns_silent_times_out_within_budget(keys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never read: queries vanish
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1@{silent.getsockname()[1]}"
        raw = sign(sign(message(), keys), keys, domain="otro.example")  # two lookups share one budget
        started = time.monotonic()
        verdict = authenticate(raw, mode="dkim", nameservers=[server], timeout=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 2.5
    assert not verdict.authenticated
    assert "DNS timeout looking up" in verdict.detail
    assert "DNS time budget exhausted" in verdict.detail or verdict.detail.count("DNS timeout") == 2


def test_either_trusts_header_without_dns(keys, nameserver):
    raw = received_by_mx(sign(message(), keys), nameserver)
    dead = f"127.0.0.1@{free_port()}"
    verdict = authenticate(raw, trusted_authserv_ids=[TRUSTED], mode="either", nameservers=[dead], timeout=2.0)
    assert verdict.authenticated and verdict.method == "header"
    both = authenticate(raw, trusted_authserv_ids=[TRUSTED], mode="both", nameservers=[dead], timeout=1.0)
    assert not both.authenticated and both.method is None
    assert "header: dkim=pass" in both.detail and "dkim: dkim=temperror" in both.detail


def test_as_dict(keys, nameserver):
    verdict = authenticate(sign(message(), keys), mode="dkim", nameservers=[nameserver])
    assert verdict.as_dict() == {
        "from_address": f"avisos@{RENAPO}", "from_domain": RENAPO, "authenticated": True, "method": "dkim",
        "dkim_pass_domains": [RENAPO],
        "detail": f"dkim=pass d={RENAPO} aligned with {RENAPO} (direct verification)",
    }


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", "From: a@b.mx\r\n\r\nhola", None, b"From: a@renapo.gob.mx\r\n",
                                 b"From: =?utf-8?q?a?= <a@renapo.gob.mx>\r\nAuthentication-Results: " + b"(" * 20000,
                                 b"\xff\xfe: x\r\n\r\n", b" continuation first\r\nFrom: a@renapo.gob.mx\r\n\r\n"])
def test_hostile_input_never_raises(raw):
    verdict = authenticate(raw, trusted_authserv_ids=[TRUSTED], mode="either", nameservers=["127.0.0.1@9"],
                           timeout=0.5)
    assert verdict.authenticated is False and verdict.method is None and verdict.detail


def test_configuration_errors_raise():
    with pytest.raises(ValueError, match="mode"):
        authenticate(b"", mode="dmarc")
    with pytest.raises(ValueError, match="nameserver"):
        authenticate(b"", mode="dkim", nameservers=["ns1.example"])


# --- the domain rules ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("domain, org", [
    ("renapo.gob.mx", "renapo.gob.mx"),
    ("x.renapo.gob.mx", "renapo.gob.mx"),
    ("A.B.RENAPO.GOB.MX.", "renapo.gob.mx"),
    ("gob.mx", ""),
    ("mx", ""),
    ("renapo-gob.mx", "renapo-gob.mx"),
    ("correo.renapo-gob.mx", "renapo-gob.mx"),
    ("sat.gob.mx", "sat.gob.mx"),
    ("empresa.com.mx", "empresa.com.mx"),
    ("mail.example.com", "example.com"),
    ("gob.example", "gob.example"),  # "gob" is a registry only under a two-letter country TLD
    ("", ""),
    ("bad..domain.mx", ""),
    ("-x.mx", ""),
])
def test_organizational_domain(domain, org):
    assert organizational_domain(domain) == org


@pytest.mark.parametrize("signer, from_domain, expected", [
    ("renapo.gob.mx", "renapo.gob.mx", True),
    ("correo.renapo.gob.mx", "renapo.gob.mx", True),
    ("renapo.gob.mx", "x.renapo.gob.mx", True),
    ("RENAPO.GOB.MX", "renapo.gob.mx", True),
    ("renapo-gob.mx", "renapo.gob.mx", False),
    ("gob.mx", "renapo.gob.mx", False),
    ("gob.mx", "gob.mx", False),
    ("sat.gob.mx", "renapo.gob.mx", False),
    ("otro.example", "renapo.gob.mx", False),
    ("", "", False),
])
def test_aligned(signer, from_domain, expected):
    assert aligned(signer, from_domain) is expected


@pytest.mark.parametrize("domain, allowed, expected", [
    ("renapo.gob.mx", ["renapo.gob.mx"], True),
    ("Correo.RENAPO.gob.mx", ["renapo.gob.mx", "sat.gob.mx"], True),
    ("renapo.gob.mx", "renapo.gob.mx", True),
    ("renapo-gob.mx", ["renapo.gob.mx"], False),
    ("xrenapo.gob.mx", ["renapo.gob.mx"], False),
    ("gob.mx", ["renapo.gob.mx"], False),
    ("renapo.gob.mx", [], False),
    ("renapo.gob.mx", ["", None], False),
    ("", ["renapo.gob.mx"], False),
])
def test_domain_in(domain, allowed, expected):
    assert domain_in(domain, allowed) is expected
