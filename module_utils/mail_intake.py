"""Mesa de Servicios mailbox intake: parse, classify and move messages of a Maildir without ever losing one.

Pure code (stdlib only): no Ansible import, so pytest drives it directly and `library/mail_intake.py` stays thin.

A request is an e-mail a person writes in Spanish, one field per line (labels are accent/case/space tolerant)::

    Solicitante: Juan Pérez López
    Correo: juan.perez@agricultura.gob.mx
    Unidad Administrativa: Dirección General de Fomento a la Agricultura
    Sistema: Padrón de Productores
    Servicio: RENAPO            (a provider of the registry: its name, display name or an alias)
    Turnado por: Lic. María Gómez Ruiz
    Cargo: Director de Área

A missing field is None; `observations.evaluate` decides what that means.

Providers come from the registry (providers.py, the inventory's `procedure_providers`): its folio prefixes make a
folio (`Registry.folio_re`), its sender domains make a delivery, its aliases read "Servicio:". Text is compared
folded (`providers.fold`: lower case, no accents, single spaces).

What a real mailbox holds besides requests (RFC 3834, RFC 3464), and how each is classified:
- kind "automatic": Auto-Submitted other than "no", X-Autoreply/X-Autorespond, Precedence auto_reply, an
  out-of-office subject ("Respuesta automática:", "Fuera de la oficina", "Automatic reply:"...), a read receipt
  (multipart/report; report-type=disposition-notification), or one of our own notices (From: the procedure's own
  sender, or a Message-ID we recorded as sent). Filed, never answered, never a ticket: no mail loop.
- kind "bounce": a delivery status notification (multipart/report; report-type=delivery-status, or a MAILER-DAEMON
  message in the classic form); `bounce` names the returned message (its Message-ID and subject, from the
  message/rfc822 or text/rfc822-headers part) and the failed recipients. Filed; the intake notes it on its ticket.
- Forwarded mail: a message/rfc822 part is read as part of the body and attachments (its text and files count), and
  `forwarded` keeps the inner From/Subject/Message-ID: what the inner message says about its sender is a claim; the
  forward is judged by the forwarder's own authentication.
- Outlook's winmail.dat (TNEF) is unpacked with tnefparse (its body and files count as the message's); an unreadable
  one sends the message to quarantine with the reason.
- Charsets: a part labelled ISO-8859-1 is read as Windows-1252 (its superset, what Outlook really writes), as
  browsers do; an undecodable part falls back to UTF-8, then Windows-1252, then Latin-1: never an exception.
"""
from __future__ import annotations

import email
import email.header
import email.utils
import hashlib
import html
import io
import os
import re
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath, PureWindowsPath

from ansible.module_utils.cert_files import write_atomic
from ansible.module_utils.providers import fold, registry

# Something that looks like a folio but is not one (wrong year/number width) is named in the quarantine reason.
FOLIO_LIKE_RE = re.compile(r"\bDGTIC-[A-Z0-9]+(?:-[A-Z0-9]+)*", re.IGNORECASE)
TICKET_RE = re.compile(r"\[\s*Ticket\s*#\s*(\d+)\s*\]", re.IGNORECASE)
FINGERPRINT_RE = re.compile(r"(?<![0-9A-F:])((?:[0-9A-F]{2}:){31}[0-9A-F]{2})(?![0-9A-F:])", re.IGNORECASE)
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")

CERT_EXTENSIONS = (".cer", ".crt", ".pem", ".der", ".key", ".pfx", ".p12")
SECRET_EXTENSIONS = (".key", ".pfx", ".p12")
DEFAULT_MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
# A whole message larger than this is quarantined before it is parsed (Exchange Online's default limit is 25 MB).
DEFAULT_MAX_MESSAGE_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_ZIP_ENTRIES = 50
# Folded label -> request field; the first occurrence of a field wins.
FIELD_LABELS = {
    "solicitante": "requester",
    "nombre": "requester",
    "nombre del solicitante": "requester",
    "correo": "requester_email",
    "correo electronico": "requester_email",
    "correo institucional": "requester_email",
    "email": "requester_email",
    "e-mail": "requester_email",
    "unidad administrativa": "administrative_unit",
    "unidad": "administrative_unit",
    "area": "administrative_unit",
    "sistema": "system",
    "sistema/aplicacion": "system",
    "aplicacion": "system",
    "servicio": "service",
    "turnado por": "forwarded_by",
    "turnada por": "forwarded_by",
    "remitido por": "forwarded_by",
    "cargo": "forwarded_by_rank",
    "cargo de quien turna": "forwarded_by_rank",
    "puesto": "forwarded_by_rank",
}
LABEL_LINE_RE = re.compile(r"^[\s*>_-]*([^\W\d_][\w /.-]{1,40}?)[\s*_]*:\s*(.*?)\s*$")


class QuarantineMessage(Exception):
    """Raised by a handler to send the message to quarantine with a reason (e.g. folio matches no ticket)."""


# Kinds that are filed (processed folder of their own) without a ticket and without a quarantine notice.
FILED_KINDS = ("automatic", "bounce")
AUTO_SUBJECT_RE = re.compile(
    r"^\s*(respuesta autom[aá]tica|fuera de (la )?oficina|ausente|automatic reply|auto(matic)?[ -]?reply|"
    r"out of (the )?office|autoreply|abwesenheitsnotiz|r[eé]ponse automatique|absence)\b", re.IGNORECASE)
BOUNCE_SUBJECT_RE = re.compile(
    r"^\s*(undeliver(ed|able)|delivery status notification|mail delivery (failed|failure|system)|"
    r"returned mail|no se puede entregar|no entregado|error de entrega|notificaci[oó]n de estado de entrega)",
    re.IGNORECASE)
MAILER_DAEMON_RE = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|microsoftexchange[0-9a-f]*)@", re.IGNORECASE)
MESSAGE_ID_RE = re.compile(r"<[^<>\s]+>")
# What the intake never repeats in a reason, a notice or its output: PEM blocks and long base64 runs (keys, PKCS#12).
_PEM_TEXT_RE = re.compile(r"-----BEGIN[^\n]*?-----.*?(?:-----END[^\n]*?-----|\Z)", re.DOTALL)
_PEM_MARKER_RE = re.compile(r"-----(BEGIN|END)[^\n]*?-----|PRIVATE KEY", re.IGNORECASE)
_BASE64_RUN_RE = re.compile(r"[A-Za-z0-9+/=_-]{48,}")


def redact(text, limit: int = 400) -> str:
    """Text safe to show or store: key material (PEM blocks, long base64 runs) replaced, length bounded."""
    text = _PEM_TEXT_RE.sub("[material PEM omitido]", str(text or ""))
    text = _PEM_MARKER_RE.sub("[material PEM omitido]", text)
    text = _BASE64_RUN_RE.sub("[base64 omitido]", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_transient(exc: BaseException) -> bool:
    """An outage the next run should retry (the run stops, the message stays in the inbox): a network or SMTP/IMAP
    failure, a lost or locked database. Anything else is a defect of that one message: it is quarantined."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "transient", False) or isinstance(exc, MemoryError):
            return True
        if type(exc).__name__ == "SMTPRecipientsRefused":
            codes = [code for code, _msg in getattr(exc, "recipients", {}).values()]
            return not codes or any(code < 500 for code in codes)  # every recipient refused for good: the message's
        if isinstance(exc, OSError):  # sockets, TLS, SMTP (smtplib's errors are OSErrors), a full disk
            return True
        if type(exc).__name__ in ("OperationalError", "InterfaceError") and \
                type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg2"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass
class ServiceRequest:
    requester: str | None = None
    requester_email: str | None = None
    administrative_unit: str | None = None
    system: str | None = None
    service: str | None = None  # a registry provider's name, or the raw text when it names none
    forwarded_by: str | None = None
    forwarded_by_rank: str | None = None

    def supplied(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def merged(self, update: ServiceRequest) -> ServiceRequest:
        """This request with the fields a reply supplies (non-None) taking precedence."""
        return ServiceRequest(**{**self.__dict__, **update.supplied()})

    def ticket_fields(self) -> dict:
        """The nested shape the ticket store keeps: service, requester {name, email, unit, system}, forwarded_by."""
        return {
            "service": self.service,
            "requester": {"name": self.requester, "email": self.requester_email, "unit": self.administrative_unit,
                          "system": self.system},
            "forwarded_by": {"name": self.forwarded_by, "rank": self.forwarded_by_rank},
        }

    @classmethod
    def from_ticket(cls, ticket: dict) -> ServiceRequest:
        """Inverse of ticket_fields(), from a stored ticket dict (missing parts become None)."""
        requester, forwarded = ticket.get("requester") or {}, ticket.get("forwarded_by") or {}
        return cls(requester.get("name"), requester.get("email"), requester.get("unit"), requester.get("system"),
                   ticket.get("service"), forwarded.get("name"), forwarded.get("rank"))


@dataclass
class Attachment:
    filename: str
    content: bytes = field(repr=False)  # may be a key: never printed
    source: str = ""  # "bundle.zip!anchor.pem" when it came out of a zip

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class ParsedMessage:
    kind: str  # 'request' | 'delivery' | 'reply' | 'unknown'
    message_id: str
    subject: str = ""
    sender: str = ""
    sender_name: str = ""
    date: str = ""
    body: str = ""
    folio: str | None = None
    service: str | None = None
    ticket_id: int | None = None
    request: ServiceRequest | None = None
    attachments: list[Attachment] = field(default_factory=list)
    fingerprint: str | None = None
    reason: str | None = None  # why kind is 'unknown' or why the message must go to quarantine
    quarantine: bool = False
    raw: bytes = field(default=b"", repr=False)  # the message as received (sender authentication reads it)
    received_at: str | None = None  # when the receiving server took it (IMAP INTERNALDATE, ISO 8601, aware)
    released_by: str | None = None  # the operator who released it from quarantine (set by intake, never parsed)
    auto: str | None = None  # why it is an automatic message (kind 'automatic' or 'bounce'), filed without reply
    bounce: dict | None = None  # a DSN: original_message_id, original_subject, recipients [{recipient, action,...}]
    forwarded: dict | None = None  # the inner message of a forward: from, subject, message_id (claims)
    own: bool = False  # one of our own notices come back

    @property
    def digest(self) -> str:
        """SHA-256 of what the message says (sender, subject, text, attachments), not of its transport headers:
        a resend of the same mail has the same digest, another mail under a reused Message-ID another one."""
        h = hashlib.sha256()
        for part in (self.sender, " ".join(self.subject.split()), " ".join(self.body.split()),
                     *sorted(a.sha256 for a in self.attachments)):
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()


def _decode_bytes(data: bytes, charset: str | None) -> str:
    if charset and charset.strip().lower() in ("iso-8859-1", "iso8859-1", "latin-1", "latin1"):
        charset = "cp1252"  # what Outlook labels Latin-1 is Windows-1252 (curly quotes, dashes, euro)
    for cs in (charset, "utf-8", "cp1252"):
        if not cs or cs == "unknown-8bit":
            continue
        try:
            return data.decode(cs)
        except (LookupError, ValueError):  # unknown, undecodable or NUL-bearing charset name
            continue
    return data.decode("latin-1")


def decode_header_value(value) -> str:
    """Decode an RFC 2047 / raw 8-bit header to text; unknown charsets fall back, never raise."""
    if value is None:
        return ""
    try:
        chunks = email.header.decode_header(value if isinstance(value, email.header.Header) else str(value))
    except Exception:  # a broken header becomes its raw text
        return " ".join(str(value).split())
    out = []
    for chunk, charset in chunks:
        out.append(_decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk)
    text = "".join(out)
    if any("\udc80" <= c <= "\udcff" for c in text):
        # surrogateescape'd 8-bit bytes from message_from_bytes: recover them as UTF-8, else Latin-1
        text = _decode_bytes(text.encode("utf-8", "surrogateescape"), None)
    return " ".join(text.split())


class _HTMLText(HTMLParser):
    BLOCKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS or tag in ("td", "th"):
            self.parts.append("\n" if tag in self.BLOCKS else " ")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # unparseable HTML: keep its text roughly
        return html.unescape(re.sub(r"<[^>]+>", " ", markup))
    return "".join(parser.parts).replace("\xa0", " ")


def _part_filename(part: Message) -> str | None:
    name = part.get_param("filename", header="content-disposition") or part.get_param("name")
    if name is None:
        return None
    if isinstance(name, tuple):  # RFC 2231 (charset, language, value); the charset may be garbage
        name = _decode_bytes(name[2].encode("raw-unicode-escape"), name[0])
    return decode_header_value(name) or None


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    return _decode_bytes(payload, part.get_content_charset())


def _strip_quoted(body: str) -> str:
    """The new text of a reply: quoted lines ('>') and everything after an 'On ... wrote:' marker dropped."""
    kept = []
    for line in body.splitlines():
        low = fold(line)
        if low.startswith("-----original message") or low.startswith("-----mensaje original") or (
            low.endswith(("escribio:", "wrote:")) and (low.startswith("el ") or low.startswith("on "))
        ):
            break
        if not line.lstrip().startswith(">"):
            kept.append(line)
    return "\n".join(kept)


def parse_request_fields(body: str, providers=None) -> tuple[ServiceRequest, int]:
    """Fields of a request written one per line; returns the request and how many labels were recognised.
    "Servicio:" becomes the provider of the registry (`providers`) its words name, else stays as written."""
    known = _known(providers)
    request = ServiceRequest()
    found = 0
    for line in body.splitlines():
        m = LABEL_LINE_RE.match(line)
        if not m:
            continue
        name = FIELD_LABELS.get(fold(m.group(1)))
        if name is None:
            continue
        found += 1
        value = " ".join(m.group(2).strip(" *_").split()) or None
        if getattr(request, name) is not None or value is None:
            continue
        if name == "requester_email":
            em = EMAIL_RE.search(value)
            value = em.group(0).lower() if em else value
        elif name == "service" and known is not None:
            value = known.from_text(value) or value
        setattr(request, name, value)
    return request, found


def _der_well_formed(data: bytes) -> bool:
    """One top-level ASN.1 SEQUENCE covering exactly the data: what every cert, key and PKCS#12 file is."""
    from ansible.module_utils.pki_format import der_well_formed  # the one DER length parser

    return der_well_formed(data)


def _der_items(data: bytes, limit: int = 4) -> list[tuple[int, bytes]] | None:
    """The first (tag, content) items inside one DER SEQUENCE; None when it is not one."""
    def item(buf, pos):
        if pos + 2 > len(buf):
            return None
        tag, first = buf[pos], buf[pos + 1]
        if first < 0x80:
            length, start = first, pos + 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(buf):
                return None
            length, start = int.from_bytes(buf[pos + 2:pos + 2 + n], "big"), pos + 2 + n
        return (tag, buf[start:start + length], start + length) if start + length <= len(buf) else None

    outer = item(data, 0)
    if outer is None or outer[0] != 0x30:
        return None
    body, pos, out = outer[1], 0, []
    while pos < len(body) and len(out) < limit:
        found = item(body, pos)
        if found is None:
            return None
        out.append(found[:2])
        pos = found[2]
    return out


def holds_private_key(data: bytes) -> bool:
    """Whether the bytes hold a private key, whatever the file is called: a PEM private key block (PKCS#1, SEC1,
    PKCS#8, encrypted PKCS#8), or DER PKCS#8 / EncryptedPrivateKeyInfo / PKCS#1 / SEC1 / PKCS#12 (a SAT .key)."""
    if re.search(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----|-----BEGIN PKCS12-----", data):
        return True
    items = _der_items(data)
    if not items or len(items) < 2:
        return False
    (t0, v0), (t1, _v1) = items[0], items[1]
    if t0 == 0x02 and v0 in (b"\x00", b"\x01") and t1 == 0x30 and len(items) > 2 and items[2][0] == 0x04:
        return True  # PKCS#8 PrivateKeyInfo / OneAsymmetricKey: version, algorithm, OCTET STRING key
    if t0 == 0x02 and v0 == b"\x03" and t1 == 0x30:
        return True  # PKCS#12 PFX: version 3, authSafe ContentInfo
    if t0 == 0x02 and v0 == b"\x00" and t1 == 0x02 and len(items) > 2 and items[2][0] == 0x02:
        return True  # PKCS#1 RSAPrivateKey: version 0, modulus, publicExponent...
    if t0 == 0x02 and v0 == b"\x01" and t1 == 0x04:
        return True  # SEC1 ECPrivateKey: version 1, OCTET STRING key
    return t0 == 0x30 and t1 == 0x04 and len(items) == 2  # EncryptedPrivateKeyInfo: algorithm, encrypted data


def attachment_defect(filename: str, data: bytes) -> str | None:
    """Structural sanity of a certificate file (PEM blocks decode to DER, or DER is whole); cert_validate judges."""
    if not data:
        return f"adjunto vacío: {filename}"
    if b"-----BEGIN " in data:
        from ansible.module_utils.pki_format import pem_matches  # the one PEM reader

        try:
            blocks = pem_matches(data)
        except ValueError:
            return f"adjunto corrupto (base64 inválido en PEM): {filename}"
        if not blocks:
            return f"adjunto corrupto (bloque PEM incompleto): {filename}"
        for _label, der, block in blocks:
            if b"Proc-Type:" in block:  # a legacy encrypted key: its body is ciphertext, not DER
                continue
            if not _der_well_formed(der):
                return f"adjunto corrupto (DER mal formado en PEM): {filename}"
        return None
    if not _der_well_formed(data):
        return f"adjunto corrupto (ni PEM ni DER válido): {filename}"
    return None


def _unsafe_zip_name(name: str) -> bool:
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    return posix.is_absolute() or win.is_absolute() or bool(win.drive) or ".." in posix.parts or ".." in win.parts


def _zip_members(filename: str, data: bytes, max_total: int, max_entries: int) -> tuple[list[Attachment], str | None]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except Exception as exc:  # BadZipFile, NotImplementedError (zip version), struct.error...: all mean corrupt
        return [], f"zip corrupto {filename}: {exc}"
    if len(infos) > max_entries:
        return [], f"zip con demasiadas entradas ({len(infos)} > {max_entries}): {filename}"
    bad = [i.filename for i in infos if _unsafe_zip_name(i.filename)]
    if bad:
        return [], f"zip con ruta insegura {bad[0]!r}: {filename}"
    if sum(i.file_size for i in infos) > max_total:
        return [], f"zip demasiado grande al descomprimir (> {max_total} bytes): {filename}"
    members, total = [], 0
    for info in infos:
        if info.is_dir() or not info.filename.lower().endswith(CERT_EXTENSIONS):
            continue
        try:
            with archive.open(info) as fh:
                content = fh.read(max_total - total + 1)  # declared sizes can lie: bound the real read
        except Exception as exc:  # zipfile surfaces zlib/bz2/lzma/struct errors of a damaged member as they come
            return [], f"zip corrupto {filename}!{info.filename}: {exc}"
        total += len(content)
        if total > max_total:
            return [], f"zip demasiado grande al descomprimir (> {max_total} bytes): {filename}"
        members.append(Attachment(PurePosixPath(info.filename).name, content, f"{filename}!{info.filename}"))
    return members, None


def _known(providers):
    """The registry (a Registry or the inventory's dict), or None when the caller reads no provider."""
    return None if providers is None else registry(providers)


def _sender_service(sender: str, known) -> str | None:
    """The provider whose sender domains hold the sender's domain (or a parent of it)."""
    domain = sender.rpartition("@")[2].lower()
    for listed, service in (known.domains() if known is not None else {}).items():
        if domain == listed or domain.endswith("." + listed):
            return service
    return None


def _folio(text: str, known):
    """(folio, provider name) of the first folio of the registry in `text`, or (None, None)."""
    found = known.parse_folio(text) if known is not None else None
    if not found:
        return None, None
    provider, year, number = found
    return provider.folio(year, number), provider.name


def parse_message(
    raw: bytes,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
    max_zip_entries: int = DEFAULT_MAX_ZIP_ENTRIES,
    providers=None,
    own_senders=(),
    own_message_ids=(),
) -> ParsedMessage:
    """Classify one raw message as request, delivery, reply, automatic, bounce or unknown. Never raises.

    providers: the provider registry (folios, sender domains, "Servicio:"); None only for a caller that reads the
    Message-ID alone (then no folio, delivery domain or provider is recognised).

    own_senders: the From addresses of our own notices; own_message_ids: Message-IDs we recorded as sent. Either
    makes a message that comes back 'automatic' (filed, never read as a requester's reply).
    """
    known = _known(providers)  # a defective registry is the caller's error, not the message's
    try:
        parsed = _parse(raw, max_attachment_bytes, max_zip_entries, known,
                        {a.strip().lower() for a in own_senders if a}, own_message_ids)
    except Exception as exc:  # a defect the parser did not foresee still ends in quarantine, not in a crash
        parsed = ParsedMessage("unknown", _fallback_id(raw),
                               reason=redact(f"mensaje ilegible ({type(exc).__name__}: {exc})"), quarantine=True)
    parsed.raw = raw
    return parsed


TNEF_TYPES = ("application/ms-tnef", "application/vnd.ms-tnef")


def _tnef(content: bytes, plain: list, markup: list) -> tuple[list[Attachment], str | None]:
    """The files (and the body, into plain/markup) of an Outlook winmail.dat; a defect when unreadable."""
    try:
        from tnefparse.tnef import TNEF
    except ImportError:
        return [], "winmail.dat (formato TNEF de Outlook): falta el paquete tnefparse en el controlador"
    try:
        tnef = TNEF(content, do_checksum=False)
        files = []
        for att in tnef.attachments:
            name = att.long_filename() or att.name or "adjunto"
            files.append(Attachment(name, bytes(att.data or b""), f"winmail.dat!{name}"))
        for value, into in ((tnef.body, plain), (tnef.htmlbody, markup)):
            if value:
                into.append(_decode_bytes(value, "cp1252") if isinstance(value, bytes) else str(value))
    except Exception as exc:  # tnefparse raises ValueError, struct.error, IndexError on a damaged file
        return [], redact(f"winmail.dat (formato TNEF de Outlook) ilegible: {type(exc).__name__}: {exc}")
    if not files and not (tnef.body or tnef.htmlbody):
        return [], "winmail.dat (formato TNEF de Outlook) ilegible: no contiene texto ni archivos"
    return files, None


def _header_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = _decode_bytes(part.get_payload(decode=True) or b"", part.get_content_charset())
    return [email.message_from_string(block) for block in re.split(r"\r?\n\s*\r?\n", text) if block.strip()]


def _bounce_facts(msg: Message, body: str) -> dict:
    """What a DSN says: the returned message's Message-ID and subject, and each recipient's action and status."""
    facts = {"original_message_id": None, "original_subject": None, "recipients": []}
    original = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            for block in _header_blocks(part):
                rcpt = block.get("Final-Recipient") or block.get("Original-Recipient")
                if rcpt:
                    facts["recipients"].append({
                        "recipient": decode_header_value(rcpt).rsplit(";", maxsplit=1)[-1].strip(),
                        "action": decode_header_value(block.get("Action")).lower() or None,
                        "status": decode_header_value(block.get("Status")) or None,
                        "diagnostic": redact(decode_header_value(block.get("Diagnostic-Code")), 200) or None})
        elif original is None and ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            original = inner[0] if isinstance(inner, list) and inner else None
        elif original is None and ctype in ("text/rfc822-headers", "message/rfc822-headers",
                                            "message/global-headers"):
            original = email.message_from_bytes(part.get_payload(decode=True) or b"")
    if original is not None:
        mid = MESSAGE_ID_RE.search(decode_header_value(original.get("Message-ID")))
        facts["original_message_id"] = mid.group(0) if mid else None
        facts["original_subject"] = decode_header_value(original.get("Subject")) or None
    else:  # the classic bounce quotes the returned headers in its text
        mid = re.search(r"(?im)^\s*>?\s*Message-ID:\s*(<[^<>\s]+>)", body)
        subj = re.search(r"(?im)^\s*>?\s*Subject:\s*(.+)$", body)
        facts["original_message_id"] = mid.group(1) if mid else None
        facts["original_subject"] = subj.group(1).strip() if subj else None
    if not facts["recipients"]:
        facts["recipients"] = [{"recipient": r, "action": "failed", "status": None, "diagnostic": None}
                               for r in dict.fromkeys(EMAIL_RE.findall(body)) if not MAILER_DAEMON_RE.match(r)][:5]
    return facts


def _automatic(msg: Message, parsed: ParsedMessage, own_senders: set, own_message_ids) -> tuple[str, str] | None:
    """(kind, why) for mail no person wrote to the Mesa: DSNs, our own notices, auto-replies; None otherwise."""
    ctype, report = msg.get_content_type(), (msg.get_param("report-type") or "")
    report = report.lower() if isinstance(report, str) else ""
    return_path = decode_header_value(msg.get("Return-Path")).strip()
    if ctype == "multipart/report" and report in ("delivery-status", "global-delivery-status"):
        return "bounce", "notificación de estado de entrega (DSN)"
    if (MAILER_DAEMON_RE.match(parsed.sender) or return_path == "<>") and BOUNCE_SUBJECT_RE.search(parsed.subject):
        return "bounce", f"aviso de no entrega de {parsed.sender or 'el servidor de correo'}"
    if parsed.sender and parsed.sender in own_senders:
        parsed.own = True
        return "automatic", f"aviso propio de la Mesa de Servicios (remitente {parsed.sender})"
    if parsed.message_id in own_message_ids:
        parsed.own = True
        return "automatic", "aviso propio de la Mesa de Servicios (Message-ID registrado como enviado)"
    auto = decode_header_value(msg.get("Auto-Submitted")).split(";", maxsplit=1)[0].strip().lower()
    if auto and auto != "no":
        return "automatic", f"correo automático (Auto-Submitted: {redact(auto, 40)})"
    for header in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Autogenerated"):
        if msg.get(header) is not None:
            return "automatic", f"respuesta automática ({header})"
    precedence = decode_header_value(msg.get("Precedence")).strip().lower()
    if precedence in ("auto_reply", "junk"):
        return "automatic", f"respuesta automática (Precedence: {precedence})"
    if AUTO_SUBJECT_RE.search(parsed.subject):
        return "automatic", "respuesta automática (fuera de la oficina)"
    if ctype == "multipart/report" and report == "disposition-notification":
        return "automatic", "acuse de lectura"
    if MAILER_DAEMON_RE.match(parsed.sender):
        return "automatic", f"correo del servidor de correo ({parsed.sender})"
    return None


def _parse(raw: bytes, max_attachment_bytes: int, max_zip_entries: int, known,
           own_senders: set = frozenset(), own_message_ids=()) -> ParsedMessage:
    msg = email.message_from_bytes(raw)
    message_id = decode_header_value(msg.get("Message-ID")).strip() or _fallback_id(raw)
    subject = decode_header_value(msg.get("Subject"))
    sender_name, sender = email.utils.parseaddr(decode_header_value(msg.get("From")))
    parsed = ParsedMessage(
        "unknown", message_id, subject=subject, sender=sender.lower(), sender_name=sender_name,
        date=decode_header_value(msg.get("Date")),
    )

    plain, markup, defects = [], [], []
    raw_attachments: list[Attachment] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global") and parsed.forwarded is None and part is not msg:
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else None
            if isinstance(inner, Message):
                parsed.forwarded = {
                    "from": email.utils.parseaddr(decode_header_value(inner.get("From")))[1].lower() or None,
                    "subject": decode_header_value(inner.get("Subject")) or None,
                    "message_id": decode_header_value(inner.get("Message-ID")).strip() or None}
        if part.is_multipart():
            continue
        name = _part_filename(part)
        disposition = (part.get_content_disposition() or "").lower()
        if ctype in TNEF_TYPES or (name or "").lower() == "winmail.dat":
            files, defect = _tnef(part.get_payload(decode=True) or b"", plain, markup)
            raw_attachments.extend(files)
            if defect:
                defects.append(defect)
            continue
        if name is None and disposition != "attachment":
            if ctype == "text/plain":
                plain.append(_part_text(part))
            elif ctype == "text/html":
                markup.append(_part_text(part))
            continue
        content = part.get_payload(decode=True) or b""
        raw_attachments.append(Attachment(name or "adjunto", content))
    parsed.body = "\n".join(plain) if any(p.strip() for p in plain) else "\n".join(html_to_text(h) for h in markup)

    automatic = _automatic(msg, parsed, own_senders, own_message_ids)
    if automatic:
        parsed.kind, parsed.auto = automatic
        text = parsed.subject
        if parsed.kind == "bounce":
            parsed.bounce = _bounce_facts(msg, parsed.body)
            text = parsed.bounce["original_subject"] or parsed.subject
        parsed.folio, ticket = _folio(text, known)[0], TICKET_RE.search(text)
        parsed.ticket_id = int(ticket.group(1)) if ticket else None
        return parsed  # filed as it is: never a ticket, never a quarantine notice, never an answer

    attachments = []
    for att in raw_attachments:
        low = att.filename.lower()
        if len(att.content) > max_attachment_bytes:
            defects.append(f"adjunto demasiado grande ({len(att.content)} > {max_attachment_bytes} bytes): "
                           f"{att.filename}")
        elif low.endswith(".zip"):
            members, defect = _zip_members(att.filename, att.content, max_attachment_bytes, max_zip_entries)
            attachments.extend(members)
            if defect:
                defects.append(defect)
        elif low.endswith(CERT_EXTENSIONS) or holds_private_key(att.content):
            attachments.append(att)  # a key is kept (and written 0600) whatever its name
    for att in attachments:
        defect = attachment_defect(att.source or att.filename, att.content)
        if defect:
            defects.append(defect)
    parsed.attachments = attachments

    text = f"{subject}\n{parsed.body}"
    parsed.folio, parsed.service = _folio(text, known)
    ticket = TICKET_RE.search(subject) or TICKET_RE.search(parsed.body)
    parsed.ticket_id = int(ticket.group(1)) if ticket else None
    fingerprint = FINGERPRINT_RE.search(parsed.body)
    parsed.fingerprint = fingerprint.group(1).upper() if fingerprint else None

    provider = _sender_service(parsed.sender, known)
    has_cert_files = bool(attachments) or any(
        a.filename.lower().endswith((".zip", *CERT_EXTENSIONS)) for a in raw_attachments
    )
    if has_cert_files or provider:
        parsed.kind = "delivery"
        parsed.service = parsed.service or provider or (
            _sender_service(parsed.forwarded["from"] or "", known) if parsed.forwarded else None)
        # A provider mails "a las dependencias usuarias" without our folio: the handler matches open tickets.
        near = FOLIO_LIKE_RE.search(text)
        if not parsed.folio and near:
            defects.insert(0, f"folio con formato inválido: {near.group(0)!r}")
        if not attachments and not defects:
            defects.append("entrega sin adjunto de certificado (.cer/.crt/.pem/.der/.key/.pfx/.p12 o .zip)")
    else:
        request, found = parse_request_fields(parsed.body, known)
        is_reply = parsed.ticket_id is not None or (parsed.folio and re.match(r"^\s*(re|rv|fw|fwd)\s*:", subject, re.I))
        if is_reply:
            parsed.kind = "reply"
            parsed.request, _missing = parse_request_fields(_strip_quoted(parsed.body), known)
        elif found >= 2:
            parsed.kind = "request"
            parsed.request = request
            parsed.service = request.service if known is not None and request.service in known else parsed.service
        else:
            parsed.reason = "no es solicitud, respuesta ni entrega: sin campos de solicitud, folio, ticket ni adjunto"
            parsed.quarantine = True
    if defects:
        parsed.reason = redact("; ".join(defects), 900)
        parsed.quarantine = True
    return parsed


def _fallback_id(raw: bytes) -> str:
    return f"<sha256-{hashlib.sha256(raw).hexdigest()}@sin-message-id>"


# ---- Maildir ----------------------------------------------------------------------------------------------------


@dataclass
class IntakeResult:
    processed: list[tuple[str, ParsedMessage, object]] = field(default_factory=list)  # (file, parsed, handler's)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, message_id) seen before
    quarantined: list[tuple[str, str, ParsedMessage | None]] = field(default_factory=list)  # (file, reason, parsed)
    filed: list[tuple[str, ParsedMessage, object]] = field(default_factory=list)  # automatic mail, bounces


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_maildir(path) -> Path:
    path = Path(path)
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _base_name(name: str) -> str:
    return name.split(":", 1)[0]


def _move_to_cur(maildir: Path, name: str) -> None:
    os.rename(maildir / "new" / name, maildir / "cur" / f"{_base_name(name)}:2,S")
    _fsync_dir(maildir / "cur")
    _fsync_dir(maildir / "new")


def quarantine_bytes(raw: bytes, reason: str) -> bytes:
    """The original message with an X-Quarantine-Reason header prepended; the rest of the bytes untouched."""
    value = email.header.Header(" ".join(reason.split())[:900], "utf-8").encode(maxlinelen=76)
    return f"X-Quarantine-Reason: {value}\r\n".encode("ascii") + raw


QUARANTINE_HEADERS = (b"x-quarantine-reason:", b"x-intake-source:")


def unquarantine_bytes(data: bytes) -> bytes:
    """The message as it arrived: the headers quarantine put on top (and their folded lines) taken off again."""
    while data[:32].lower().startswith(QUARANTINE_HEADERS):
        end = data.find(b"\n")
        while end != -1 and data[end + 1:end + 2] in (b" ", b"\t"):
            end = data.find(b"\n", end + 1)
        data = data[end + 1:] if end != -1 else b""
    return data


def release_from_maildir(quarantine_dir, maildir, message_id: str) -> list[bytes]:
    """Put the quarantined messages with this Message-ID back into maildir/new as they arrived; returns them."""
    quarantine_dir, maildir = ensure_maildir(quarantine_dir), ensure_maildir(maildir)
    released = []
    for name in sorted(os.listdir(quarantine_dir / "new")):
        path = quarantine_dir / "new" / name
        if name.startswith(".") or not path.is_file():
            continue
        raw = unquarantine_bytes(path.read_bytes())
        if parse_message(raw).message_id != message_id.strip():
            continue
        write_atomic(str(maildir / "new" / name), raw, 0o600)
        _fsync_dir(maildir / "new")
        path.unlink()
        released.append(raw)
    return released


def _quarantine(maildir: Path, name: str, raw: bytes, reason: str, quarantine_dir: Path) -> None:
    # Same file name in quarantine: a crash after the copy and a rerun overwrite it instead of duplicating it.
    fd, tmp = tempfile.mkstemp(dir=quarantine_dir / "tmp", prefix=".q-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(quarantine_bytes(raw, reason))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, quarantine_dir / "new" / _base_name(name))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(quarantine_dir / "new")
    os.unlink(maildir / "new" / name)
    _fsync_dir(maildir / "new")


def process_maildir(
    maildir_path,
    handler: Callable[[ParsedMessage], object],
    quarantine_dir,
    seen: Callable[[str], bool] | None = None,
    prepare: Callable[[ParsedMessage], None] | None = None,
    on_quarantine: Callable[[str, str, ParsedMessage | None], None] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    **parse_options,
) -> IntakeResult:
    """Process every message of `new/` in file-name order (arrival order for Maildir names).

    The contract `run_intake` describes; a processed or filed message moves to `cur/` with flag S, a quarantined one
    to `quarantine_dir` with its X-Quarantine-Reason.
    """
    maildir = ensure_maildir(maildir_path)
    quarantine_dir = ensure_maildir(quarantine_dir)

    def items():
        for name in sorted(os.listdir(maildir / "new")):
            if name.startswith("."):
                continue
            try:
                size = (maildir / "new" / name).stat().st_size
                raw = (maildir / "new" / name).read_bytes() if size <= max_message_bytes else None
            except FileNotFoundError:  # another intake run took it
                continue
            yield name, raw, size, None

    def quarantine(name, raw, reason):
        if raw is None:  # too large to read: moved as it is, the reason is in the notice and the outcome
            os.replace(maildir / "new" / name, quarantine_dir / "new" / _base_name(name))
            _fsync_dir(quarantine_dir / "new")
            _fsync_dir(maildir / "new")
        else:
            _quarantine(maildir, name, raw, reason, quarantine_dir)

    moves = {"processed": lambda name: _move_to_cur(maildir, name), "filed": lambda name: _move_to_cur(maildir, name),
             "quarantine": quarantine}
    return run_intake(items(), moves, handler, seen=seen, prepare=prepare, on_quarantine=on_quarantine,
                      max_message_bytes=max_message_bytes, **parse_options)


def run_intake(
    items,
    moves: dict,
    handler: Callable[[ParsedMessage], object],
    seen: Callable[[str], bool] | None = None,
    prepare: Callable[[ParsedMessage], None] | None = None,
    on_quarantine: Callable[[str, str, ParsedMessage | None], None] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    received_at: Callable[[object], str | None] = lambda when: None,
    **parse_options,
) -> IntakeResult:
    """The intake loop shared by the Maildir and IMAP backends; no message is lost, doubled or allowed to stop it.

    items: (name, raw or None when over max_message_bytes, size, arrival) in arrival order. moves: processed(name),
    filed(name), quarantine(name, raw, reason). For each message: larger than max_message_bytes -> quarantine before
    parsing; parsed, then `prepare(parsed)` (the caller may re-key it); `seen(message_id)` -> moved to processed
    (a rerun after a crash); a defect found by the parser -> quarantine; else `handler(parsed)`, which must commit
    its own work before returning: then the message moves (automatic mail and bounces to `filed`). The handler may
    raise QuarantineMessage(reason). Any other error of that one message quarantines it with its (redacted) reason
    and the run goes on; a transient one (`is_transient`: SMTP, IMAP, database outage) stops the run with the
    message left where it is, for the next run. `on_quarantine(name, reason, parsed)` (the Mesa's notice) runs before
    the message moves to quarantine, so a notice that cannot be sent leaves it in the inbox.
    """
    result = IntakeResult()
    done_here: set[str] = set()

    def to_quarantine(name, raw, reason, parsed):
        reason = redact(reason, 900) or "sin motivo"
        if parsed is not None:
            parsed.reason, parsed.quarantine = reason, True
        if on_quarantine is not None:
            on_quarantine(name, reason, parsed)
        moves["quarantine"](name, raw, reason)
        result.quarantined.append((name, reason, parsed))

    for name, raw, size, arrival in items:
        if raw is None or size > max_message_bytes:
            to_quarantine(name, raw, f"correo demasiado grande ({size} > {max_message_bytes} bytes): no se leyó; "
                                     "pida al remitente que lo envíe en partes o ajuste max_message_bytes", None)
            continue
        parsed = parse_message(raw, **parse_options)
        parsed.received_at = received_at(arrival)
        try:
            if prepare is not None:
                prepare(parsed)
            if parsed.kind not in FILED_KINDS and (
                    parsed.message_id in done_here or (seen is not None and seen(parsed.message_id))):
                moves["processed"](name)
                result.skipped.append((name, parsed.message_id))
                continue
            if parsed.quarantine:
                to_quarantine(name, raw, parsed.reason or "sin motivo", parsed)
                continue
            outcome = handler(parsed)
        except QuarantineMessage as exc:
            to_quarantine(name, raw, str(exc) or "rechazado por el manejador", parsed)
            continue
        except Exception as exc:
            if is_transient(exc):
                raise
            to_quarantine(name, raw, f"error al procesar el correo ({type(exc).__name__}: {exc}); los demás "
                                     "correos siguen su curso", parsed)
            continue
        if parsed.kind in FILED_KINDS:
            moves["filed"](name)
            result.filed.append((name, parsed, outcome))
            continue
        done_here.add(parsed.message_id)
        moves["processed"](name)
        result.processed.append((name, parsed, outcome))
    return result


# ---- attachments ------------------------------------------------------------------------------------------------


def sanitise_filename(name: str) -> str:
    base = re.split(r"[\\/]", name)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".-")
    return base[:120] or "adjunto"


def extract_attachments(parsed: ParsedMessage, dest_dir) -> list[Path]:
    """Write each certificate attachment into dest_dir atomically; a file holding a private key or a PKCS#12
    (by its name or by its content, whatever it is called) gets mode 0600."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: list[Path] = []
    used: set[str] = set()
    for att in parsed.attachments:
        name = sanitise_filename(att.filename)
        stem, dot, ext = name.rpartition(".")
        stem, ext = (stem, dot + ext) if dot else (name, "")
        n = 1
        while name.lower() in used:
            name = f"{stem}-{n}{ext}"
            n += 1
        used.add(name.lower())
        secret = name.lower().endswith(SECRET_EXTENSIONS) or holds_private_key(att.content)
        mode = 0o600 if secret else 0o644
        write_atomic(str(dest / name), att.content, mode)
        written.append(dest / name)
    return written
