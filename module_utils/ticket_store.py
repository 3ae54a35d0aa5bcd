"""Ticket store of the procedure: state machine, gap-free folios, SLA due dates and an append-only audit log.

`TicketStore` holds every rule; a backend supplies only a connection, its schema migrations and a transaction.
SQLite is the embedded default (one file on the controller); PostgreSQL (psycopg 3) is the shared store for AWX,
where every job runs in a throw-away container. `open_store()` picks the backend from a DSN: `sqlite:///path` or a
plain path, or `postgresql://user@host:5432/db` (libpq also reads PGHOST, PGPASSWORD, PGPASSFILE..., so the
password need not sit in the DSN; `dsn_secrets()` gives what a caller must mask when it does).

Both backends run the same SQL (`?` placeholders, turned into `%s` for psycopg) and give the same guarantees:
a transition locks its ticket (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE) so concurrent writers
never lose an update; the folio counter is an upsert inside the state change's transaction, so a rollback gives
the number back (gap-free); the audit log is append-only by trigger. Ticket ids are unique but, on PostgreSQL,
not gap-free (a rolled-back insert consumes its sequence value); folios are.

State machine (DESIGN.md §5), plus the edges the design leaves implicit: `rolled_back -> deploying` (retry after a
fix), `rolled_back -> certificate_received` (the provider sends a corrected delivery), `rolled_back -> notified` (the
Mesa de Servicios is told), and the service desk's own lifecycle:
- `cancelled` (from any open state, with a reason): the Mesa withdraws the request; final.
- `duplicate` (from any open state, naming the ticket it duplicates, which must exist and not be a duplicate
  itself): final.
- `closed -> reopened` with a reason, within `SlaPolicy.reopen_business_days` business days (default 10) of the
  close; afterwards refused (ReopenRefused) with the deadline: open a new ticket instead. A reopened request goes
  on to `requester_validated`, `certificate_received`, `deploying` or `notified`.
Tickets of the expiry monitor (source `monitor`, one per certificate event, found by `event_key`) have their own
short path (MONITOR_TRANSITIONS): `received -> acknowledged -> closed` (the Mesa saw it; closed once the certificate
is renewed), or `received -> closed` directly (the scan found it renewed or retired), always with a reason.
Cancelled, duplicate and closed tickets carry `closed_at` and `close_reason`. `allowed_next(state, source)` is the
one list of what may follow; every transition is audited.

Notices sent about a ticket are recorded on it (`notices`, keyed, with `record_notice` / `transition(notice=)`), so
a rerun of the sending playbook never sends one twice.

Providers (schema v5): the `providers` table holds every provider the store has been told of (name, kind,
registered_at); tickets.service, trust_anchors.provider and fleet_locks.provider reference it, so the database
itself refuses a row for a provider nobody registered. The store learns the inventory's registry
(providers.Registry, `procedure_providers`) when given it (`open_store(..., providers=)` or `register_providers()`,
an idempotent upsert); it refuses to forget a provider that still has tickets, anchors, evidence or a lock. Writing a
ticket needs the registry (its SLA days and folio prefix come from it).

The store also keeps, per provider (DESIGN.md §2, §5): the approved-anchor registry (`trust_anchors`, the only source
of what hosts trust), the evidence for each fingerprint (`anchor_evidence`, append-only, keyed by provider and
fingerprint so an operator can record a fingerprint before the certificate arrives), an append-only
`registry_audit`, and a fleet lock (`fleet_locks`: one rollout per provider at a time). The evidence policy itself
is pure code in `anchor_registry`.

Tamper evidence (schema v4, docs/ticket-store-hardening.md): every audit_log and registry_audit entry gets a link in
`audit_chain`, written in the entry's transaction: sha256 over the previous link's hash and the entry's canonical
content, plus an HMAC of it with the audit key when the store has one (`audit_key=`, or the file named by
$TICKET_STORE_AUDIT_KEY_FILE). `verify_audit()` names the first broken link ({table, id, problem}) or returns None;
`audit_head()` gives the head to record elsewhere. Both backends refuse a state write that the last chained audit
entry does not announce (the store writes the entry first); SQLite also refuses REPLACE on the append-only tables
and on tickets. A SQLite file anyone can open can be rewritten wholesale (triggers dropped): the chain, with a key,
makes that evident. On PostgreSQL, run the application as a role that does not own the tables (the SQL is in the
doc): it cannot disable the triggers nor UPDATE/DELETE audit rows.

Secrets: `reject_secrets()` runs on every text the store keeps and is unanchored (PEM private keys anywhere, DER keys
and PKCS#12 in base64 or hex also when cut or wrapped, long random tokens, password/passphrase pairs); its message
never repeats the value.
"""
import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import sqlite3
from collections import namedtuple
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from urllib.parse import unquote, urlsplit

from ansible.module_utils.anchor_registry import (
    ANCHOR_STATES,
    EVIDENCE_KINDS,
    PolicyError,
    evaluate,
    is_expired,
    refusal_message,
)
from ansible.module_utils.cert_validation import issued_by, name_of
from ansible.module_utils.pki_format import fingerprint_text, sha256_fingerprint
from ansible.module_utils.providers import KINDS, ProviderError, registry
from ansible.module_utils.sla import SlaPolicy, iso, now_local, to_datetime
from ansible.module_utils.x509_load import LoadError, parse_certificates

try:  # without cryptography the modules fail with missing_required_lib (x509_load.CRYPTOGRAPHY_IMPORT_ERROR)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
except ImportError:
    pass

# `provider`: a ticket opened by an authenticated provider delivery that quotes no folio (a provider mails every
# user of its service).
SOURCES = ("mail", "monitor", "manual", "provider")
# Final states: finished, withdrawn by the Mesa, folded into another ticket. Only `closed` may be reopened.
TERMINAL = ("closed", "cancelled", "duplicate")
_WITHDRAW = ("cancelled", "duplicate")  # open to every open state
# The renewal request (sources mail, manual, provider).
TRANSITIONS = {
    "received": ("observations", "folio_issued", *_WITHDRAW),
    "observations": ("received", *_WITHDRAW),
    "folio_issued": ("requester_validated", "rejected", *_WITHDRAW),
    "requester_validated": ("certificate_received", *_WITHDRAW),
    "certificate_received": ("deploying", *_WITHDRAW),
    "deploying": ("deployed", "rolled_back", *_WITHDRAW),
    "rolled_back": ("deploying", "certificate_received", "notified", *_WITHDRAW),
    "deployed": ("notified", *_WITHDRAW),
    "rejected": ("notified", *_WITHDRAW),
    "notified": ("closed", *_WITHDRAW),
    "reopened": ("requester_validated", "certificate_received", "deploying", "notified", *_WITHDRAW),
    "closed": ("reopened",),
    "cancelled": (),
    "duplicate": (),
}
# An expiry-monitor ticket (source monitor): acknowledged by the Mesa, closed once the certificate is renewed.
MONITOR_TRANSITIONS = {
    "received": ("acknowledged", "closed", *_WITHDRAW),
    "acknowledged": ("closed", *_WITHDRAW),
    "reopened": ("acknowledged", "closed", *_WITHDRAW),
    "closed": ("reopened",),
    "cancelled": (),
    "duplicate": (),
}
STATES = tuple(dict.fromkeys([*TRANSITIONS, *MONITOR_TRANSITIONS]))
# Entering these needs a reason (the audit log and `close_reason` say why).
NEEDS_REASON = {"cancelled": "cancelling a ticket", "reopened": "reopening a ticket"}


def allowed_next(state, source="manual"):
    """The states a ticket of `source` in `state` may move to."""
    return (MONITOR_TRANSITIONS if source == "monitor" else TRANSITIONS).get(state, ())


Result = namedtuple("Result", "ticket changed before")


class TicketStoreError(Exception):
    """Base of every error the store raises on purpose."""


class TicketNotFound(TicketStoreError):
    pass


class InvalidTransition(TicketStoreError):
    def __init__(self, message, allowed=()):
        super().__init__(message)
        self.allowed = list(allowed)


class ReopenRefused(InvalidTransition):
    """The reopen window of a closed ticket has passed (or another open ticket holds its event)."""


class TicketConflict(TicketStoreError):
    """The request contradicts what the ticket already records (e.g. another certificate serial)."""


class SecretMaterialError(TicketStoreError):
    """Key material or a passphrase was offered to the store; the message never repeats the value."""


class AnchorRegistryError(TicketStoreError):
    """Base of the approved-anchor registry's and the fleet lock's refusals."""


class AnchorNotFound(AnchorRegistryError):
    pass


class AnchorNotApproved(AnchorRegistryError):
    """The evidence policy refuses the approval; `missing` lists the accepted kinds still to be supplied."""

    def __init__(self, message, provider=None, fingerprint=None, evaluation=None):
        super().__init__(message)
        self.provider, self.fingerprint = provider, fingerprint
        self.evaluation = evaluation or {}
        self.missing = list(self.evaluation.get("missing", ()))


class FleetLocked(AnchorRegistryError):
    """Another holder has the provider's fleet lock (or the caller does not hold the lock it releases)."""

    def __init__(self, message, provider=None, holder=None, since=None, expires=None):
        super().__init__(message)
        self.provider, self.holder, self.since, self.expires = provider, holder, since, expires


# The secret detector is unanchored: key material is found anywhere in a text, also cut, re-wrapped or hex-encoded.
# Certificates (public) are allowed in PEM form: the anchor registry keeps them.
_PEM_SECRET = re.compile(r"-----\s*BEGIN [A-Z0-9 ]*(PRIVATE KEY|PKCS12|PKCS #12|ENCRYPTED)", re.IGNORECASE)
_PEM_CERTIFICATE = re.compile(r"-----BEGIN (?:TRUSTED )?CERTIFICATE-----[A-Za-z0-9+/=\s]*-----END (?:TRUSTED )?"
                              r"CERTIFICATE-----")
# Runs of base64 (pasted keys are wrapped at 64 or 76 characters: chunks joined by whitespace count as one run).
_BASE64_RUN = re.compile(r"(?:[A-Za-z0-9+/_-]{16,}={0,2}[ \t]*\r?\n?[ \t]*)+")
_HEX_RUN = re.compile(r"(?:[0-9A-Fa-f]{32,}\s*)+")
_HEX_BYTES = re.compile(r"(?:[0-9A-Fa-f]{2}[ :]){59,}[0-9A-Fa-f]{2}")  # "30 82 04 a4 ..." or "30:82:04:a4:..."
# DER markers of private keys and PKCS#12: PKCS#8 version 0 then an AlgorithmIdentifier, traditional RSA/EC keys,
# and the OIDs of rsaEncryption, id-ecPublicKey, Ed25519/X25519/Ed448, PKCS#12 bags/PBE, PBES2, PKCS#7 data and
# the NIST curves (a SEC1 EC key names its curve).
_DER_MARKERS = (bytes.fromhex("020100300d06092a864886f70d010101"), bytes.fromhex("02010030"),
                bytes.fromhex("020100028201"), bytes.fromhex("02010104"), bytes.fromhex("2a864886f70d010101"),
                bytes.fromhex("2a8648ce3d0201"), bytes.fromhex("06032b6570"), bytes.fromhex("06032b656e"),
                bytes.fromhex("06032b6571"), bytes.fromhex("2a864886f70d010c"), bytes.fromhex("2a864886f70d01050d"),
                bytes.fromhex("2a864886f70d010701"), bytes.fromhex("06082a8648ce3d030107"),
                bytes.fromhex("06052b81040022"), bytes.fromhex("06052b81040023"))
_LONG_TOKEN = 120  # a base64/hex run this long with a random-looking alphabet is a secret, whatever it decodes to
_PAIR_SECRET = re.compile(r"(?:pass(?:word|wd|phrase| phrase)|pwd|contrase(?:ñ|n)a|frase de paso|secret)"
                          r"[\"']?\s*[:=]\s*[\"']?[^\s\"',;]+", re.IGNORECASE)
_SECRET_NAME = re.compile(r"passw(or)?d|passphrase|secret|private_?key|pkcs12|pfx", re.IGNORECASE)


def _entropy(text):
    counts = {c: text.count(c) for c in set(text)}
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _der_key_inside(data):
    return any(marker in data for marker in _DER_MARKERS)


def _base64_secret(run):
    """True when a base64 run is key material: it decodes (at any of the 4 alignments, so a cut prefix does not
    hide it) to DER with a private-key or PKCS#12 marker, or it is long and random-looking."""
    token = re.sub(r"\s+", "", run).rstrip("=").replace("-", "+").replace("_", "/")
    if len(token) < 40:
        return False
    # A long absolute path (/var/lib/.../entregas/<folio>/...) is a base64 run by its characters; its entropy says
    # nothing. It is still refused when it decodes to key material (the checks below).
    is_path = run.startswith("/") and run.count("/") >= 3
    if len(token) >= _LONG_TOKEN and _entropy(token) > 4.5 and not is_path:
        return True
    if token.startswith(("MII", "MIG")) and len(token) >= 60:
        return True  # the base64 of a DER SEQUENCE of 128 bytes or more (a key, a PKCS#12) whatever it holds
    for cut in range(4):
        body = token[cut:]
        body = body[: len(body) - len(body) % 4]
        try:
            if _der_key_inside(base64.b64decode(body, validate=True)):
                return True
        except (binascii.Error, ValueError):
            continue
    return False


def _hex_secret(run):
    digits = re.sub(r"[\s:]+", "", run)
    if len(digits) < 80:
        return False
    if len(digits) >= _LONG_TOKEN and re.fullmatch(r"[0-9A-Fa-f]+", run.strip()) and _entropy(digits) > 3.5:
        return True  # one unbroken run (two SHA-256 sums separated by a space are not one)
    for cut in range(2):
        body = digits[cut:]
        try:
            if _der_key_inside(bytes.fromhex(body[: len(body) - len(body) % 2])):
                return True
        except ValueError:
            continue
    return False


def secret_kind(text):
    """What kind of secret `text` holds (a short English phrase, never the value), or None."""
    if _PEM_SECRET.search(text):
        return "a PEM private key or PKCS#12"
    text = _PEM_CERTIFICATE.sub(" ", text)
    if _PAIR_SECRET.search(text):
        return "a password or passphrase"
    if any(_base64_secret(m.group(0)) for m in _BASE64_RUN.finditer(text)):
        return "base64 key material (DER/PKCS#12) or a long random token"
    if any(_hex_secret(m.group(0)) for m in (*_HEX_RUN.finditer(text), *_HEX_BYTES.finditer(text))):
        return "hex-encoded key material (DER) or a long random token"
    return None


def reject_secrets(fields, where="ticket"):
    """Raise SecretMaterialError if any name or value in `fields` looks like a key, a PKCS#12 or a passphrase,
    anywhere in the text (unanchored). The message names the field and the kind, never the value."""
    if isinstance(fields, dict):
        for name, value in fields.items():
            if _SECRET_NAME.search(str(name)):
                raise SecretMaterialError(f"{where}.{name}: the ticket store never holds passphrases or keys")
            reject_secrets(value, f"{where}.{name}")
    elif isinstance(fields, (list, tuple, set, frozenset)):
        for value in fields:
            reject_secrets(value, where)
    elif isinstance(fields, (bytes, bytearray, memoryview)):
        raise SecretMaterialError(f"{where}: binary data (a PKCS#12 or DER key?) is never stored in a ticket")
    elif isinstance(fields, str):
        kind = secret_kind(fields)
        if kind:
            raise SecretMaterialError(f"{where}: looks like {kind}; the ticket store never holds it (the value is "
                                      "not repeated here)")


def _reference_tables():
    """(table, column) of every row that names a provider: a provider with any of them cannot be forgotten."""
    return (("tickets", "service"), ("trust_anchors", "provider"), ("anchor_evidence", "provider"),
            ("registry_audit", "provider"), ("fleet_locks", "provider"))


def _union(current, extra):
    """Order-preserving union of two host lists."""
    return current + [h for h in dict.fromkeys(extra or ()) if h not in current]


class TicketStore:
    """The store interface and every rule; subclasses provide `_tx()` (yielding `query(sql, params)`)."""

    for_update = ""
    migrations = ()

    def __init__(self, policy=None, audit_key=None, providers=None):
        self.policy = policy or SlaPolicy()
        # The HMAC key of the audit chain (bytes), or None: then entries are hash-chained only.
        self.audit_key = audit_key if audit_key is not None else audit_key_from_env()
        self._joined = None  # the query of an open `transaction()`, which every write then joins
        self.registry = None  # the providers.Registry the store was given (None: it only reads)
        self._registered = False  # the registry is in the providers table (else the next write puts it there)
        if providers is not None:
            self._bind(providers)

    # --- the provider registry -------------------------------------------------------------------------------
    def _bind(self, providers):
        try:
            self.registry = registry(providers)
        except ProviderError as e:
            raise TicketStoreError(f"provider registry: {e}") from None
        self.policy = self.policy.with_providers(self.registry)
        self._registered = False

    def register_providers(self, providers, dry_run=False):
        """Learn the inventory's registry: upsert every provider (name, kind) into the providers table and drop the
        ones the registry no longer has, unless a ticket, anchor, evidence or lock still names them (refused,
        naming them). Idempotent; returns {added, updated, removed} (lists of names)."""
        self._bind(providers)
        self._registered = True  # this write registers it (not the lazy registration of _chained_tx)
        try:
            with self._write(dry_run) as query:
                result = self._sync_providers(query)
        except BaseException:
            self._registered = False
            raise
        self._registered = not dry_run
        return result

    def registered_providers(self):
        """{name: {kind, registered_at}} of the providers table."""
        return {r["name"]: {"kind": r["kind"], "registered_at": r["registered_at"]}
                for r in self._query("SELECT * FROM providers ORDER BY name")}

    def _sync_providers(self, query):
        """The registry into the providers table, inside the caller's transaction."""
        if len(self.migrations) < _PROVIDERS_VERSION:
            return {"added": [], "updated": [], "removed": []}  # a store held at an older schema (tests)
        self._serialize(query, "providers")
        rows = {r["name"]: r for r in query("SELECT * FROM providers")}
        wanted = {p.name: p.kind for p in self.registry}
        gone = [name for name in rows if name not in wanted]
        used = {}
        for name in gone:
            for table, column in _reference_tables():
                n = query(f"SELECT COUNT(*) AS n FROM {table} WHERE {column} = ?", (name,))[0]["n"]  # noqa: S608
                if n:
                    used.setdefault(name, []).append(f"{n} in {table}")
        if used:
            raise TicketStoreError(
                "the provider registry (procedure_providers) no longer has "
                + "; ".join(f"{name!r} ({', '.join(where)})" for name, where in used.items())
                + ": a provider the store holds rows for cannot be removed; put it back in the inventory (its "
                f"tickets keep their history). The registry has {', '.join(wanted)}")
        added, updated, now = [], [], iso(now_local())
        for name, kind in wanted.items():
            if name not in rows:
                query("INSERT INTO providers (name, kind, registered_at) VALUES (?, ?, ?)", (name, kind, now))
                added.append(name)
            elif rows[name]["kind"] != kind:
                query("UPDATE providers SET kind = ? WHERE name = ?", (kind, name))
                updated.append(name)
        for name in gone:
            query("DELETE FROM providers WHERE name = ?", (name,))
        return {"added": added, "updated": updated, "removed": gone}

    def _require_registry(self, what):
        if self.registry is None:
            raise TicketStoreError(f"{what} needs the provider registry: open the store with "
                                   "providers=<procedure_providers> (modules: the `providers` option)")
        return self.registry

    def _service(self, service, what="a ticket"):
        """A provider of the registry, or TicketStoreError naming the registry's providers."""
        known = self._require_registry(what)
        if service not in known:
            raise TicketStoreError(f"unknown provider {service!r} for {what}; the provider registry "
                                   f"(procedure_providers) has {', '.join(known.names())}")
        return service

    # --- backend hooks --------------------------------------------------------------------------------------
    def _tx(self, dry_run=False):
        """A context manager: one write transaction (rolled back when dry_run) yielding `query`."""
        raise NotImplementedError

    def _query(self, sql, params=()):
        raise NotImplementedError

    def close(self):
        pass

    @contextmanager
    def transaction(self, dry_run=False):
        """Group several writes in one transaction (rolled back when dry_run: check mode previews a whole task)."""
        if self._joined is not None:
            raise TicketStoreError("store transactions do not nest")
        # pylint: disable-next=contextmanager-generator-missing-cleanup  # @contextmanager throws into the yield
        with self._chained_tx(dry_run) as query:
            self._joined = query
            try:
                yield self
            finally:
                self._joined = None

    @contextmanager
    def _write(self, dry_run=False):
        """One write transaction, or the open `transaction()` when there is one."""
        if self._joined is not None:
            yield self._joined
        else:
            # pylint: disable-next=contextmanager-generator-missing-cleanup  # @contextmanager throws into the yield
            with self._chained_tx(dry_run) as query:
                yield query

    @contextmanager
    def _chained_tx(self, dry_run=False):
        """A write transaction that owns the audit chain's tail until it ends: two writers never chain onto the same
        entry (PostgreSQL: an advisory lock taken first, before any row lock, so lock order stays deadlock-free;
        SQLite: BEGIN IMMEDIATE already queues writers)."""
        with self._tx(dry_run) as query:
            self._serialize(query, "audit_chain")
            synced = False
            if self.registry is not None and not self._registered:
                self._sync_providers(query)  # in the write's transaction: a dry run leaves no trace of it either
                synced = not dry_run
            yield query
        if synced:
            self._registered = True

    def _check_migration(self, query):
        """Backend hook run after the migrations, before they commit."""

    def _serialize(self, query, key):
        """Make concurrent transactions that pass the same key take turns (no-op where writers already queue)."""

    def _run_script(self, query, script):
        query(script)

    def _migrate(self):
        with self._tx() as query:
            self._serialize(query, "schema")
            query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = query("SELECT MAX(version) AS v FROM schema_version")[0]["v"] or 0
            for number, script in enumerate(self.migrations[version:], start=version + 1):
                if callable(script):
                    script(self, query)
                else:
                    self._run_script(query, script)
                query("INSERT INTO schema_version (version) VALUES (?)", (number,))
            self._check_migration(query)

    @property
    def schema_version(self):
        return self._query("SELECT MAX(version) AS v FROM schema_version")[0]["v"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- reads ----------------------------------------------------------------------------------------------
    def get(self, ref):
        return self._ticket(self._load(self._query, ref))

    def find(self, service=None, states=None, source=None, open_only=False, event_key=None):
        """Tickets filtered by service, state(s), source, event and openness (not in a TERMINAL state), oldest
        first."""
        sql, params = "SELECT * FROM tickets WHERE 1 = 1", []
        if service:
            sql, params = sql + " AND service = ?", params + [service]
        if states:
            states = [states] if isinstance(states, str) else list(states)
            sql += " AND state IN (%s)" % ", ".join("?" * len(states))
            params += states
        if source:
            sql, params = sql + " AND source = ?", params + [source]
        if open_only:
            sql += " AND state NOT IN (%s)" % ", ".join("?" * len(TERMINAL))
            params += list(TERMINAL)
        if event_key:
            sql, params = sql + " AND event_key = ?", params + [event_key]
        return [self._ticket(row) for row in self._query(sql + " ORDER BY id", params)]

    def audit(self, ref):
        """The ticket's audit log, oldest first."""
        ticket_id = self._load(self._query, ref)["id"]
        rows = self._query("SELECT * FROM audit_log WHERE ticket_id = ? ORDER BY id", (ticket_id,))
        return [dict(row, hosts=json.loads(row["hosts"])) for row in rows]

    # --- writes ---------------------------------------------------------------------------------------------
    def create(self, service, *, actor, requester=None, forwarded_by=None, source="manual", message_id=None,
               hosts=(), received_at=None, reason=None, note=None, event_key=None, now=None, dry_run=False):
        """Open a ticket in `received`; an existing `message_id` returns that ticket unchanged. With `event_key`
        (one event, e.g. a certificate about to expire), the event's open ticket is returned instead of opening
        another, with `hosts` and `note` merged into it (changed when they add something)."""
        self._service(service)
        if source not in SOURCES:
            raise TicketStoreError(f"unknown source {source!r}; sources are {', '.join(SOURCES)}")
        requester, forwarded_by = dict(requester or {}), dict(forwarded_by or {})
        reject_secrets({"requester": requester, "forwarded_by": forwarded_by, "message_id": message_id,
                        "hosts": list(hosts or ()), "reason": reason, "note": note, "actor": actor,
                        "event_key": event_key})
        now = to_datetime(now) if now else now_local()
        received = to_datetime(received_at) if received_at else now
        with self._write(dry_run) as query:
            if message_id:
                self._serialize(query, f"message_id:{message_id}")  # two intakes of one message open one ticket
                rows = query("SELECT * FROM tickets WHERE message_id = ?", (message_id,))
                if rows:
                    ticket = self._ticket(rows[0])
                    return Result(ticket, False, ticket)
            if event_key:
                self._serialize(query, f"event:{event_key}")  # two scans of one event open one ticket
                row = self._open_event(query, event_key, lock=True)
                if row is not None:
                    return self._apply(query, row, None, actor=actor, reason=reason, hosts=hosts, note=note,
                                       now=now)
            observations = [self._note(now, actor, note)] if note else []
            # event_key is named only when given (a store opened at an older schema version has no such column).
            extra_column, extra_value = (", event_key", ", ?") if event_key else ("", "")
            row = query(
                "INSERT INTO tickets (service, state, requester_name, requester_email, requester_unit,"  # noqa: S608
                " requester_system, forwarded_by_name, forwarded_by_rank, source, message_id, received_at,"
                f" first_contact_due, hosts, observations, created_at, updated_at{extra_column})"
                f" VALUES (?, 'received', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{extra_value}) RETURNING *",
                (service, requester.get("name"), requester.get("email"), requester.get("unit"),
                 requester.get("system"), forwarded_by.get("name"), forwarded_by.get("rank"), source, message_id,
                 iso(received), iso(self.policy.due(service, "first_contact", received)),
                 json.dumps(_union([], hosts)), json.dumps(observations), iso(now), iso(now),
                 *([event_key] if event_key else [])))[0]
            self._append_audit(query, row["id"], now, actor, None, "received", reason or "ticket opened",
                               None, _union([], hosts))
            return Result(self._ticket(row), True, None)

    def transition(self, ref, to_state, *, actor, reason=None, serial=None, hosts=None, verified_hosts=None,
                   cause=None, note=None, request=None, duplicate_of=None, notice=None, now=None, dry_run=False):
        """Move a ticket to `to_state` (None: stay) recording data; asking again for the current state with
        nothing new is a no-op (changed=False). Hosts only accumulate; a new serial on `certificate_received` or
        `deploying` restarts verification. `request` ({service, requester, forwarded_by}, as create() takes them)
        corrects the request's data while the ticket is in `received` or `observations` (the requester's reply,
        step 2.2). `duplicate_of` (id or folio) is the ticket a `duplicate` points to; `notice` is the key of a
        notice just sent about the ticket (recorded once)."""
        if to_state is not None and to_state not in STATES:
            raise InvalidTransition(f"unknown ticket state {to_state!r}; states are {', '.join(STATES)}")
        reject_secrets({"reason": reason, "serial": serial, "hosts": hosts or [], "cause": cause,
                        "verified_hosts": verified_hosts or [], "note": note, "actor": actor,
                        "request": request or {}, "duplicate_of": duplicate_of, "notice": notice})
        now = to_datetime(now) if now else now_local()
        with self._write(dry_run) as query:
            row = self._load(query, ref, lock=True)
            return self._apply(query, row, to_state, actor=actor, reason=reason, serial=serial, hosts=hosts,
                               verified_hosts=verified_hosts, cause=cause, note=note, request=request,
                               duplicate_of=duplicate_of, notice=notice, now=now)

    def annotate(self, ref, note, *, actor, now=None, dry_run=False):
        """Append a note to the ticket's observations (a note already there is not repeated)."""
        return self.transition(ref, None, actor=actor, note=note, now=now, dry_run=dry_run)

    def record_notice(self, ref, key, *, actor, detail=None, now=None, dry_run=False):
        """Record that notice `key` about the ticket was sent (audited with `detail`); a key already recorded
        changes nothing, so the sender can ask before sending and a rerun never sends it twice."""
        if not str(key or "").strip():
            raise TicketStoreError("a notice is recorded under a key (what was sent, e.g. sla:attention:due_soon)")
        return self.transition(ref, None, actor=actor, notice=str(key).strip(), reason=detail, now=now,
                               dry_run=dry_run)

    def _apply(self, query, row, to_state, *, actor, reason=None, serial=None, hosts=None, verified_hosts=None,
               cause=None, note=None, request=None, duplicate_of=None, notice=None, now):
        """The body of a transition on a locked row, inside the caller's transaction."""
        before = self._ticket(row)
        current = row["state"]
        to_state = to_state or current
        allowed = allowed_next(current, row["source"])
        if to_state != current and to_state not in allowed:
            raise InvalidTransition(
                f"ticket {self._name(row)} is '{current}': cannot go to '{to_state}'; allowed next: "
                + (", ".join(allowed) or "none (final state)"), allowed)
        if duplicate_of not in (None, "") and to_state != "duplicate":
            raise TicketStoreError(f"duplicate_of names the original of a ticket marked 'duplicate', not of one "
                                   f"going to '{to_state}'")
        changes = self._data_changes(row, to_state, serial, hosts, verified_hosts, cause, note, actor, now)
        changes.update(self._request_changes(row, request))
        changes.update(self._notice_changes(row, notice, actor, now))
        if to_state == current and not changes:
            return Result(before, False, before)
        if to_state != current:
            changes.update(self._entering(query, row, to_state, changes, now, reason=reason,
                                          duplicate_of=duplicate_of))
        changes.update(self._breaches(row, changes, now))
        changes["state"], changes["updated_at"] = to_state, iso(now)
        # Column names come from this module, never from the caller; values are bound parameters.
        default = ("notice sent: " + notice) if notice else ("updated" if to_state == current else None)
        # The audit entry goes first: on SQLite a trigger refuses a state change its chained entry does not announce.
        self._append_audit(query, row["id"], now, actor, current, to_state,
                           reason or note or changes.get("close_reason") or default,
                           changes.get("deployed_serial", row["deployed_serial"]),
                           _union(list(hosts or ()), verified_hosts))
        assignments = ", ".join(f"{column} = ?" for column in changes)
        row = query(f"UPDATE tickets SET {assignments} WHERE id = ? RETURNING *",  # noqa: S608
                    (*changes.values(), row["id"]))[0]
        return Result(self._ticket(row), True, before)

    # --- rules ----------------------------------------------------------------------------------------------
    def _data_changes(self, row, to_state, serial, hosts, verified_hosts, cause, note, actor, now):
        changes = {}
        current_hosts, verified = json.loads(row["hosts"]), json.loads(row["verified_hosts"])
        if serial and serial != row["deployed_serial"]:
            if to_state == row["state"] and row["deployed_serial"]:
                raise TicketConflict(f"ticket {self._name(row)} records certificate serial {row['deployed_serial']}"
                                     f" in '{row['state']}'; refusing to replace it with {serial} without a transition")
            changes["deployed_serial"] = serial
            if to_state in ("certificate_received", "deploying") and row["deployed_serial"]:
                verified = []  # verification belongs to a serial; a new certificate is verified afresh
                changes["verified_hosts"] = "[]"
        new_verified = _union(verified, verified_hosts)
        new_hosts = _union(_union(current_hosts, hosts), new_verified)
        if new_hosts != current_hosts:
            changes["hosts"] = json.dumps(new_hosts)
        if new_verified != verified:
            changes["verified_hosts"] = json.dumps(new_verified)
        if cause and cause != row["cause"]:
            changes["cause"] = cause
        observations = json.loads(row["observations"])
        if note and note not in (o["note"] for o in observations):
            changes["observations"] = json.dumps(observations + [self._note(now, actor, note)])
        return changes

    def _request_changes(self, row, request):
        """Column changes for corrected request data; refused once the folio is issued (the folio names the service)."""
        if not request:
            return {}
        flat = {"service": request.get("service")}
        for part, keys in (("requester", ("name", "email", "unit", "system")), ("forwarded_by", ("name", "rank"))):
            flat.update({f"{part}_{k}": v for k, v in (request.get(part) or {}).items() if k in keys})
        changes = {k: v for k, v in flat.items() if v is not None and v != row[k]}
        if changes and row["state"] not in ("received", "observations"):
            raise TicketConflict(f"ticket {self._name(row)} is '{row['state']}': its request data can only be "
                                 "corrected in 'received' or 'observations'")
        if "service" in changes:
            self._service(changes["service"], f"ticket {self._name(row)}")
        return changes

    def _notice_changes(self, row, notice, actor, now):
        """Record a sent notice once (its key), so a rerun of the sender finds it."""
        if not notice:
            return {}
        notices = json.loads(row.get("notices") or "[]")
        if notice in (n["key"] for n in notices):
            return {}
        return {"notices": json.dumps(notices + [{"key": notice, "at": iso(now), "actor": actor}])}

    def _open_event(self, query, event_key, lock=False):
        """The newest ticket of `event_key` not in a final state, or None."""
        rows = query("SELECT * FROM tickets WHERE event_key = ? AND state NOT IN (%s) ORDER BY id DESC"  # noqa: S608
                     % ", ".join("?" * len(TERMINAL)) + (self.for_update if lock else ""),
                     (event_key, *TERMINAL))
        return rows[0] if rows else None

    def _entering(self, query, row, to_state, changes, now, reason=None, duplicate_of=None):
        """Column changes that entering `to_state` implies (first contact, folio, attention clock, closing,
        cancelling, duplicate, reopening)."""
        entering = {}
        name = self._name(row)
        if to_state in NEEDS_REASON and not (reason or "").strip():
            raise TicketStoreError(f"{NEEDS_REASON[to_state]} needs a reason (ticket {name}); it is audited")
        if to_state == "closed" and row["source"] == "monitor" and not (reason or "").strip():
            raise TicketStoreError(f"closing expiry ticket {name} needs a reason: how the certificate was renewed "
                                   "(or why it no longer matters)")
        if row["state"] == "received" and not row["first_contact_at"] and to_state not in _WITHDRAW:
            entering["first_contact_at"] = iso(now)  # cancelling or marking a duplicate is no contact
        if to_state in TERMINAL:
            entering["closed_at"], entering["close_reason"] = iso(now), (reason or "").strip() or None
        if to_state == "duplicate":
            original = self._duplicate_target(query, row, duplicate_of)
            entering["duplicate_of"] = original["id"]
            entering["close_reason"] = entering["close_reason"] or f"duplicado de {self._name(original)}"
        elif to_state == "reopened":
            entering.update(self._reopening(query, row, now))
        if to_state == "folio_issued" and not row["folio"]:
            entering["folio"] = self._next_folio(query, row["service"], now.year)
        elif to_state == "certificate_received":
            # A new delivery (also after a rollback or a reopen) starts a new attention clock.
            entering["certificate_received_at"] = iso(now)
            entering["attention_due"] = iso(self.policy.due(row["service"], "attention", now))
            if row["attended_at"] or row["sla_attention_breached"]:
                entering["attended_at"], entering["sla_attention_breached"] = None, 0
        elif to_state == "deployed" and not row["attended_at"]:
            entering["attended_at"] = iso(now)
        elif to_state == "closed" and query(
                "SELECT 1 FROM audit_log WHERE ticket_id = ? AND to_state = 'deploying' LIMIT 1", (row["id"],)):
            verified = set(json.loads(changes.get("verified_hosts", row["verified_hosts"])))
            missing = [h for h in json.loads(changes.get("hosts", row["hosts"])) if h not in verified]
            if missing:
                raise InvalidTransition(f"ticket {self._name(row)} cannot close: hosts not verified: "
                                        + ", ".join(missing), ())
        return entering

    def _duplicate_target(self, query, row, duplicate_of):
        """The ticket a duplicate points to: it must exist, be another ticket and not be a duplicate itself."""
        name = self._name(row)
        if duplicate_of in (None, ""):
            raise TicketStoreError(f"marking ticket {name} a duplicate needs duplicate_of: the id or folio of the "
                                   "ticket it duplicates")
        try:
            original = self._load(query, duplicate_of)
        except (TicketNotFound, ValueError):
            raise TicketNotFound(f"ticket {name} cannot be a duplicate of {duplicate_of}: no such ticket") from None
        if original["id"] == row["id"]:
            raise TicketStoreError(f"ticket {name} cannot be a duplicate of itself")
        if original["state"] == "duplicate":
            target = query("SELECT * FROM tickets WHERE id = ?", (original["duplicate_of"],))[0]
            raise TicketStoreError(f"ticket {self._name(original)} is itself a duplicate of {self._name(target)}: "
                                   f"mark {name} a duplicate of {self._name(target)}")
        return original

    def _reopening(self, query, row, now):
        """Column changes of a reopen, refused once the window after the close has passed."""
        closed_at = row.get("closed_at") or self._closed_at(query, row["id"]) or row["updated_at"]
        deadline = self.policy.reopen_deadline(closed_at)
        if now > deadline:
            raise ReopenRefused(
                f"ticket {self._name(row)} was closed on {iso(to_datetime(closed_at))} and could be reopened until "
                f"{iso(deadline)} ({self.policy.reopen_business_days} business days after its close); it is "
                "past that: open a new ticket and cite this one in its note", ())
        other = self._open_event(query, row["event_key"]) if row.get("event_key") else None
        if other is not None:
            raise ReopenRefused(f"ticket {self._name(row)} cannot be reopened: ticket {self._name(other)} is open "
                                f"for the same event ({row['event_key']}); work on that one", ())
        return {"closed_at": None, "close_reason": None}

    @staticmethod
    def _closed_at(query, ticket_id):
        """When the ticket last entered `closed` (tickets closed before the store kept closed_at)."""
        rows = query("SELECT at FROM audit_log WHERE ticket_id = ? AND to_state = 'closed'"
                     " AND (from_state IS NULL OR from_state <> 'closed') ORDER BY id DESC LIMIT 1", (ticket_id,))
        return rows[0]["at"] if rows else None

    def _breaches(self, row, changes, now):
        """Flag an SLA clock breached when a write happens after its due moment while the clock is open."""
        flags = {}
        for clock, met in (("first_contact", "first_contact_at"), ("attention", "attended_at")):
            due = changes.get(f"{clock}_due", row[f"{clock}_due"])
            if due and not row[met] and not row[f"sla_{clock}_breached"] and now > to_datetime(due):
                flags[f"sla_{clock}_breached"] = 1
        return flags

    def _next_folio(self, query, service, year):
        # The counter moves inside the state change's transaction: a rollback gives the number back (gap-free).
        number = query("INSERT INTO folio_counters (service, year, last) VALUES (?, ?, 1)"
                       " ON CONFLICT (service, year) DO UPDATE SET last = folio_counters.last + 1 RETURNING last",
                       (service, year))[0]["last"]
        return self._require_registry("a folio").get(service).folio(year, number)

    def next_oficio_number(self, unit, year, dry_run=False):
        """The next consecutive number of `unit`'s oficios in `year` (1, 2, ...), gap-free like the folio: it is kept
        in folio_counters under the series "oficio:<unit>" and moves inside the caller's `transaction()` when one is
        open, so recording the number on the ticket in that transaction makes a rollback give it back."""
        unit = str(unit or "").strip().upper()
        if not unit:
            raise TicketStoreError("an oficio number needs the issuing unit (e.g. SOAS)")
        with self._write(dry_run) as query:
            return query("INSERT INTO folio_counters (service, year, last) VALUES (?, ?, 1)"
                         " ON CONFLICT (service, year) DO UPDATE SET last = folio_counters.last + 1 RETURNING last",
                         (f"oficio:{unit}", int(year)))[0]["last"]

    # --- helpers --------------------------------------------------------------------------------------------
    def _load(self, query, ref, lock=False):
        ref = str(ref).strip()
        column, value = ("id", int(ref)) if ref.isdigit() else ("folio", ref.upper())
        lock_clause = self.for_update if lock else ""
        rows = query(f"SELECT * FROM tickets WHERE {column} = ?{lock_clause}", (value,))  # noqa: S608
        if not rows:
            raise TicketNotFound(f"no ticket with {column} {value}")
        return rows[0]

    def _append_audit(self, query, ticket_id, now, actor, from_state, to_state, reason, serial, hosts):
        row = query("INSERT INTO audit_log (ticket_id, at, actor, from_state, to_state, reason, serial, hosts)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (ticket_id, iso(now), actor, from_state, to_state, reason, serial, json.dumps(hosts)))[0]
        self._chain(query, "audit_log", row)

    @staticmethod
    def _note(now, actor, note):
        return {"at": iso(now), "actor": actor, "note": note}

    @staticmethod
    def _name(row):
        return row["folio"] or f"#{row['id']}"

    @staticmethod
    def _ticket(row):
        """The public form of a ticket row."""
        return {
            "id": row["id"], "service": row["service"], "state": row["state"], "folio": row["folio"],
            "source": row["source"], "message_id": row["message_id"],
            "requester": {k: row[f"requester_{k}"] for k in ("name", "email", "unit", "system")},
            "forwarded_by": {"name": row["forwarded_by_name"], "rank": row["forwarded_by_rank"]},
            "received_at": row["received_at"], "first_contact_due": row["first_contact_due"],
            "first_contact_at": row["first_contact_at"], "certificate_received_at": row["certificate_received_at"],
            "attention_due": row["attention_due"], "attended_at": row["attended_at"],
            "sla_first_contact_breached": bool(row["sla_first_contact_breached"]),
            "sla_attention_breached": bool(row["sla_attention_breached"]),
            "deployed_serial": row["deployed_serial"], "hosts": json.loads(row["hosts"]),
            "verified_hosts": json.loads(row["verified_hosts"]), "cause": row["cause"],
            "observations": json.loads(row["observations"]), "created_at": row["created_at"],
            "updated_at": row["updated_at"], "closed_at": row.get("closed_at"),
            "close_reason": row.get("close_reason"), "duplicate_of": row.get("duplicate_of"),
            "event_key": row.get("event_key"), "notices": json.loads(row.get("notices") or "[]"),
            "allowed_next": list(allowed_next(row["state"], row["source"])),
        }

    # --- approved-anchor registry (DESIGN.md §2) ---------------------------------------------------------------
    def anchor_record(self, provider, pem, *, actor, ticket=None, evidence=(), now=None, dry_run=False):
        """Record a provider's anchor certificate (new entries are `pending`; recording it again changes nothing)
        with optional evidence ([{kind, detail, message_id?}]). Returns the anchor plus `changed`."""
        provider = self._provider(provider)
        cert = self._anchor_certificate(pem)
        fingerprint = sha256_fingerprint(cert.public_bytes(serialization.Encoding.DER))
        pem_text = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        evidence = [self._evidence_item(item) for item in evidence or ()]
        reject_secrets({"provider": provider, "actor": actor, "ticket": ticket, "evidence": evidence}, "anchor")
        now = to_datetime(now) if now else now_local()
        with self._write(dry_run) as query:
            self._serialize(query, f"anchors:{provider}")
            ticket_id = self._ticket_id(query, ticket)
            changed = False
            rows = query(f"SELECT * FROM trust_anchors WHERE provider = ? AND fingerprint = ?{self.for_update}",  # noqa: S608
                         (provider, fingerprint))
            if not rows:
                query("INSERT INTO trust_anchors (provider, fingerprint, subject, not_before, not_after, pem, state,"
                      " created_at, created_by, ticket_id) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                      (provider, fingerprint, name_of(cert), iso(cert.not_valid_before_utc),
                       iso(cert.not_valid_after_utc), pem_text, iso(now), actor, ticket_id))
                self._registry_audit(query, now, actor, provider, fingerprint, "recorded", None, "pending",
                                     f"'{name_of(cert)}', valid until {iso(cert.not_valid_after_utc)}")
                changed = True
            elif ticket_id is not None and rows[0]["ticket_id"] is None:
                query("UPDATE trust_anchors SET ticket_id = ? WHERE id = ?", (ticket_id, rows[0]["id"]))
                self._registry_audit(query, now, actor, provider, fingerprint, "ticket_linked", rows[0]["state"],
                                     rows[0]["state"], f"ticket {ticket}")
                changed = True
            for item in evidence:
                changed |= self._add_evidence(query, provider, fingerprint, item["kind"], item["detail"], actor,
                                              ticket_id, item.get("message_id"), now)
            return dict(self._anchor_view(query, provider, fingerprint), changed=changed)

    def anchor_add_evidence(self, provider, fingerprint, kind, detail, *, actor, ticket=None, message_id=None,
                            now=None, dry_run=False):
        """Append one piece of evidence for a fingerprint (its certificate may not be recorded yet); the same
        evidence twice is recorded once. Returns the anchor (state None when no certificate is recorded) plus
        `changed`."""
        provider = self._provider(provider)
        fingerprint = self._fingerprint(fingerprint)
        item = self._evidence_item({"kind": kind, "detail": detail, "message_id": message_id})
        reject_secrets({"actor": actor, "ticket": ticket, "evidence": item}, "anchor")
        now = to_datetime(now) if now else now_local()
        with self._write(dry_run) as query:
            self._serialize(query, f"anchors:{provider}")
            changed = self._add_evidence(query, provider, fingerprint, item["kind"], item["detail"], actor,
                                         self._ticket_id(query, ticket), item["message_id"], now)
            return dict(self._anchor_view(query, provider, fingerprint), changed=changed)

    def anchor_approve(self, provider, fingerprint, *, actor, policy, now=None, dry_run=False):
        """Approve a recorded anchor when its evidence satisfies `policy` and it is not expired; approving an
        approved anchor changes nothing. A refusal (AnchorNotApproved) is itself audited."""
        provider = self._provider(provider)
        fingerprint = self._fingerprint(fingerprint)
        reject_secrets({"actor": actor, "policy": policy}, "anchor")
        now = to_datetime(now) if now else now_local()
        refusal = None
        with self._write(dry_run) as query:
            self._serialize(query, f"anchors:{provider}")
            row = self._anchor_row(query, provider, fingerprint, lock=True)
            evidence = self._evidence(query, provider, fingerprint)
            try:
                result = evaluate(policy, evidence, not_after=row["not_after"], now=now)
            except PolicyError as e:
                raise AnchorRegistryError(f"evidence policy of {provider}: {e}") from None
            if row["state"] == "retired":
                raise AnchorNotApproved(f"trust anchor {fingerprint} ('{row['subject']}') of {provider} was retired "
                                        f"by {row['retired_by']} at {row['retired_at']}; a retired anchor is not "
                                        "approved again", provider, fingerprint, result.as_dict())
            if row["state"] == "approved" and not result.expired:
                return dict(self._anchor_view(query, provider, fingerprint), changed=False)
            if result.approved:
                query("UPDATE trust_anchors SET state = 'approved', approved_at = ?, approved_by = ? WHERE id = ?",
                      (iso(now), actor, row["id"]))
                self._registry_audit(query, now, actor, provider, fingerprint, "approved", row["state"], "approved",
                                     "evidence: " + ", ".join(result.satisfied))
                return dict(self._anchor_view(query, provider, fingerprint), changed=True)
            message = refusal_message(provider, fingerprint, row["subject"], result, evidence, row["not_after"])
            self._registry_audit(query, now, actor, provider, fingerprint, "approval_refused", row["state"],
                                 row["state"], "expired" if result.expired else "missing: " + ", ".join(result.missing))
            refusal = AnchorNotApproved(message, provider, fingerprint, result.as_dict())
        raise refusal  # after the commit: the refused attempt stays in registry_audit

    def anchor_retire(self, provider, fingerprint, *, actor, reason, now=None, dry_run=False):
        """Retire an anchor (hosts stop trusting it on the next rollout); retiring it again changes nothing."""
        provider = self._provider(provider)
        fingerprint = self._fingerprint(fingerprint)
        if not (reason or "").strip():
            raise AnchorRegistryError("retiring a trust anchor needs a reason (recorded in the registry audit)")
        reject_secrets({"actor": actor, "reason": reason}, "anchor")
        now = to_datetime(now) if now else now_local()
        with self._write(dry_run) as query:
            self._serialize(query, f"anchors:{provider}")
            row = self._anchor_row(query, provider, fingerprint, lock=True)
            if row["state"] == "retired":
                return dict(self._anchor_view(query, provider, fingerprint), changed=False)
            query("UPDATE trust_anchors SET state = 'retired', retired_at = ?, retired_by = ? WHERE id = ?",
                  (iso(now), actor, row["id"]))
            self._registry_audit(query, now, actor, provider, fingerprint, "retired", row["state"], "retired", reason)
            return dict(self._anchor_view(query, provider, fingerprint), changed=True)

    def anchor_seed(self, provider, pems, *, actor, reason, now=None, dry_run=False):
        """The one-time, audited seeding of a provider's registry from what its hosts trust today: every anchor
        enters `approved` with `seed` evidence (an expired one enters `retired`). Refused once the provider has
        any entry."""
        provider = self._provider(provider)
        if not (reason or "").strip():
            raise AnchorRegistryError("seeding the trust anchor registry needs a reason (recorded in the audit)")
        certs = list({c.fingerprint(hashes.SHA256()): c for c in (self._anchor_certificate(p) for p in pems or ())}
                     .values())
        if not certs:
            raise AnchorRegistryError(f"nothing to seed the {provider} registry with: no certificate given")
        reject_secrets({"actor": actor, "reason": reason}, "anchor")
        now = to_datetime(now) if now else now_local()
        with self._write(dry_run) as query:
            self._serialize(query, f"anchors:{provider}")
            existing = query("SELECT COUNT(*) AS n FROM trust_anchors WHERE provider = ?", (provider,))[0]["n"]
            if existing:
                raise AnchorRegistryError(
                    f"the {provider} trust anchor registry already has {existing} entr{'y' if existing == 1 else 'ies'}"
                    ": seeding is a one-time action; record a new anchor with its evidence (state=pending, then "
                    "approved) instead")
            seeded = []
            for cert in certs:
                fingerprint = sha256_fingerprint(cert.public_bytes(serialization.Encoding.DER))
                not_after = iso(cert.not_valid_after_utc)
                expired = is_expired(cert.not_valid_after_utc, now)
                state = "retired" if expired else "approved"
                query("INSERT INTO trust_anchors (provider, fingerprint, subject, not_before, not_after, pem, state,"
                      " created_at, created_by, approved_at, approved_by, retired_at, retired_by)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (provider, fingerprint, name_of(cert), iso(cert.not_valid_before_utc), not_after,
                       cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), state, iso(now), actor,
                       None if expired else iso(now), None if expired else actor,
                       iso(now) if expired else None, actor if expired else None))
                self._add_evidence(query, provider, fingerprint, "seed", reason, actor, None, None, now)
                self._registry_audit(query, now, actor, provider, fingerprint, "seeded", None, state,
                                     reason + (f" (expired {not_after}: recorded retired)" if expired else ""))
                seeded.append(dict(self._anchor_view(query, provider, fingerprint), changed=True))
            return seeded

    def anchors(self, provider=None, states=None):
        """Registry entries with their evidence, oldest approval first (never-approved ones last, oldest first)."""
        sql, params = ("SELECT a.*, t.folio AS ticket_folio FROM trust_anchors a"
                       " LEFT JOIN tickets t ON t.id = a.ticket_id WHERE 1 = 1"), []
        if provider:
            sql, params = sql + " AND a.provider = ?", [self._provider(provider)]
        if states:
            states = [states] if isinstance(states, str) else list(states)
            unknown = [s for s in states if s not in ANCHOR_STATES]
            if unknown:
                raise AnchorRegistryError(f"unknown anchor state(s) {', '.join(unknown)}; "
                                          f"states are {', '.join(ANCHOR_STATES)}")
            sql += " AND a.state IN (%s)" % ", ".join("?" * len(states))
            params += states
        rows = self._query(sql + " ORDER BY a.id", params)
        evidence = {}
        for item in self._evidence(self._query, provider and self._provider(provider)):
            evidence.setdefault((item.pop("provider"), item.pop("fingerprint")), []).append(item)
        found = [self._anchor(row, evidence.get((row["provider"], row["fingerprint"]), [])) for row in rows]
        return sorted(found, key=_approval_order)

    def approved_anchors(self, provider, now=None):
        """The anchors hosts of `provider` must trust at `now`: approved and unexpired, oldest approval first."""
        now = to_datetime(now) if now else now_local()
        return [a for a in self.anchors(provider, ["approved"]) if not is_expired(a["not_after"], now)]

    def anchor(self, provider, fingerprint):
        """One registry entry with its evidence; raises AnchorNotFound."""
        provider, fingerprint = self._provider(provider), self._fingerprint(fingerprint)
        row = self._anchor_row(self._query, provider, fingerprint)
        return self._anchor(row, self._evidence(self._query, provider, fingerprint))

    def anchor_evidence(self, provider, fingerprint):
        """Evidence recorded for a fingerprint, oldest first (also before its certificate is recorded)."""
        return self._evidence(self._query, self._provider(provider), self._fingerprint(fingerprint))

    def registry_audit(self, provider=None, fingerprint=None):
        """The registry's and the fleet lock's audit log, oldest first."""
        sql, params = "SELECT * FROM registry_audit WHERE 1 = 1", []
        if provider:
            sql, params = sql + " AND provider = ?", params + [provider]
        if fingerprint:
            sql, params = sql + " AND fingerprint = ?", params + [self._fingerprint(fingerprint)]
        return self._query(sql + " ORDER BY id", params)

    # --- fleet lock: one rollout per provider at a time ------------------------------------------------------
    def fleet_lock(self, provider, holder, *, ttl=3600, now=None, dry_run=False):
        """Take the provider's fleet lock for `ttl` seconds. The holder taking it again extends it; a live lock of
        another holder raises FleetLocked; an expired one is taken over (audited)."""
        provider = self._provider(provider)
        holder = self._holder(holder)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise AnchorRegistryError(f"fleet lock ttl must be a whole number of seconds >= 1, not {ttl!r}")
        now = to_datetime(now) if now else now_local()
        expires = iso(now + timedelta(seconds=ttl))
        with self._write(dry_run) as query:
            self._serialize(query, f"fleet_lock:{provider}")  # two first takers: one inserts, the other sees it
            rows = query(f"SELECT * FROM fleet_locks WHERE provider = ?{self.for_update}", (provider,))  # noqa: S608
            row = rows[0] if rows else None
            if row is None:
                query("INSERT INTO fleet_locks (provider, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?)",
                      (provider, holder, iso(now), expires))
                self._registry_audit(query, now, holder, provider, None, "lock_acquired", None, None,
                                     f"until {expires}")
                return {"provider": provider, "holder": holder, "acquired_at": iso(now), "expires_at": expires,
                        "acquired": True}
            live = not is_expired(row["expires_at"], now)
            if row["holder"] == holder:
                query("UPDATE fleet_locks SET expires_at = ? WHERE provider = ?", (expires, provider))
                self._registry_audit(query, now, holder, provider, None, "lock_extended", None, None,
                                     f"until {expires}" + ("" if live else f" (it had expired at {row['expires_at']})"))
                return {"provider": provider, "holder": holder, "acquired_at": row["acquired_at"],
                        "expires_at": expires, "acquired": False}
            if live:
                raise FleetLocked(_locked_message(provider, row), provider, row["holder"], row["acquired_at"],
                                  row["expires_at"])
            query("UPDATE fleet_locks SET holder = ?, acquired_at = ?, expires_at = ? WHERE provider = ?",
                  (holder, iso(now), expires, provider))
            self._registry_audit(query, now, holder, provider, None, "lock_taken_over", None, None,
                                 f"from {row['holder']} (held since {row['acquired_at']}, expired "
                                 f"{row['expires_at']}); until {expires}")
            return {"provider": provider, "holder": holder, "acquired_at": iso(now), "expires_at": expires,
                    "acquired": True}

    def fleet_unlock(self, provider, holder, *, force=False, actor=None, now=None, dry_run=False):
        """Release the provider's fleet lock: only its holder may, or anyone with force (audited, with actor)."""
        provider = self._provider(provider)
        holder = self._holder(holder)
        actor = actor or holder
        reject_secrets({"actor": actor}, "fleet_lock")
        now = to_datetime(now) if now else now_local()
        with self._write(dry_run) as query:
            self._serialize(query, f"fleet_lock:{provider}")
            rows = query(f"SELECT * FROM fleet_locks WHERE provider = ?{self.for_update}", (provider,))  # noqa: S608
            if not rows:
                return {"provider": provider, "holder": None, "released": False, "forced": False}
            row = rows[0]
            forced = row["holder"] != holder
            if forced and not force:
                raise FleetLocked(f"{holder} does not hold the fleet lock of {provider}: "
                                  + _locked_message(provider, row), provider, row["holder"], row["acquired_at"],
                                  row["expires_at"])
            query("DELETE FROM fleet_locks WHERE provider = ?", (provider,))
            self._registry_audit(query, now, actor, provider, None,
                                 "lock_forced_release" if forced else "lock_released", None, None,
                                 f"lock of {row['holder']} held since {row['acquired_at']}, expiring "
                                 f"{row['expires_at']}" + (f"; forced by {actor}" if forced else ""))
            return {"provider": provider, "holder": row["holder"], "released": True, "forced": forced}

    def fleet_lock_info(self, provider, now=None):
        """The provider's fleet lock ({provider, holder, acquired_at, expires_at, expired}) or None."""
        rows = self._query("SELECT * FROM fleet_locks WHERE provider = ?", (self._provider(provider),))
        if not rows:
            return None
        now = to_datetime(now) if now else now_local()
        return {**{k: rows[0][k] for k in ("provider", "holder", "acquired_at", "expires_at")},
                "expired": is_expired(rows[0]["expires_at"], now)}

    # --- registry helpers -------------------------------------------------------------------------------------
    def _provider(self, provider):
        """A provider the store knows (the registry it was given, else the providers table); raises
        AnchorRegistryError naming the known ones."""
        if self.registry is not None:
            known = {p.name: p.kind for p in self.registry}
            source = "the provider registry (procedure_providers)"
        else:
            known = {r["name"]: r["kind"] for r in self._query("SELECT name, kind FROM providers ORDER BY name")} \
                if len(self.migrations) >= _PROVIDERS_VERSION else {}
            source = "the store's registered providers"
        if provider not in known:
            raise AnchorRegistryError(f"unknown provider {provider!r}; {source} has "
                                      f"{', '.join(known) or 'none (open the store with providers=)'}")
        return provider

    @staticmethod
    def _holder(holder):
        if not isinstance(holder, str) or not holder.strip():
            raise AnchorRegistryError("a fleet lock needs a holder (who runs the rollout, e.g. job id and user)")
        reject_secrets({"holder": holder}, "fleet_lock")
        return holder.strip()

    @staticmethod
    def _fingerprint(fingerprint):
        try:
            return fingerprint_text(fingerprint)
        except ValueError as e:
            raise AnchorRegistryError(str(e)) from None

    @staticmethod
    def _anchor_certificate(pem):
        """The one public certificate of `pem` (PEM text or a cryptography certificate), self-signed."""
        if isinstance(pem, x509.Certificate):
            cert = pem
        else:
            if not isinstance(pem, str):
                raise AnchorRegistryError("an anchor is given as PEM text (or a certificate object), not bytes")
            reject_secrets({"pem": pem}, "anchor")
            try:
                certs = parse_certificates(pem.encode("ascii", "replace"), "anchor")
            except LoadError as e:
                raise AnchorRegistryError(e.message) from None
            if len(certs) != 1:
                raise AnchorRegistryError(f"an anchor is one certificate; the PEM holds {len(certs)} "
                                          "(give the self-signed top of the chain)")
            cert = certs[0]
        if not issued_by(cert, cert):
            raise AnchorRegistryError(f"'{name_of(cert)}' is not self-signed (issued by "
                                      f"'{cert.issuer.rfc4514_string()}'): a trust anchor is the self-signed top of "
                                      "the chain; the delivery lacks that issuer")
        return cert

    @staticmethod
    def _evidence_item(item):
        item = dict(item or {})
        unknown = sorted(set(item) - {"kind", "detail", "message_id"})
        if unknown:
            raise AnchorRegistryError(f"unknown evidence field(s) {', '.join(unknown)}; fields are kind, detail, "
                                      "message_id")
        if item.get("kind") not in EVIDENCE_KINDS or item["kind"] == "seed":
            raise AnchorRegistryError(f"unknown evidence kind {item.get('kind')!r}; kinds are "
                                      + ", ".join(k for k in EVIDENCE_KINDS if k != "seed"))
        if not str(item.get("detail") or "").strip():
            raise AnchorRegistryError(f"{item['kind']} evidence needs a detail (where the fingerprint was read, "
                                      "which endpoint, which message)")
        return {"kind": item["kind"], "detail": str(item["detail"]).strip(), "message_id": item.get("message_id")}

    def _ticket_id(self, query, ticket):
        return None if ticket in (None, "") else self._load(query, ticket)["id"]

    def _add_evidence(self, query, provider, fingerprint, kind, detail, actor, ticket_id, message_id, now):
        """Append evidence unless the same evidence is already there; True when a row was added."""
        if not (actor or "").strip():
            raise AnchorRegistryError("evidence needs an actor (who recorded it)")
        if query("SELECT 1 FROM anchor_evidence WHERE provider = ? AND fingerprint = ? AND kind = ? AND detail = ?"
                 " AND actor = ? AND COALESCE(ticket_id, 0) = ? AND COALESCE(message_id, '') = ?",
                 (provider, fingerprint, kind, detail, actor, ticket_id or 0, message_id or "")):
            return False
        query("INSERT INTO anchor_evidence (provider, fingerprint, kind, detail, actor, ticket_id, message_id, at)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              (provider, fingerprint, kind, detail, actor, ticket_id, message_id, iso(now)))
        state = query("SELECT state FROM trust_anchors WHERE provider = ? AND fingerprint = ?", (provider, fingerprint))
        state = state[0]["state"] if state else None
        self._registry_audit(query, now, actor, provider, fingerprint, "evidence", state, state, f"{kind}: {detail}")
        return True

    @staticmethod
    def _evidence(query, provider=None, fingerprint=None):
        sql, params = ("SELECT e.*, t.folio AS ticket_folio FROM anchor_evidence e"
                       " LEFT JOIN tickets t ON t.id = e.ticket_id WHERE 1 = 1"), []
        if provider:
            sql, params = sql + " AND e.provider = ?", params + [provider]
        if fingerprint:
            sql, params = sql + " AND e.fingerprint = ?", params + [fingerprint]
        return [{"provider": r["provider"], "fingerprint": r["fingerprint"], "kind": r["kind"], "detail": r["detail"],
                 "actor": r["actor"], "at": r["at"], "ticket": r["ticket_folio"] or r["ticket_id"],
                 "message_id": r["message_id"]} for r in query(sql + " ORDER BY e.id", params)]

    def _anchor_row(self, query, provider, fingerprint, lock=False):
        lock_clause = " FOR UPDATE OF a" if lock and self.for_update else ""  # the LEFT JOIN's nullable side stays free
        rows = query("SELECT a.*, t.folio AS ticket_folio FROM trust_anchors a LEFT JOIN tickets t"  # noqa: S608
                     f" ON t.id = a.ticket_id WHERE a.provider = ? AND a.fingerprint = ?{lock_clause}",
                     (provider, fingerprint))
        if not rows:
            raise AnchorNotFound(f"no trust anchor {fingerprint} recorded for {provider}: record its certificate "
                                 "first (it arrives with the provider's delivery)")
        return rows[0]

    def _anchor_view(self, query, provider, fingerprint):
        """The anchor as it stands inside the transaction; a stub (state None) when only evidence exists."""
        evidence = [{k: v for k, v in e.items() if k not in ("provider", "fingerprint")}
                    for e in self._evidence(query, provider, fingerprint)]
        rows = query("SELECT a.*, t.folio AS ticket_folio FROM trust_anchors a LEFT JOIN tickets t"
                     " ON t.id = a.ticket_id WHERE a.provider = ? AND a.fingerprint = ?", (provider, fingerprint))
        if rows:
            return self._anchor(rows[0], evidence)
        stub = dict.fromkeys(_ANCHOR_FIELDS)
        return dict(stub, provider=provider, fingerprint=fingerprint, evidence=evidence)

    @staticmethod
    def _anchor(row, evidence):
        anchor = {k: row[k] for k in _ANCHOR_FIELDS if k != "ticket"}
        anchor["ticket"] = row["ticket_folio"] or row["ticket_id"]
        anchor["evidence"] = [{k: v for k, v in e.items() if k not in ("provider", "fingerprint")} for e in evidence]
        return anchor

    def _registry_audit(self, query, now, actor, provider, fingerprint, action, from_state, to_state, detail):
        row = query("INSERT INTO registry_audit (at, actor, provider, fingerprint, action, from_state, to_state,"
                    " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (iso(now), actor, provider, fingerprint, action, from_state, to_state, detail))[0]
        self._chain(query, "registry_audit", row)

    # --- tamper-evident audit chain ------------------------------------------------------------------------------
    def _chain(self, query, table, row):
        """Chain an audit entry just inserted (same transaction): sha256 over the previous link's hash and the entry's
        canonical content, plus an HMAC of that hash when the store has an audit key."""
        if len(self.migrations) < _CHAIN_VERSION:
            return  # a store held at an older schema version (tests, a rolling upgrade) has no chain yet
        last = query("SELECT entry_hash FROM audit_chain ORDER BY id DESC LIMIT 1")
        entry_hash = chain_hash(last[0]["entry_hash"] if last else None, table, row)
        query("INSERT INTO audit_chain (tbl, entry_id, entry_hash, entry_mac) VALUES (?, ?, ?, ?)",
              (table, row["id"], entry_hash, chain_mac(self.audit_key, entry_hash)))

    def verify_audit(self, check_states=True):
        """The first broken link of the audit chain, or None when it holds: {table, id, problem}. Checks, in order:
        every link (its hash recomputed from the entry and the link before; its HMAC when the store has a key);
        every audit entry has a link; then (check_states) every ticket's state is the `to_state` of its last audit
        entry and every trust anchor's state the one its registry audit last recorded."""
        previous = None
        for link in self._query("SELECT * FROM audit_chain ORDER BY id"):
            table, entry_id = link["tbl"], link["entry_id"]
            if table not in _CHAINED:
                return {"table": "audit_chain", "id": link["id"], "problem": f"link names unknown table {table!r}"}
            rows = self._query(f"SELECT * FROM {table} WHERE id = ?", (entry_id,))  # noqa: S608 - table from _CHAINED
            if not rows:
                return {"table": table, "id": entry_id, "problem": "entry is missing (deleted or replaced)"}
            expected = chain_hash(previous, table, rows[0])
            if not hmac.compare_digest(expected, link["entry_hash"] or ""):
                return {"table": table, "id": entry_id,
                        "problem": "hash does not match: the entry was edited or replaced, or the link before it "
                                   f"was removed or altered (chain link {link['id']})"}
            if self.audit_key is not None and not hmac.compare_digest(chain_mac(self.audit_key, expected),
                                                                      link["entry_mac"] or ""):
                return {"table": table, "id": entry_id,
                        "problem": "HMAC does not match the audit key: the chain was recomputed without the key "
                                   f"(chain link {link['id']})"}
            previous = link["entry_hash"]
        for table in _CHAINED:
            rows = self._query(f"SELECT e.id FROM {table} e LEFT JOIN audit_chain c ON c.tbl = ? AND "  # noqa: S608
                               "c.entry_id = e.id WHERE c.id IS NULL ORDER BY e.id LIMIT 1", (table,))
            if rows:
                return {"table": table, "id": rows[0]["id"],
                        "problem": "entry has no chain link (inserted outside the store's API)"}
        if not check_states:
            return None
        for row in self._query("SELECT t.id, t.state, (SELECT a.to_state FROM audit_log a WHERE a.ticket_id = t.id"
                               " ORDER BY a.id DESC LIMIT 1) AS audited FROM tickets t ORDER BY t.id"):
            if row["state"] != row["audited"]:
                return {"table": "tickets", "id": row["id"],
                        "problem": f"state is '{row['state']}' but its last audit entry says "
                                   f"'{row['audited']}': changed outside the store's API"}
        for row in self._query("SELECT a.id, a.state, (SELECT r.to_state FROM registry_audit r WHERE r.provider ="
                               " a.provider AND r.fingerprint = a.fingerprint AND r.to_state IS NOT NULL"
                               " ORDER BY r.id DESC LIMIT 1) AS audited FROM trust_anchors a ORDER BY a.id"):
            if row["state"] != row["audited"]:
                return {"table": "trust_anchors", "id": row["id"],
                        "problem": f"state is '{row['state']}' but its last registry audit entry says "
                                   f"'{row['audited']}': changed outside the store's API"}
        return None

    def audit_head(self):
        """{entries, head}: how many links the chain has and the last hash. Recording it outside the store (a job
        log, a ticket of the Mesa) makes a truncated tail evident too."""
        rows = self._query("SELECT COUNT(*) AS n FROM audit_chain")
        last = self._query("SELECT entry_hash FROM audit_chain ORDER BY id DESC LIMIT 1")
        return {"entries": rows[0]["n"], "head": last[0]["entry_hash"] if last else None}

    def _chain_existing(self, query):
        """Migration v4: chain every audit entry written before the chain existed, audit_log then registry_audit."""
        for table in _CHAINED:
            for row in query(f"SELECT * FROM {table} ORDER BY id"):  # noqa: S608 - table from _CHAINED
                self._chain(query, table, row)


_CHAIN_VERSION = 4  # the schema version that adds audit_chain
_PROVIDERS_VERSION = 5  # the schema version that adds the providers table
# The audit tables the chain covers and, for each, the columns its hash covers (in this order).
_CHAINED = {
    "audit_log": ("id", "ticket_id", "at", "actor", "from_state", "to_state", "reason", "serial", "hosts"),
    "registry_audit": ("id", "at", "actor", "provider", "fingerprint", "action", "from_state", "to_state", "detail"),
}


def chain_hash(previous, table, row):
    """sha256 (hex) over the previous link's hash and the entry's canonical content (table, then its columns)."""
    content = json.dumps([table, *(row[c] for c in _CHAINED[table])], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{previous or ''}\n{content}".encode()).hexdigest()


def chain_mac(key, entry_hash):
    return hmac.new(key, entry_hash.encode(), hashlib.sha256).hexdigest() if key is not None else None


AUDIT_KEY_ENV = "TICKET_STORE_AUDIT_KEY_FILE"


def read_audit_key(path):
    """The audit HMAC key in a file (an AWX credential's injected file, a vaulted file): its bytes, stripped."""
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as e:
        raise TicketStoreError(f"cannot read the audit key file {path}: {e.strerror}") from None
    if len(key) < 16:
        raise TicketStoreError(f"the audit key in {path} is too short: use at least 16 random bytes")
    return key


def audit_key_from_env():
    """The audit key named by $TICKET_STORE_AUDIT_KEY_FILE (how AWX injects a credential file), or None."""
    path = os.environ.get(AUDIT_KEY_ENV)
    return read_audit_key(path) if path else None


_ANCHOR_FIELDS = ("provider", "fingerprint", "subject", "not_before", "not_after", "pem", "state", "created_at",
                  "created_by", "approved_at", "approved_by", "retired_at", "retired_by", "ticket")


def _approval_order(anchor):
    approved = anchor["approved_at"]
    return (approved is None, to_datetime(approved or anchor["created_at"]), anchor["created_at"])


def _locked_message(provider, row):
    return (f"the fleet lock of {provider} is held by {row['holder']} since {row['acquired_at']}, "
            f"expires {row['expires_at']}")


# The tables, written once for both backends (TEXT timestamps and JSON, INTEGER flags, so rows read back
# identically); each backend fills in its id types and adds its own append-only triggers.
# Version 1 as shipped also checked the service against a closed list of two; version 2 rebuilt the table without
# that check, so it is left out here (a store created today passes through v1 to v5 in one transaction, and a v1
# store in the field loses it in v2 all the same). Version 5 makes the column reference the providers table.
_TICKETS_V1 = """
    CREATE TABLE tickets (
        id {ticket_id},
        service TEXT NOT NULL,
        state TEXT NOT NULL,
        requester_name TEXT, requester_email TEXT, requester_unit TEXT, requester_system TEXT,
        forwarded_by_name TEXT, forwarded_by_rank TEXT,
        source TEXT NOT NULL CHECK (source IN ('mail', 'monitor', 'manual')),
        message_id TEXT UNIQUE,
        folio TEXT UNIQUE,
        received_at TEXT NOT NULL,
        first_contact_due TEXT NOT NULL,
        first_contact_at TEXT,
        certificate_received_at TEXT,
        attention_due TEXT,
        attended_at TEXT,
        sla_first_contact_breached INTEGER NOT NULL DEFAULT 0,
        sla_attention_breached INTEGER NOT NULL DEFAULT 0,
        deployed_serial TEXT,
        hosts TEXT NOT NULL DEFAULT '[]',
        verified_hosts TEXT NOT NULL DEFAULT '[]',
        cause TEXT,
        observations TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
"""
_TABLES = _TICKETS_V1 + """
    CREATE INDEX tickets_service_state ON tickets (service, state);
    CREATE TABLE audit_log (
        id {audit_id},
        ticket_id {ticket_ref} NOT NULL REFERENCES tickets (id),
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        reason TEXT,
        serial TEXT,
        hosts TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX audit_log_ticket ON audit_log (ticket_id, id);
    CREATE TABLE folio_counters (
        service TEXT NOT NULL,
        year INTEGER NOT NULL,
        last INTEGER NOT NULL,
        PRIMARY KEY (service, year)
    );
"""


def _replace_once(text, old, new):
    assert text.count(old) == 1, old  # a schema edit that silently matched nothing would ship the old CHECK
    return text.replace(old, new)


# Version 2: tickets take source 'provider' and any service (checked in code until v5); the approved-anchor registry,
# its evidence and audit (append-only), and the per-provider fleet lock.
_SOURCE_CHECK_V2 = "CHECK (source IN (%s))" % ", ".join(f"'{s}'" for s in SOURCES)
_TICKETS_V2 = _replace_once(_TICKETS_V1, "CHECK (source IN ('mail', 'monitor', 'manual'))", _SOURCE_CHECK_V2)
_REGISTRY_TABLES = """
    CREATE TABLE trust_anchors (
        id {id},
        provider TEXT NOT NULL,
        fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 95 AND fingerprint = upper(fingerprint)),
        subject TEXT NOT NULL,
        not_before TEXT NOT NULL,
        not_after TEXT NOT NULL,
        pem TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'retired')),
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        approved_at TEXT,
        approved_by TEXT,
        retired_at TEXT,
        retired_by TEXT,
        ticket_id {ticket_ref} REFERENCES tickets (id),
        UNIQUE (provider, fingerprint)
    );
    CREATE TABLE anchor_evidence (
        id {id},
        provider TEXT NOT NULL,
        fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 95 AND fingerprint = upper(fingerprint)),
        kind TEXT NOT NULL CHECK (kind IN ('endpoint', 'operator', 'authenticated_mail', 'claim', 'seed')),
        detail TEXT NOT NULL,
        actor TEXT NOT NULL,
        ticket_id {ticket_ref} REFERENCES tickets (id),
        message_id TEXT,
        at TEXT NOT NULL
    );
    CREATE INDEX anchor_evidence_anchor ON anchor_evidence (provider, fingerprint, id);
    CREATE TABLE registry_audit (
        id {id},
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        provider TEXT NOT NULL,
        fingerprint TEXT,
        action TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        detail TEXT
    );
    CREATE INDEX registry_audit_provider ON registry_audit (provider, id);
    CREATE TABLE fleet_locks (
        provider TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        acquired_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
"""

_SQLITE_TICKETS_SWAP = """
    INSERT INTO tickets_v2 SELECT * FROM tickets;
    DELETE FROM sqlite_sequence WHERE name = 'tickets_v2';
    UPDATE sqlite_sequence SET name = 'tickets_v2' WHERE name = 'tickets';
    DROP TABLE tickets;
    ALTER TABLE tickets_v2 RENAME TO tickets;
    CREATE INDEX tickets_service_state ON tickets (service, state);
"""  # noqa: S608 - constant SQL

# Schema migrations, applied in order on open; each entry is one version.
SQLITE_MIGRATIONS = [
    _TABLES.format(ticket_id="INTEGER PRIMARY KEY AUTOINCREMENT", audit_id="INTEGER PRIMARY KEY AUTOINCREMENT",
                   ticket_ref="INTEGER") + """
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    """,
    # SQLite cannot alter a CHECK: rebuild tickets (create, copy, drop, rename) with foreign keys off for the
    # migration (SqliteTicketStore._migrate) and checked before commit. audit_log's triggers belong to audit_log
    # and stay; the AUTOINCREMENT counter moves over so no ticket id is ever reused.
    _TICKETS_V2.format(ticket_id="INTEGER PRIMARY KEY AUTOINCREMENT").replace(
        "CREATE TABLE tickets (", "CREATE TABLE tickets_v2 (") + _SQLITE_TICKETS_SWAP
    + _REGISTRY_TABLES.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", ticket_ref="INTEGER") + """
    CREATE TRIGGER anchor_evidence_no_update BEFORE UPDATE ON anchor_evidence
        BEGIN SELECT RAISE(ABORT, 'anchor_evidence is append-only'); END;
    CREATE TRIGGER anchor_evidence_no_delete BEFORE DELETE ON anchor_evidence
        BEGIN SELECT RAISE(ABORT, 'anchor_evidence is append-only'); END;
    CREATE TRIGGER registry_audit_no_update BEFORE UPDATE ON registry_audit
        BEGIN SELECT RAISE(ABORT, 'registry_audit is append-only'); END;
    CREATE TRIGGER registry_audit_no_delete BEFORE DELETE ON registry_audit
        BEGIN SELECT RAISE(ABORT, 'registry_audit is append-only'); END;
    """,
]


# Version 3: the service desk's lifecycle (closed_at, close_reason, duplicate_of), the expiry monitor's event key
# (one open ticket per certificate event), and the notices sent about each ticket. Tickets closed before it get
# their closed_at from the audit log; expiry tickets keyed by crossing (`expiry:<service>:<sha256>:<threshold>`)
# get the event key of their certificate (`expiry:<service>:<sha256>`, 72 + len(service) characters).
_LIFECYCLE_V3 = """
    ALTER TABLE tickets ADD COLUMN closed_at TEXT;
    ALTER TABLE tickets ADD COLUMN close_reason TEXT;
    ALTER TABLE tickets ADD COLUMN duplicate_of {ticket_ref} REFERENCES tickets (id);
    ALTER TABLE tickets ADD COLUMN event_key TEXT;
    ALTER TABLE tickets ADD COLUMN notices TEXT NOT NULL DEFAULT '[]';
    UPDATE tickets SET event_key = substr(message_id, 1, 72 + length(service))
        WHERE source = 'monitor' AND message_id LIKE 'expiry:%';
    UPDATE tickets SET closed_at = (SELECT a.at FROM audit_log a WHERE a.ticket_id = tickets.id
        AND a.to_state = 'closed' AND (a.from_state IS NULL OR a.from_state <> 'closed') ORDER BY a.id DESC LIMIT 1)
        WHERE state = 'closed';
    CREATE INDEX tickets_event ON tickets (event_key);
"""
SQLITE_MIGRATIONS.append(_LIFECYCLE_V3.format(ticket_ref="INTEGER"))


# Version 4: the tamper-evident audit chain (audit_chain: one link per audit_log / registry_audit entry, append-only),
# computed over the existing entries in the migration's transaction. SQLite also refuses REPLACE on the append-only
# tables (REPLACE deletes the old row without firing the DELETE trigger) and on tickets, and a state change that the
# last chained audit entry does not announce (the store writes the entry first). A file anyone can open can still
# be rewritten wholesale: the chain (with an HMAC key, which the file does not hold) makes that evident.
_CHAIN_TABLE = """
    CREATE TABLE audit_chain (
        id {id},
        tbl TEXT NOT NULL,
        entry_id {ref} NOT NULL,
        entry_hash TEXT NOT NULL,
        entry_mac TEXT,
        UNIQUE (tbl, entry_id)
    );
"""
_SQLITE_NO_REPLACE = """
    CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table}
        WHEN EXISTS (SELECT 1 FROM {table} WHERE id = NEW.id)
        BEGIN SELECT RAISE(ABORT, '{table}: rows are never replaced'); END;
"""
_SQLITE_CHAIN_GUARDS = """
    CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain
        BEGIN SELECT RAISE(ABORT, 'audit_chain is append-only'); END;
    CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
        BEGIN SELECT RAISE(ABORT, 'audit_chain is append-only'); END;
"""
_SQLITE_STATE_GUARD = """
    CREATE TRIGGER tickets_state_audited BEFORE UPDATE OF state ON tickets
        WHEN NEW.state IS NOT OLD.state AND NOT EXISTS (
            SELECT 1 FROM audit_log a WHERE a.ticket_id = OLD.id AND a.from_state IS OLD.state
                AND a.to_state = NEW.state
                AND a.id = (SELECT c.entry_id FROM audit_chain c WHERE c.tbl = 'audit_log' ORDER BY c.id DESC LIMIT 1)
                AND a.id = (SELECT MAX(b.id) FROM audit_log b WHERE b.ticket_id = OLD.id))
        BEGIN SELECT RAISE(ABORT, 'tickets.state changes only through the ticket store (no audit entry for it)'); END;
"""
_SQLITE_CHAIN_V4 = (_CHAIN_TABLE.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", ref="INTEGER") + _SQLITE_CHAIN_GUARDS
                    + "".join(_SQLITE_NO_REPLACE.format(table=t) for t in ("audit_log", "registry_audit",
                                                                           "anchor_evidence", "audit_chain", "tickets"))
                    + _SQLITE_STATE_GUARD)


def _sqlite_v4(store, query):
    store._run_script(query, _SQLITE_CHAIN_V4)
    store._chain_existing(query)


SQLITE_MIGRATIONS.append(_sqlite_v4)


# Version 5: the providers table replaces the closed set of services the code used to check. It starts with every
# provider the rows already name (kind unknown until the registry is registered, which the store does on its next
# write when given one); then tickets.service, trust_anchors.provider and fleet_locks.provider reference it. No row
# changes: ids, audit entries and the audit chain stay exactly as they were.
_PROVIDERS_TABLE = """
    CREATE TABLE providers (
        name TEXT PRIMARY KEY,
        kind TEXT CHECK (kind IS NULL OR kind IN (%s)),
        registered_at TEXT NOT NULL
    );
""" % ", ".join(f"'{k}'" for k in KINDS)
_REFERENCING = (("tickets", "service"), ("trust_anchors", "provider"), ("fleet_locks", "provider"))


def _seed_providers(store, query):
    store._run_script(query, _PROVIDERS_TABLE)
    names = set()
    for table, column in _reference_tables():
        names.update(r["name"] for r in query(f"SELECT DISTINCT {column} AS name FROM {table}"))  # noqa: S608
    for name in sorted(names):
        query("INSERT INTO providers (name, kind, registered_at) VALUES (?, NULL, ?)", (name, iso(now_local())))


def _sqlite_reference(query, table, column):
    """Rebuild `table` with `column` REFERENCES providers (name) (SQLite cannot add a constraint): its own CREATE
    statement edited, rows copied with their ids, its indexes and triggers re-created, its AUTOINCREMENT counter
    kept. Foreign keys are off for the migration and checked before it commits (SqliteTicketStore)."""
    sql = query("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))[0]["sql"]
    extras = [r["sql"] for r in query("SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', "
                                      "'trigger') AND sql IS NOT NULL ORDER BY rowid", (table,))]
    new, found = re.subn(rf"(\b{column} TEXT [^,\n]*?)(\s*,|\s*\n)", r"\1 REFERENCES providers (name)\2", sql,
                         count=1)
    renamed, named = re.subn(rf'^CREATE TABLE\s+"?{table}"?\s*\(', f"CREATE TABLE {table}_v5 (", new)
    if found != 1 or named != 1:
        raise TicketStoreError(f"schema migration 5: cannot find {table}.{column} in {sql!r}")
    query(renamed)
    query(f"INSERT INTO {table}_v5 SELECT * FROM {table}")  # noqa: S608 - constant names
    query("DELETE FROM sqlite_sequence WHERE name = ?", (f"{table}_v5",))
    query("UPDATE sqlite_sequence SET name = ? WHERE name = ?", (f"{table}_v5", table))
    query(f"DROP TABLE {table}")
    query(f"ALTER TABLE {table}_v5 RENAME TO {table}")
    for statement in extras:
        query(statement)


def _sqlite_v5(store, query):
    _seed_providers(store, query)
    for table, column in _REFERENCING:
        _sqlite_reference(query, table, column)


SQLITE_MIGRATIONS.append(_sqlite_v5)


class SqliteTicketStore(TicketStore):
    """One SQLite file: WAL, synchronous=FULL (a committed ticket survives power loss), BEGIN IMMEDIATE."""

    migrations = SQLITE_MIGRATIONS

    def __init__(self, path, policy=None, busy_timeout=30.0, audit_key=None, providers=None, create=True):
        super().__init__(policy, audit_key, providers)
        self.path = path
        try:
            self._conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
            if self.registry is not None and create:
                self.register_providers(self.registry)
        except sqlite3.Error as e:
            raise TicketStoreError(f"cannot open the ticket store {path}: {e}") from e

    def _migrate(self):
        # A table rebuild must not cascade through foreign keys (the pragma is ignored inside a transaction);
        # _check_migration verifies every reference before the migration commits.
        self._conn.execute("PRAGMA foreign_keys = OFF")
        try:
            super()._migrate()
        finally:
            self._conn.execute("PRAGMA foreign_keys = ON")

    def _check_migration(self, query):
        broken = query("PRAGMA foreign_key_check")
        if broken:
            raise TicketStoreError(f"schema migration would break {len(broken)} reference(s), first: {broken[0]}")

    def _run_script(self, query, script):
        for statement in _statements(script):
            query(statement)

    @contextmanager
    def _tx(self, dry_run=False):
        # IMMEDIATE takes the write lock up front, so two writers queue instead of failing on lock upgrade.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._query
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("ROLLBACK" if dry_run else "COMMIT")

    def _query(self, sql, params=()):
        return [dict(row) for row in self._conn.execute(sql, tuple(params)).fetchall()]

    def close(self):
        self._conn.close()


def _statements(script):
    """Split a migration script into statements; sqlite3 knows where a trigger body ends."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


POSTGRESQL_MIGRATIONS = [
    _TABLES.format(ticket_id="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                   audit_id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", ticket_ref="BIGINT") + """
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'restrict_violation'; END $$;
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
    CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
    """,
    """
    ALTER TABLE tickets DROP CONSTRAINT IF EXISTS tickets_service_check;
    ALTER TABLE tickets DROP CONSTRAINT IF EXISTS tickets_source_check;
    ALTER TABLE tickets ADD CONSTRAINT tickets_source_check """ + _SOURCE_CHECK_V2 + ";\n"
    + _REGISTRY_TABLES.format(id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", ticket_ref="BIGINT") + """
    CREATE FUNCTION registry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation'; END $$;
    CREATE TRIGGER anchor_evidence_no_update BEFORE UPDATE OR DELETE ON anchor_evidence
        FOR EACH ROW EXECUTE FUNCTION registry_append_only();
    CREATE TRIGGER anchor_evidence_no_truncate BEFORE TRUNCATE ON anchor_evidence
        FOR EACH STATEMENT EXECUTE FUNCTION registry_append_only();
    CREATE TRIGGER registry_audit_no_update BEFORE UPDATE OR DELETE ON registry_audit
        FOR EACH ROW EXECUTE FUNCTION registry_append_only();
    CREATE TRIGGER registry_audit_no_truncate BEFORE TRUNCATE ON registry_audit
        FOR EACH STATEMENT EXECUTE FUNCTION registry_append_only();
    """,
]


POSTGRESQL_MIGRATIONS.append(_LIFECYCLE_V3.format(ticket_ref="BIGINT"))
# Version 4 (see the SQLite one): the audit chain, append-only, and the same guard on state writes (the store writes
# the audit entry first; the table owner can still disable the trigger, verify_audit then names the ticket). Roles
# are not created here (not portable); see
# docs/ticket-store-hardening.md for the grants that leave the application role no UPDATE/DELETE on audit tables.
_POSTGRES_CHAIN_GUARDS = """
    CREATE TRIGGER audit_chain_no_update BEFORE UPDATE OR DELETE ON audit_chain
        FOR EACH ROW EXECUTE FUNCTION registry_append_only();
    CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
        FOR EACH STATEMENT EXECUTE FUNCTION registry_append_only();
    CREATE FUNCTION tickets_state_audited() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.state IS DISTINCT FROM OLD.state AND NOT EXISTS (
                SELECT 1 FROM audit_log a WHERE a.ticket_id = OLD.id AND a.from_state IS NOT DISTINCT FROM OLD.state
                    AND a.to_state = NEW.state
                    AND a.id = (SELECT MAX(b.id) FROM audit_log b WHERE b.ticket_id = OLD.id)
                    AND a.id = (SELECT c.entry_id FROM audit_chain c WHERE c.tbl = 'audit_log'
                                ORDER BY c.id DESC LIMIT 1)) THEN
                RAISE EXCEPTION 'tickets.state changes only through the ticket store (no audit entry for it)'
                    USING ERRCODE = 'restrict_violation';
            END IF;
            RETURN NEW;
        END $$;
    CREATE TRIGGER tickets_state_audited BEFORE UPDATE OF state ON tickets
        FOR EACH ROW EXECUTE FUNCTION tickets_state_audited();
"""
_POSTGRES_CHAIN_V4 = (_CHAIN_TABLE.format(id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", ref="BIGINT")
                      + _POSTGRES_CHAIN_GUARDS)


def _postgres_v4(store, query):
    store._run_script(query, _POSTGRES_CHAIN_V4)
    store._chain_existing(query)


POSTGRESQL_MIGRATIONS.append(_postgres_v4)


def _postgres_v5(store, query):
    _seed_providers(store, query)
    for table, column in _REFERENCING:
        query(f"ALTER TABLE {table} ADD CONSTRAINT {table}_{column}_provider FOREIGN KEY ({column})"
              " REFERENCES providers (name)")


POSTGRESQL_MIGRATIONS.append(_postgres_v5)


class PostgresTicketStore(TicketStore):
    """A PostgreSQL database (psycopg 3), READ COMMITTED: the ticket row lock and the counter upsert serialise
    exactly the writers that touch the same ticket or folio series; everything else runs in parallel."""

    for_update = " FOR UPDATE"
    migrations = POSTGRESQL_MIGRATIONS

    def __init__(self, dsn, policy=None, create=True, connect_timeout=10, audit_key=None, providers=None):
        super().__init__(policy, audit_key, providers)
        self.dsn, self._secrets = redact(dsn), dsn_secrets(dsn)
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError as e:
            raise TicketStoreError(f"the PostgreSQL ticket store needs psycopg 3 on the controller: {e}") from e
        self._error = psycopg.Error
        self._outer = ExitStack()
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row, connect_timeout=connect_timeout,
                                         application_name="ticket_store")
        except psycopg.Error as e:
            raise TicketStoreError(f"cannot open the ticket store {self.dsn}: {_scrub(e, self._secrets)}") from None
        try:
            if not create and self._query("SELECT to_regclass('schema_version') AS t")[0]["t"] is None:
                # Check mode / info on a database without the schema: build it in a transaction never committed.
                self._outer.enter_context(self._conn.transaction(force_rollback=True))
            self._migrate()
            if self.registry is not None and create:
                self.register_providers(self.registry)
        except BaseException:
            self.close()
            raise

    def _serialize(self, query, key):
        query("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"ticket_store:{key}",))

    @contextmanager
    def _tx(self, dry_run=False):
        with self._conn.transaction(force_rollback=dry_run):  # a savepoint inside the check-mode transaction
            yield self._query

    def _query(self, sql, params=()):
        if params:
            sql = sql.replace("%", "%%").replace("?", "%s")
        try:
            cursor = self._conn.execute(sql, tuple(params) if params else None)
            return cursor.fetchall() if cursor.description else []
        except self._error as e:
            raise TicketStoreError(f"ticket store {self.dsn}: {_scrub(e, self._secrets)}") from None

    def close(self):
        try:
            self._outer.close()
        finally:
            self._conn.close()


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def dsn_secrets(dsn):
    """The password a PostgreSQL URL carries (`user:password@` or `?password=`), as written and decoded: the
    values a module adds to `no_log_values`. Empty for SQLite paths and for URLs that leave it to PGPASSWORD."""
    if not dsn.startswith(POSTGRES_SCHEMES):
        return set()
    parts = urlsplit(dsn)
    found = [parts.password, *re.findall(r"(?:^|&)password=([^&]*)", parts.query)]
    return {value for raw in found if raw for value in (raw, unquote(raw))}


def redact(dsn):
    """The DSN with its password masked, for messages."""
    return _scrub(dsn, dsn_secrets(dsn))


def _scrub(text, secrets):
    text = str(text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "********")
    return text


def open_store(dsn, policy=None, create=True, audit_key=None, providers=None):
    """The store a DSN names: `sqlite:///path`, a plain path, or `postgresql://...` / `postgres://...`.

    `providers`: the provider registry (procedure_providers, or a providers.Registry). Given it, the store registers
    it (on open, or with create=False on its first write, inside that write's transaction) and can write tickets;
    without it the store reads, and records anchors and locks only for providers registered before.

    With create=False nothing is created: a SQLite file that does not exist yet opens as an empty in-memory store,
    and a PostgreSQL database without the schema gets it inside a transaction that is rolled back on close, so check
    mode and info queries leave no trace.
    """
    if dsn.startswith(POSTGRES_SCHEMES):
        return PostgresTicketStore(dsn, policy, create=create, audit_key=audit_key, providers=providers)
    # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
    path = dsn[len("sqlite:///"):] if dsn.startswith("sqlite:///") else dsn
    if not create and path != ":memory:" and not os.path.exists(path):
        path = ":memory:"
    return SqliteTicketStore(path, policy, audit_key=audit_key, providers=providers, create=create)
