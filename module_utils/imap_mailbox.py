"""The Mesa de Servicios mailbox over IMAP: read, classify and move messages on the server without losing one.

Pure code (stdlib only: imaplib, ssl, email): no Ansible import, so pytest drives it against a real Dovecot.
`process_imap` keeps `mail_intake.process_maildir`'s contract: a message leaves the folder only after its outcome is
committed (moved to the processed folder once the handler returned, or copied to quarantine with its reason), so a
run killed at any point neither loses nor doubles one; UIDs give the order and UIDVALIDITY guards them.
Every read is `BODY.PEEK[]`: reading never sets \\Seen, and `preview` (check mode) changes nothing at all.
Automatic mail (auto-replies, our own notices come back, read receipts) and bounces are filed in their own folder
(`filed_folder`, default "Automaticos"): kept, never answered, never a ticket, never a quarantine notice.
A message larger than the size cap is moved to quarantine as it is, without being downloaded.
"""
from __future__ import annotations

import base64
import imaplib
import ipaddress
import re
import ssl
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

from ansible.module_utils.mail_intake import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FILED_KINDS,
    IntakeResult,
    ParsedMessage,
    parse_message,
    quarantine_bytes,
    run_intake,
    unquarantine_bytes,
)

TLS_MODES = ("implicit", "starttls", "none")
SOURCE_HEADER = "X-Intake-Source"
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                       "dec"), start=1)}
_INTERNALDATE_RE = re.compile(rb'INTERNALDATE "\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) '
                              rb'([+-])(\d{2})(\d{2})"')
_UID_RE = re.compile(rb"\bUID (\d+)")
_SIZE_RE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_RESPONSE_START_RE = re.compile(rb"^\d+ \(")
_NEWLINE_RE = re.compile(rb"\r\n|\r|\n")


class ImapError(Exception):
    """The mailbox could not be reached, trusted, logged into or changed; the message names the defect."""

    transient = True  # the intake stops and leaves the message for the next run (mail_intake.is_transient)


def xoauth2_string(user: str, token: str) -> bytes:
    """The SASL XOAUTH2 initial response (Google, Exchange Online): user=U^Aauth=Bearer T^A^A, before base64."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def encode_folder(name: str) -> str:
    """A folder name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    out, pending = [], []

    def flush():
        if pending:
            b64 = base64.b64encode("".join(pending).encode("utf-16-be")).rstrip(b"=").decode("ascii")
            out.append("&" + b64.replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return '"' + "".join(out).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _search_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_internaldate(text: bytes) -> datetime | None:
    """INTERNALDATE "17-Jul-1996 02:44:25 -0700" as an aware datetime (offset kept); None when absent."""
    m = _INTERNALDATE_RE.search(text)
    if not m or m.group(2).decode().lower() not in _MONTHS:
        return None
    day, mon, year, hh, mm, ss, sign, oh, om = (g.decode() for g in m.groups())
    offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
    return datetime(int(year), _MONTHS[mon.lower()], int(day), int(hh), int(mm), int(ss),
                    tzinfo=timezone(offset))


def _text(data) -> str:
    parts = []
    for item in data or ():
        if isinstance(item, tuple):
            item = item[0]
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if item:
            parts.append(str(item))
    return " ".join(parts) or "(no detail)"


class _IMAP4_SSL(imaplib.IMAP4_SSL):
    """IMAP4_SSL that checks the certificate against server_name (host may be an IP address)."""

    def __init__(self, host, port, ssl_context, timeout, server_name):
        self._server_name = server_name
        super().__init__(host, port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout):
        sock = imaplib.IMAP4._create_socket(self, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self._server_name)


class ImapMailbox:
    """One IMAP folder of the Mesa mailbox, with its processed and quarantine folders. Context manager."""

    def __init__(self, host, port, user, password=None, oauth2_token=None, tls="implicit", ca_file=None,
                 folder="INBOX", processed_folder="Procesados", quarantine_folder="Cuarentena", timeout=30,
                 server_name=None, filed_folder="Automaticos"):
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {tls!r}")
        if tls == "none" and not is_loopback(host):
            raise ImapError(f"tls='none' is allowed only for a loopback host, not {host!r}: the password or token "
                            "would cross the network in clear text; use tls='implicit' (993) or 'starttls' (143)")
        if (password is None) == (oauth2_token is None):
            raise ValueError("exactly one of password and oauth2_token is required")
        self.host, self.port, self.user, self.tls = host, int(port), user, tls
        self.ca_file, self.server_name, self.timeout = ca_file, server_name or host, timeout
        self.folder, self.processed_folder, self.quarantine_folder = folder, processed_folder, quarantine_folder
        self.filed_folder = filed_folder
        self._password, self._token = password, oauth2_token
        self.uidvalidity: int | None = None
        self.capabilities: frozenset = frozenset()
        self._selected: tuple[str, bool] | None = None
        self._folders: set[str] = set()
        self._conn = None
        try:
            self._connect()
            self._login()
        except BaseException:
            self._drop()
            raise

    def __repr__(self):  # never the password or token
        return (f"ImapMailbox({self.user}@{self.host}:{self.port}, tls={self.tls}, folder={self.folder!r}, "
                f"{'oauth2' if self._token is not None else 'password'})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- connection ------------------------------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ImapError(f"cannot load the CA file {self.ca_file}: {exc}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx  # CERT_REQUIRED and check_hostname are the defaults of create_default_context

    def _connect(self):
        where = f"{self.host}:{self.port}"
        try:
            if self.tls == "implicit":
                self._conn = _IMAP4_SSL(self.host, self.port, self._context(), self.timeout, self.server_name)
            else:
                self._conn = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
                if self.tls == "starttls":
                    if "STARTTLS" not in self._conn.capabilities:
                        raise ImapError(f"{where} does not offer STARTTLS; refusing to log in without TLS")
                    host, self._conn.host = self._conn.host, self.server_name  # starttls() checks self.host
                    try:
                        self._conn.starttls(ssl_context=self._context())
                    finally:
                        self._conn.host = host
        except ssl.SSLCertVerificationError as exc:
            raise ImapError(f"TLS certificate of {where} (name {self.server_name!r}) not trusted against "
                            f"{self.ca_file or 'the system CAs'}: {exc.verify_message or exc}") from None
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(self._clean(f"cannot connect to {where} (tls={self.tls}): {exc}")) from None

    def _login(self):
        conn = self._conn
        if self._token is not None:
            sent = []

            def xoauth2(_challenge):
                # On failure the server sends a JSON error challenge; RFC 7628 wants an empty answer to it.
                sent.append(1)
                return xoauth2_string(self.user, self._token) if len(sent) == 1 else b""

            self._call("XOAUTH2 login", conn.authenticate, "XOAUTH2", xoauth2)
        elif self._password.isascii() and self.user.isascii():
            self._call("login", conn.login, self.user, self._password)
        else:  # LOGIN is ASCII-only in imaplib; SASL PLAIN carries UTF-8
            plain = b"\0" + self.user.encode() + b"\0" + self._password.encode()
            self._call("PLAIN login", conn.authenticate, "PLAIN", lambda _challenge: plain)
        # The capabilities after login are the ones that count (Dovecot announces MOVE only then).
        data = self._call("CAPABILITY", conn.capability)
        self.capabilities = frozenset(_text(data).upper().split())

    def _clean(self, text: str) -> str:
        """The text with the password/token (and their encodings) masked: errors may quote what was sent."""
        for secret in (self._password, self._token):
            if secret:
                for form in (secret, base64.b64encode(secret.encode()).decode()):
                    text = text.replace(form, "********")
        if self._token:
            text = text.replace(base64.b64encode(xoauth2_string(self.user, self._token)).decode(), "********")
        return text

    def _call(self, what, func, *args):
        if self._conn is None:
            raise ImapError(f"{what}: the connection to {self.host}:{self.port} is closed")
        try:
            typ, data = func(*args)
        except (OSError, imaplib.IMAP4.error) as exc:  # abort and readonly are IMAP4.error too
            detail = exc.args[0] if isinstance(exc, imaplib.IMAP4.error) and exc.args else exc
            detail = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else detail
            raise ImapError(self._clean(f"{what} failed on {self.host}:{self.port}: {detail}")) from None
        if typ != "OK":
            raise ImapError(self._clean(f"{what} refused by {self.host}:{self.port}: {typ} {_text(data)}"))
        return data

    def _drop(self):
        if self._conn is not None:
            try:
                self._conn.shutdown()
            except OSError:
                pass
            self._conn = None

    def close(self):
        """Log out (never CLOSE, which would expunge); safe to call twice."""
        if self._conn is None:
            return
        try:
            self._conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
        finally:
            self._drop()

    # --- folders ---------------------------------------------------------------------------------------------
    def _select(self, folder, readonly=False):
        if self._selected == (folder, readonly):
            return
        self._selected = None
        self._call(f"{'EXAMINE' if readonly else 'SELECT'} {folder}", self._conn.select, encode_folder(folder),
                   readonly)
        _typ, data = self._conn.response("UIDVALIDITY")
        value = int(data[0]) if data and data[0] else None
        if folder == self.folder:
            if self.uidvalidity is not None and value != self.uidvalidity:
                raise ImapError(f"UIDVALIDITY of {folder} changed from {self.uidvalidity} to {value}: the server "
                                "renumbered the folder; stopping rather than acting on the wrong messages")
            self.uidvalidity = value
        self._selected = (folder, readonly)

    def ensure_folder(self, folder):
        """Create the folder (and subscribe to it) when missing."""
        if folder in self._folders:
            return
        quoted = encode_folder(folder)
        if not [d for d in self._call(f"LIST {folder}", self._conn.list, '""', quoted) if d]:
            try:
                self._call(f"CREATE {folder}", self._conn.create, quoted)
            except ImapError:
                if not [d for d in self._call(f"LIST {folder}", self._conn.list, '""', quoted) if d]:
                    raise  # not a race with another run creating it
            try:
                self._call(f"SUBSCRIBE {folder}", self._conn.subscribe, quoted)
            except ImapError:
                pass  # only mail clients care about subscriptions
        self._folders.add(folder)

    # --- reading ---------------------------------------------------------------------------------------------
    def messages(self, readonly=False, max_bytes=None) -> Iterator[tuple[int, bytes | None, datetime]]:
        """(uid, raw, internaldate) of every undeleted message of the folder in UID order; never sets \\Seen.

        readonly=True EXAMINEs the folder (check mode). UIDs are listed once; a message another run took meanwhile
        is passed over. Messages flagged \\Deleted (a move interrupted before its expunge) are already copied.
        With max_bytes, a larger message (RFC822.SIZE, asked first) is not downloaded: raw is None and its size is
        in self.sizes[uid].
        """
        self._select(self.folder, readonly)
        data = self._call("UID SEARCH", self._conn.uid, "SEARCH", None, "UNDELETED")
        uids = sorted(int(u) for u in _text(data).split() if u.isdigit())
        self.sizes: dict[int, int] = {}
        for uid in uids:
            self._select(self.folder, readonly)  # quarantine() looks into the quarantine folder in between
            if max_bytes is not None:
                head = self._fetch(uid, "(UID INTERNALDATE RFC822.SIZE)")
                size = _SIZE_RE.search(head[0]) if head else None
                if head is None:
                    continue
                self.sizes[uid] = int(size.group(1)) if size else 0
                if self.sizes[uid] > max_bytes:
                    internaldate = parse_internaldate(head[0])
                    if internaldate is None:
                        raise ImapError(f"the server sent no INTERNALDATE for UID {uid} of {self.folder}")
                    yield uid, None, internaldate
                    continue
            found = self._fetch(uid, "(UID INTERNALDATE BODY.PEEK[])")
            if found is None or found[1] is None:
                continue
            text, raw = found
            internaldate = parse_internaldate(text)
            if internaldate is None:
                raise ImapError(f"the server sent no INTERNALDATE for UID {uid} of {self.folder}")
            yield uid, raw, internaldate

    def _fetch(self, uid, items) -> tuple[bytes, bytes | None] | None:
        """(response text, literal) of one UID; other FETCH responses the server slips in are ignored."""
        data = self._call(f"UID FETCH {uid}", self._conn.uid, "FETCH", str(uid), items)
        responses: list[list] = []
        for item in data:
            if isinstance(item, tuple):
                responses.append([item[0], item[1]])
            elif isinstance(item, bytes):
                if _RESPONSE_START_RE.match(item) or not responses:
                    responses.append([item, None])
                else:  # the rest of the line after a literal
                    responses[-1][0] += b" " + item
        for text, literal in responses:
            m = _UID_RE.search(text)
            if m and int(m.group(1)) == uid:
                return text, literal
        return None

    # --- moving ----------------------------------------------------------------------------------------------
    def _remove(self, uid):
        """Flag \\Deleted and expunge only that UID (UIDPLUS), else EXPUNGE the folder."""
        self._call(f"UID STORE {uid}", self._conn.uid, "STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
        if "UIDPLUS" in self.capabilities:
            self._call(f"UID EXPUNGE {uid}", self._conn.uid, "EXPUNGE", str(uid))
        else:
            self._call("EXPUNGE", self._conn.expunge)

    def move(self, uid, folder):
        """Move one message of the folder to another folder (created when missing)."""
        self.ensure_folder(folder)
        self._select(self.folder)
        if "MOVE" in self.capabilities:
            self._call(f"UID MOVE {uid} {folder}", self._conn.uid, "MOVE", str(uid), encode_folder(folder))
        else:  # RFC 6851's fallback; a crash between COPY and the expunge leaves a second copy in `folder`
            self._call(f"UID COPY {uid} {folder}", self._conn.uid, "COPY", str(uid), encode_folder(folder))
            self._remove(uid)

    def _source(self, uid) -> str:
        return f"{self.uidvalidity}/{uid}"

    def quarantined(self, uid) -> bool:
        """Whether the quarantine folder already holds the copy of this UID (a run died before removing it)."""
        self.ensure_folder(self.quarantine_folder)
        self._select(self.quarantine_folder, readonly=True)
        source = self._source(uid)
        data = self._call("UID SEARCH quarantine", self._conn.uid, "SEARCH", None, "HEADER", SOURCE_HEADER,
                          f'"{source}"')
        for candidate in (int(u) for u in _text(data).split() if u.isdigit()):
            # SEARCH HEADER matches substrings ("1/5" in "11/5"): compare the exact value
            found = self._fetch(candidate, f"(UID BODY.PEEK[HEADER.FIELDS ({SOURCE_HEADER})])")
            if found and found[1] is not None:
                values = re.findall(rb"(?im)^" + SOURCE_HEADER.encode() + rb":\s*(\S+)", found[1])
                if source.encode() in values:
                    return True
        return False

    def quarantine(self, uid, raw, reason, internaldate=None):
        """Put the message, with its reason and X-Intake-Source, in the quarantine folder; then remove it here.

        The copy is looked for first, so a run killed between the APPEND and the removal does not add a second one.
        """
        if self.uidvalidity is None:
            self._select(self.folder)
        if not self.quarantined(uid):
            data = f"{SOURCE_HEADER}: {self._source(uid)}\r\n".encode("ascii") + quarantine_bytes(raw, reason)
            self._call(f"APPEND {self.quarantine_folder}", self._conn.append, encode_folder(self.quarantine_folder),
                       None, internaldate, data)
        self._select(self.folder)
        self._remove(uid)

    # --- release from quarantine ---------------------------------------------------------------------------
    def _folder_exists(self, folder) -> bool:
        return folder in self._folders or bool(
            [d for d in self._call(f"LIST {folder}", self._conn.list, '""', encode_folder(folder)) if d])

    def _holds(self, folder, raw) -> bool:
        """Whether the folder already holds exactly these bytes (same size first, then the bytes)."""
        self._select(folder)
        data = self._call("UID SEARCH size", self._conn.uid, "SEARCH", None, "UNDELETED", "LARGER",
                          str(len(raw) - 1), "SMALLER", str(len(raw) + 1))
        for candidate in (int(u) for u in _text(data).split() if u.isdigit()):
            found = self._fetch(candidate, "(UID BODY.PEEK[])")
            if found and found[1] == raw:
                return True
        return False

    def release(self, message_id) -> list[bytes]:
        """Put the quarantined messages with this Message-ID back into the folder as they arrived; returns them.

        The bytes returned are the ones `messages()` will read (CRLF line ends), the arrival time (INTERNALDATE)
        is kept. A run killed between the APPEND and the removal from quarantine does not release a second copy.
        """
        message_id = message_id.strip()
        if not self._folder_exists(self.quarantine_folder):
            return []
        self._select(self.quarantine_folder)
        criteria = ["UNDELETED"]
        if message_id.isascii() and not message_id.startswith("<sha256-"):  # fallback ids are no header
            criteria += ["HEADER", "Message-ID", _search_string(message_id)]
        data = self._call("UID SEARCH quarantine", self._conn.uid, "SEARCH", None, *criteria)
        released = []
        for quid in sorted(int(u) for u in _text(data).split() if u.isdigit()):
            self._select(self.quarantine_folder)
            found = self._fetch(quid, "(UID INTERNALDATE BODY.PEEK[])")
            if not found or found[1] is None:
                continue
            raw = _NEWLINE_RE.sub(b"\r\n", unquarantine_bytes(found[1]))
            if parse_message(raw).message_id != message_id:
                continue
            if not self._holds(self.folder, raw):
                self._call(f"APPEND {self.folder}", self._conn.append, encode_folder(self.folder), None,
                           parse_internaldate(found[0]), raw)
            self._select(self.quarantine_folder)
            self._remove(quid)
            released.append(raw)
        return released


def _received_at(parsed: ParsedMessage, internaldate: datetime) -> None:
    parsed.received_at = internaldate.isoformat()


def process_imap(
    mailbox: ImapMailbox,
    handler: Callable[[ParsedMessage], object],
    seen: Callable[[str], bool] | None = None,
    prepare: Callable[[ParsedMessage], None] | None = None,
    on_quarantine: Callable[[str, str, ParsedMessage | None], None] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    **parse_options,
) -> IntakeResult:
    """Process every message of the mailbox's folder in UID order (arrival order): mail_intake.run_intake's contract.

    A message moves to the processed folder once the handler returned (its work committed), automatic mail and
    bounces to the filed folder, a quarantined one to the quarantine folder with its reason (an oversize one as it
    is, never downloaded). A transient error (IMAP, SMTP, database) stops the run with the message still in the
    folder; `seen(message_id)` lets the rerun skip (and file) what the handler already committed.
    `parsed.received_at` is the server's INTERNALDATE (ISO 8601 with offset); result entries name "imap:<uid>".
    """
    arrivals: dict[str, tuple[int, datetime]] = {}

    def items():
        for uid, raw, internaldate in mailbox.messages(max_bytes=max_message_bytes):
            name = f"imap:{uid}"
            arrivals[name] = (uid, internaldate)
            yield name, raw, mailbox.sizes.get(uid, len(raw or b"")), internaldate

    def quarantine(name, raw, reason):
        uid, internaldate = arrivals[name]
        if raw is None:  # too large to download: moved as it is (the reason is in the notice and the outcome)
            mailbox.move(uid, mailbox.quarantine_folder)
        else:
            mailbox.quarantine(uid, raw, reason, internaldate=internaldate)

    moves = {"processed": lambda name: mailbox.move(arrivals[name][0], mailbox.processed_folder),
             "filed": lambda name: mailbox.move(arrivals[name][0], mailbox.filed_folder or mailbox.processed_folder),
             "quarantine": quarantine}
    return run_intake(items(), moves, handler, seen=seen, prepare=prepare, on_quarantine=on_quarantine,
                      max_message_bytes=max_message_bytes, received_at=lambda when: when.isoformat(),
                      **parse_options)


def preview(mailbox: ImapMailbox, seen: Callable[[str], bool] | None = None,
            max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, **parse_options) -> list[dict]:
    """Check mode: how each message would be classified. EXAMINE + BODY.PEEK[]: no flag, no move, no folder made."""
    out = []
    for uid, raw, internaldate in mailbox.messages(readonly=True, max_bytes=max_message_bytes):
        if raw is None:
            out.append({"file": f"imap:{uid}", "uid": uid, "message_id": None, "kind": "unknown", "folio": None,
                        "received_at": internaldate.isoformat(), "outcome": "would_quarantine",
                        "reason": f"correo demasiado grande ({mailbox.sizes.get(uid)} > {max_message_bytes} bytes)"})
            continue
        parsed = parse_message(raw, **parse_options)
        _received_at(parsed, internaldate)
        if parsed.kind in FILED_KINDS:
            outcome = "would_file"
        elif seen is not None and seen(parsed.message_id):
            outcome = "would_skip"
        else:
            outcome = "would_quarantine" if parsed.quarantine else "would_process"
        out.append({"file": f"imap:{uid}", "uid": uid, "message_id": parsed.message_id, "kind": parsed.kind,
                    "folio": parsed.folio, "received_at": parsed.received_at, "outcome": outcome,
                    "reason": parsed.reason or parsed.auto})
    return out
