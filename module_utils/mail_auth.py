"""Sender authentication of an e-mail: is this raw message proven to come from its From: domain?

An e-mail's content is a claim, never evidence. What proves the sender is a DKIM signature that passes and is
*aligned* (DMARC-style, relaxed) with the domain of the single From: address, read from sources the sender cannot
control:

- ``header``: the TOPMOST ``Authentication-Results`` header (RFC 8601, parsed with ``authres``), and only when its
  authserv-id is one of the configured, trusted receiving servers (e.g. ``mx.agricultura.gob.mx``). That server adds
  its own header on top and strips incoming ones; anything below it may have been written by the sender, so lower
  headers are ignored, whatever authserv-id they carry (the verdict's detail says how many were ignored).
- ``dkim``: direct verification of every ``DKIM-Signature`` (at most ``MAX_SIGNATURES``) with ``dkimpy``, the keys
  looked up with ``dnspython`` at the configured nameservers (``"127.0.2.200"`` or ``"127.0.2.200@5353"``), or at
  the system resolver when none is configured. ``timeout`` is the DNS budget of the whole call, not per lookup.

Modes: ``header``, ``dkim``, ``either`` (header first; DNS only when the header did not prove it), ``both``.

Organizational domain (the alignment rule, no Public Suffix List): the last two labels of a domain, or the last
three when the domain ends in ``<registry>.<cc>`` -- a two-letter country-code TLD preceded by one of the common
second-level registries in ``SECOND_LEVEL_REGISTRIES`` (gob, com, org, net, edu, mil; also gov, co, ac, which only
make the rule stricter). So ``renapo.gob.mx`` and ``x.renapo.gob.mx`` share ``renapo.gob.mx``; ``gob.mx`` alone has
no organizational domain (it never aligns with anything); the look-alike ``renapo-gob.mx`` is its own organizational
domain and does not align with ``renapo.gob.mx``. Which domains a provider may send from is a separate, exact
question: ``domain_in``.

Stricter than a plain DKIM check, on purpose: a signature that does not sign From:, or that carries ``l=`` (the
unsigned rest of the body could hold a forged letter), never counts; a message whose From: is absent, repeated,
holds several addresses, or is read differently by two parsers is never authenticated.

Pure code (stdlib + dkimpy, authres, dnspython): no Ansible import. ``authenticate`` never raises on hostile input
(malformed or huge headers, broken signatures, DNS failures): it returns ``authenticated=False`` with the reason.
It raises ``ValueError`` only for a configuration error (unknown mode, malformed nameserver).
"""
from __future__ import annotations

import dataclasses
import email.headerregistry
import email.utils
import ipaddress
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

MODES = ("header", "dkim", "either", "both")
MAX_SIGNATURES = 10
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
# An Authentication-Results header longer than this is not one a receiving server wrote.
MAX_AR_CHARS = 16 * 1024
MAX_DETAIL_CHARS = 600
SECOND_LEVEL_REGISTRIES = frozenset({"gob", "com", "org", "net", "edu", "mil", "gov", "co", "ac"})

_FIELD_NAME_RE = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_UNFOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")

# dkimpy logs every failed check at ERROR; a library must not print on the caller's stderr.
_DKIM_LOG = logging.getLogger(__name__ + ".dkim")
_DKIM_LOG.addHandler(logging.NullHandler())


@dataclass
class AuthVerdict:
    from_address: str  # lower-case addr-spec of the single From:, "" if none/invalid
    from_domain: str
    authenticated: bool  # DKIM pass aligned with from_domain by the required method(s)
    method: str | None = None  # "header", "dkim" or "header+dkim" that proved it
    dkim_pass_domains: list[str] = field(default_factory=list)  # d= domains that passed (aligned or not)
    detail: str = ""  # one line, English, why

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- domains ---------------------------------------------------------------------------------------------------
def _normalise_domain(domain) -> str:
    """Lower-case A-label form without a trailing dot, or "" when it is not a valid host name."""
    if isinstance(domain, bytes):
        domain = domain.decode("ascii", "replace")
    if not isinstance(domain, str):
        return ""
    domain = domain.strip().lower()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or len(domain) > 253:
        return ""
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    labels = domain.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return ""
    return domain


def organizational_domain(domain: str) -> str:
    """The organizational domain (see the module doc), or "" when the domain has none (gob.mx, mx, invalid)."""
    labels = _normalise_domain(domain).split(".")
    if len(labels) < 2 or not labels[0]:
        return ""
    keep = 2
    if len(labels[-1]) == 2 and labels[-1].isalpha() and labels[-2] in SECOND_LEVEL_REGISTRIES:
        keep = 3
    if len(labels) < keep:
        return ""
    return ".".join(labels[-keep:])


def aligned(signing_domain: str, from_domain: str) -> bool:
    """Relaxed DMARC alignment: both domains have the same (non-empty) organizational domain."""
    org = organizational_domain(signing_domain)
    return bool(org) and org == organizational_domain(from_domain)


def domain_in(domain: str, allowed) -> bool:
    """True when `domain` equals one of `allowed` or is a subdomain of one (case-insensitive).

    `allowed` is a domain or an iterable of domains; empty or invalid entries never match.
    """
    domain = _normalise_domain(domain)
    if not domain:
        return False
    if isinstance(allowed, (str, bytes)):
        allowed = [allowed]
    for entry in allowed or ():
        entry = _normalise_domain(entry)
        if entry and (domain == entry or domain.endswith("." + entry)):
            return True
    return False


# --- the message's header section ------------------------------------------------------------------------------
class _Malformed(Exception):
    """The header section cannot be read unambiguously."""


def _header_fields(raw: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of every header field, top to bottom, read strictly.

    One reading of the header section serves every decision (From:, Authentication-Results order), so an
    ambiguous line cannot look like one thing here and another to the MTA.
    """
    limit = MAX_HEADER_BYTES + 4
    ends = [pos for pos in (raw.find(b"\r\n\r\n", 0, limit), raw.find(b"\n\n", 0, limit)) if pos != -1]
    end = min(ends) if ends else len(raw)
    if end > MAX_HEADER_BYTES:
        raise _Malformed(f"header section larger than {MAX_HEADER_BYTES} bytes")
    lines = raw[:end].replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[0].startswith(b"From ") and not _FIELD_NAME_RE.match(lines[0]):
        lines = lines[1:]  # mbox envelope line, not a header field
    fields: list[list] = []
    for number, line in enumerate(lines, 1):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise _Malformed("header section starts with a continuation line")
            fields[-1][1] += b"\n" + line
            continue
        match = _FIELD_NAME_RE.match(line)
        if not match:
            raise _Malformed(f"header line {number} is not a header field")
        fields.append([match.group(1).decode("ascii").lower(), line[match.end():]])
    if not fields:
        raise _Malformed("no header fields")
    return [(name, _UNFOLD_RE.sub("", value.decode("utf-8", "surrogateescape")).strip()) for name, value in fields]


def _single_from(fields) -> tuple[str, str, str]:
    """(address, domain, "") of the single From: address, or ("", "", reason)."""
    values = [value for name, value in fields if name == "from"]
    if not values:
        return "", "", "no From: header"
    if len(values) > 1:
        return "", "", f"{len(values)} From: headers"
    value = values[0]
    try:
        try:
            pairs = email.utils.getaddresses([value], strict=True)
        except TypeError:  # Python builds without the strict parser (before the CVE-2023-27043 fix)
            pairs = email.utils.getaddresses([value])
        parsed = email.headerregistry.HeaderRegistry()("From", value)
        registry = [a.addr_spec for a in parsed.addresses]
        groups = [g for g in parsed.groups if g.display_name is not None]
    except Exception as exc:  # noqa: BLE001 - hostile header, any parser error means "unparseable"
        return "", "", f"unparseable From: ({type(exc).__name__})"
    utils = [addr for _name, addr in pairs if addr]
    if len(registry) > 1 or len(utils) > 1:
        return "", "", "several From: addresses"
    if groups or len(registry) != 1 or len(utils) != 1:
        return "", "", "unparseable From:"
    address = utils[0].strip().lower()
    if address != registry[0].strip().lower():
        return "", "", "From: read differently by two parsers"
    local, at, domain = address.rpartition("@")
    domain_norm = _normalise_domain(domain)
    if not at or not local or not domain_norm or "." not in domain_norm:
        return "", "", "From: address has no valid domain"
    return f"{local}@{domain_norm}", domain_norm, ""


def _clean(text, limit: int = 120) -> str:
    """Attacker-supplied text made safe for a one-line detail."""
    text = _CONTROL_RE.sub(" ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- method 1: the trusted receiving server's Authentication-Results ------------------------------------------
def _dkim_tags(value: str) -> dict:
    """Tags of a DKIM-Signature value (lower-case names), read leniently: only used to spot l= signatures."""
    tags = {}
    for part in value.split(";"):
        name, eq, tag_value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), re.sub(r"\s+", "", tag_value))
    return tags


def _by_header(fields, from_domain, trusted) -> tuple[bool, list[str], str]:
    """(proved, pass domains, detail) from the topmost Authentication-Results."""
    import authres  # imported here so a missing package is a verdict, not an import error of the whole module

    headers = [value for name, value in fields if name == "authentication-results"]
    if not headers:
        return False, [], "no Authentication-Results header"
    below = len(headers) - 1
    ignored = f"; {below} lower Authentication-Results header(s) ignored" if below else ""
    if not trusted:
        return False, [], "no trusted authserv-id configured" + ignored
    top = headers[0]
    if len(top) > MAX_AR_CHARS:
        return False, [], f"topmost Authentication-Results longer than {MAX_AR_CHARS} characters" + ignored
    try:
        parsed = authres.parse_value(top)
        authserv_id = (parsed.authserv_id or "").lower()
    except Exception as exc:  # noqa: BLE001 - authres raises several error types on hostile text
        return False, [], f"topmost Authentication-Results unparseable ({_clean(type(exc).__name__, 40)})" + ignored
    if authserv_id not in trusted:
        return False, [], (f"topmost Authentication-Results is from untrusted authserv-id {_clean(authserv_id, 80)}"
                           + ignored)
    signatures = [_dkim_tags(value) for name, value in fields if name == "dkim-signature"]
    passing, notes, proved = [], [], False
    for result in parsed.results:
        if (getattr(result, "method", "") or "").lower() != "dkim":
            continue
        outcome = (result.result or "").lower()
        signer = _normalise_domain(getattr(result, "header_d", None) or "")
        if outcome != "pass":
            notes.append(f"dkim={_clean(outcome, 20)}" + (f" header.d={signer}" if signer else ""))
            continue
        if not signer:
            notes.append("dkim=pass without header.d")
            continue
        if signer not in passing:
            passing.append(signer)
        prefix = _property(result, "header", "b")  # header.b names the signature when a domain signed twice
        matching = [t for t in signatures if _normalise_domain(t.get("d", "")) == signer
                    and (not prefix or t.get("b", "").startswith(prefix))]
        if matching and all("l" in t for t in matching):
            notes.append(f"dkim=pass header.d={signer} but its signature has l= (part of the body unsigned)")
        elif not aligned(signer, from_domain):
            notes.append(f"dkim=pass header.d={signer} not aligned with {from_domain or 'the From: domain'}")
        else:
            proved = True
            notes.insert(0, f"dkim=pass header.d={signer} aligned with {from_domain}")
    if not notes:
        notes.append("dkim=none")
    notes = _counted(notes)
    source = f"from trusted {_clean(authserv_id, 80)}"
    return proved, passing, f"{notes[0]} {source}" + "".join(f"; {n}" for n in notes[1:]) + ignored


def _counted(notes: list[str]) -> list[str]:
    """Repeated notes once, with their count, so a message with many signatures still gets a readable line."""
    counts: dict[str, int] = {}
    for note in notes:
        counts[note] = counts.get(note, 0) + 1
    return [note if n == 1 else f"{note} (x{n})" for note, n in counts.items()]


def _property(result, ptype: str, name: str) -> str:
    for prop in getattr(result, "properties", None) or ():
        if prop.type == ptype and prop.name == name:
            return re.sub(r"\s+", "", str(prop.value or ""))
    return ""


# --- method 2: direct DKIM verification -------------------------------------------------------------------------
def _parse_nameservers(nameservers) -> list[tuple[str, int]]:
    if isinstance(nameservers, str):
        nameservers = [nameservers]
    parsed = []
    for entry in nameservers or ():
        host, at, port = str(entry).strip().rpartition("@")
        if not at:
            host, port = port, "53"
        try:
            address = str(ipaddress.ip_address(host.strip("[]")))
            number = int(port)
        except ValueError:
            raise ValueError(f"nameserver {entry!r} is not an IP address optionally followed by @port") from None
        if not 0 < number < 65536:
            raise ValueError(f"nameserver {entry!r}: port out of range")
        parsed.append((address, number))
    return parsed


class _KeyLookup:
    """dkimpy's dnsfunc over dnspython, with one deadline for the whole call and the outcome of each lookup kept."""

    def __init__(self, nameservers, budget: float):
        self.nameservers = nameservers
        self.deadline = time.monotonic() + max(0.1, float(budget))
        self.outcome: dict[str, str] = {}
        self.cache: dict[str, bytes | None] = {}
        self.resolver = None
        self.setup_error = ""
        try:
            import dns.nameserver
            import dns.resolver

            if nameservers:
                self.resolver = dns.resolver.Resolver(configure=False)
                self.resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in nameservers]
            else:
                self.resolver = dns.resolver.Resolver()
            self.resolver.retry_servfail = False
        except Exception as exc:  # noqa: BLE001 - no resolv.conf, missing package: a verdict, not a crash
            self.setup_error = f"no DNS resolver ({_clean(type(exc).__name__, 40)})"

    def where(self) -> str:
        return ", ".join(f"{a}@{p}" for a, p in self.nameservers) or "the system resolver"

    def __call__(self, name, timeout=5):
        key = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        shown = _clean(key.rstrip("."), 100)
        if key in self.cache:
            return self.cache[key]
        self.cache[key] = None
        if self.resolver is None:
            self.outcome[key] = self.setup_error
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.outcome[key] = "DNS time budget exhausted"
            return None
        import dns.exception
        import dns.resolver

        try:
            self.resolver.timeout = remaining
            answer = self.resolver.resolve(key, "TXT", lifetime=remaining, search=False, raise_on_no_answer=False)
            records = [b"".join(r.strings) for r in answer]
            if not records:
                self.outcome[key] = f"no TXT record at {shown}"
                return None
            records.sort(key=lambda txt: not txt.lstrip().lower().startswith(b"v=dkim1"))
            self.cache[key] = records[0]
            self.outcome[key] = "ok"
            return records[0]
        except dns.resolver.NXDOMAIN:
            self.outcome[key] = f"no key at {shown} (NXDOMAIN)"
        except dns.exception.Timeout:
            self.outcome[key] = f"DNS timeout looking up {shown} via {self.where()}"
        except dns.resolver.NoNameservers:
            self.outcome[key] = f"DNS unreachable or failing for {shown} via {self.where()}"
        except Exception as exc:  # noqa: BLE001 - a hostile d=/s= makes an invalid name; any DNS error is a verdict
            self.outcome[key] = f"DNS error for {shown} ({_clean(type(exc).__name__, 40)})"
        return None


def _by_dkim(raw: bytes, from_domain: str, nameservers, timeout: float) -> tuple[bool, list[str], str]:
    """(proved, pass domains, detail) from verifying every DKIM-Signature directly."""
    try:
        import dkim
        from dkim.util import parse_tag_value
    except ImportError:
        return False, [], "dkimpy is not installed"
    try:
        verifier = dkim.DKIM(raw, logger=_DKIM_LOG, timeout=timeout)
        signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    except Exception as exc:  # noqa: BLE001 - dkimpy's message parser on garbage
        return False, [], f"message unreadable for DKIM ({_clean(type(exc).__name__, 40)})"
    if not signatures:
        return False, [], "dkim=none (no DKIM-Signature header)"
    lookup = _KeyLookup(nameservers, timeout)
    passing, notes, proved = [], [], False
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        signer, reason = "", ""
        try:
            tags = parse_tag_value(value)
            signer = _normalise_domain(tags.get(b"d", b""))
            key_name = (tags.get(b"s", b"") + b"._domainkey." + tags.get(b"d", b"") + b".").decode("ascii", "replace")
            signed = [h.strip().lower() for h in tags.get(b"h", b"").split(b":")]
            if b"from" not in signed:
                reason = "From: not signed"
            elif b"l" in tags:
                reason = "l= leaves part of the body unsigned"
            elif verifier.verify(idx=index, dnsfunc=lookup):
                reason = "pass"
            else:
                reason = lookup.outcome.get(key_name, "ok")
                reason = "signature does not verify" if reason == "ok" else reason
        except dkim.DKIMException as exc:
            # dkimpy shows bytes reprs
            reason = _clean(re.sub(r"b'([^']*)'", r"\1", str(exc).split(" (", maxsplit=1)[0]), 80)
        except Exception as exc:  # noqa: BLE001 - hostile signatures reach odd corners of dkimpy
            reason = f"unverifiable ({_clean(type(exc).__name__, 40)})"
        label = f"d={signer}" if signer else "d=?"
        if reason != "pass":
            result = "temperror" if "DNS" in reason else "permerror" if reason.startswith("no ") else "fail"
            notes.append(f"dkim={result} {label} ({reason})")
            continue
        if signer not in passing:
            passing.append(signer)
        if aligned(signer, from_domain):
            proved = True
            notes.insert(0, f"dkim=pass {label} aligned with {from_domain}")
        else:
            notes.append(f"dkim=pass {label} not aligned with {from_domain or 'the From: domain'}")
    if len(signatures) > MAX_SIGNATURES:
        notes.append(f"{len(signatures) - MAX_SIGNATURES} more signature(s) not checked (limit {MAX_SIGNATURES})")
    notes = _counted(notes)
    return proved, passing, notes[0] + " (direct verification)" + "".join(f"; {n}" for n in notes[1:])


# --- the verdict ------------------------------------------------------------------------------------------------
def authenticate(raw: bytes, trusted_authserv_ids=(), mode="header", nameservers=(), timeout=5.0) -> AuthVerdict:
    """Decide whether `raw` is authenticated for its From: domain (see the module doc)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    servers = _parse_nameservers(nameservers)
    if isinstance(trusted_authserv_ids, str):
        trusted_authserv_ids = [trusted_authserv_ids]
    trusted = {str(t).strip().lower() for t in trusted_authserv_ids or () if str(t).strip()}
    verdict = AuthVerdict(from_address="", from_domain="", authenticated=False)
    try:
        _decide(verdict, raw, trusted, mode, servers, timeout)
    except Exception as exc:  # noqa: BLE001 - the contract: hostile input yields a verdict, never an exception
        verdict.authenticated, verdict.method = False, None
        verdict.detail = f"not authenticated: internal error ({_clean(type(exc).__name__, 40)})"
    verdict.detail = _clean(verdict.detail, MAX_DETAIL_CHARS)
    return verdict


def _decide(verdict: AuthVerdict, raw, trusted, mode, servers, timeout) -> None:
    if isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    if not isinstance(raw, bytes):
        verdict.detail = "raw message is not bytes"
        return
    if len(raw) > MAX_MESSAGE_BYTES:
        verdict.detail = f"message larger than {MAX_MESSAGE_BYTES} bytes"
        return
    try:
        fields = _header_fields(raw)
    except _Malformed as exc:
        verdict.detail = f"malformed message: {exc}"
        return
    verdict.from_address, verdict.from_domain, problem = _single_from(fields)
    if problem:
        verdict.detail = problem
        return
    proofs, details = [], []
    if mode in ("header", "either", "both"):
        proved, passing, detail = _by_header(fields, verdict.from_domain, trusted)
        _merge(verdict.dkim_pass_domains, passing)
        details.append(("header: " if mode != "header" else "") + detail)
        if proved:
            proofs.append("header")
    if mode == "dkim" or mode == "both" or (mode == "either" and not proofs):
        proved, passing, detail = _by_dkim(raw, verdict.from_domain, servers, timeout)
        _merge(verdict.dkim_pass_domains, passing)
        details.append(("dkim: " if mode != "dkim" else "") + detail)
        if proved:
            proofs.append("dkim")
    needed = 2 if mode == "both" else 1
    verdict.authenticated = len(proofs) >= needed
    verdict.method = "+".join(proofs) if verdict.authenticated else None
    verdict.detail = " | ".join(details)


def _merge(into: list, more: Iterable) -> None:
    for item in more:
        if item not in into:
            into.append(item)
