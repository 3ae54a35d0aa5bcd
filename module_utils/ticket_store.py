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

State machine (DESIGN.md §5), plus two edges the design leaves implicit:
`rolled_back -> deploying` (retry after a fix) and `rolled_back -> notified` (the Mesa de Servicios is told).
"""
import json
import os
import re
import sqlite3
from collections import namedtuple
from contextlib import ExitStack, contextmanager
from urllib.parse import unquote, urlsplit

from ansible.module_utils.sla import SERVICES, SlaPolicy, iso, now_local, to_datetime

SOURCES = ("mail", "monitor", "manual")
TRANSITIONS = {
    "received": ("observations", "folio_issued"),
    "observations": ("received",),
    "folio_issued": ("requester_validated", "rejected"),
    "requester_validated": ("certificate_received",),
    "certificate_received": ("deploying",),
    "deploying": ("deployed", "rolled_back"),
    "rolled_back": ("deploying", "notified"),
    "deployed": ("notified",),
    "rejected": ("notified",),
    "notified": ("closed",),
    "closed": (),
}
STATES = tuple(TRANSITIONS)

Result = namedtuple("Result", "ticket changed before")


class TicketStoreError(Exception):
    """Base of every error the store raises on purpose."""


class TicketNotFound(TicketStoreError):
    pass


class InvalidTransition(TicketStoreError):
    def __init__(self, message, allowed=()):
        super().__init__(message)
        self.allowed = list(allowed)


class TicketConflict(TicketStoreError):
    """The request contradicts what the ticket already records (e.g. another certificate serial)."""


class SecretMaterialError(TicketStoreError):
    """Key material or a passphrase was offered to the store; the message never repeats the value."""


_PEM_SECRET = re.compile(r"-----BEGIN [A-Z0-9 ]*(PRIVATE KEY|PKCS12)-----")
# Base64 of a DER SEQUENCE longer than 255 bytes (a PKCS#12 or a DER key pasted as text).
_DER_BASE64 = re.compile(r"^\s*MII[A-Za-z0-9+/=\s]{60,}$")
_SECRET_NAME = re.compile(r"passw(or)?d|passphrase|secret|private_?key|pkcs12|pfx", re.IGNORECASE)


def reject_secrets(fields, where="ticket"):
    """Raise SecretMaterialError if any name or value in `fields` looks like a key, a PKCS#12 or a passphrase."""
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
    elif isinstance(fields, str) and (_PEM_SECRET.search(fields) or _DER_BASE64.match(fields)):
        raise SecretMaterialError(f"{where}: looks like key material (PEM private key or PKCS#12/DER blob); "
                                  "the ticket store never holds it")


def folio(service, year, number):
    return f"DGTIC-{service.upper()}-{year}-{number:06d}"


def _union(current, extra):
    """Order-preserving union of two host lists."""
    return current + [h for h in dict.fromkeys(extra or ()) if h not in current]


class TicketStore:
    """The store interface and every rule; subclasses provide `_tx()` (yielding `query(sql, params)`)."""

    for_update = ""
    migrations = ()

    def __init__(self, policy=None):
        self.policy = policy or SlaPolicy()

    # --- backend hooks --------------------------------------------------------------------------------------
    def _tx(self, dry_run=False):
        """A context manager: one write transaction (rolled back when dry_run) yielding `query`."""
        raise NotImplementedError

    def _query(self, sql, params=()):
        raise NotImplementedError

    def close(self):
        pass

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
                self._run_script(query, script)
                query("INSERT INTO schema_version (version) VALUES (?)", (number,))

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

    def find(self, service=None, states=None):
        """Tickets filtered by service and state(s), oldest first."""
        sql, params = "SELECT * FROM tickets WHERE 1 = 1", []
        if service:
            sql, params = sql + " AND service = ?", params + [service]
        if states:
            states = [states] if isinstance(states, str) else list(states)
            sql += " AND state IN (%s)" % ", ".join("?" * len(states))
            params += states
        return [self._ticket(row) for row in self._query(sql + " ORDER BY id", params)]

    def audit(self, ref):
        """The ticket's audit log, oldest first."""
        ticket_id = self._load(self._query, ref)["id"]
        rows = self._query("SELECT * FROM audit_log WHERE ticket_id = ? ORDER BY id", (ticket_id,))
        return [dict(row, hosts=json.loads(row["hosts"])) for row in rows]

    # --- writes ---------------------------------------------------------------------------------------------
    def create(self, service, *, actor, requester=None, forwarded_by=None, source="manual", message_id=None,
               hosts=(), received_at=None, reason=None, note=None, now=None, dry_run=False):
        """Open a ticket in `received`; an existing `message_id` returns that ticket unchanged."""
        if service not in SERVICES:
            raise TicketStoreError(f"unknown service {service!r}; services are {', '.join(SERVICES)}")
        if source not in SOURCES:
            raise TicketStoreError(f"unknown source {source!r}; sources are {', '.join(SOURCES)}")
        requester, forwarded_by = dict(requester or {}), dict(forwarded_by or {})
        reject_secrets({"requester": requester, "forwarded_by": forwarded_by, "message_id": message_id,
                        "hosts": list(hosts or ()), "reason": reason, "note": note, "actor": actor})
        now = to_datetime(now) if now else now_local()
        received = to_datetime(received_at) if received_at else now
        with self._tx(dry_run) as query:
            if message_id:
                self._serialize(query, f"message_id:{message_id}")  # two intakes of one message open one ticket
                rows = query("SELECT * FROM tickets WHERE message_id = ?", (message_id,))
                if rows:
                    ticket = self._ticket(rows[0])
                    return Result(ticket, False, ticket)
            observations = [self._note(now, actor, note)] if note else []
            row = query(
                "INSERT INTO tickets (service, state, requester_name, requester_email, requester_unit,"
                " requester_system, forwarded_by_name, forwarded_by_rank, source, message_id, received_at,"
                " first_contact_due, hosts, observations, created_at, updated_at)"
                " VALUES (?, 'received', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (service, requester.get("name"), requester.get("email"), requester.get("unit"),
                 requester.get("system"), forwarded_by.get("name"), forwarded_by.get("rank"), source, message_id,
                 iso(received), iso(self.policy.due(service, "first_contact", received)),
                 json.dumps(_union([], hosts)), json.dumps(observations), iso(now), iso(now)))[0]
            self._append_audit(query, row["id"], now, actor, None, "received", reason or "ticket opened",
                               None, _union([], hosts))
            return Result(self._ticket(row), True, None)

    def transition(self, ref, to_state, *, actor, reason=None, serial=None, hosts=None, verified_hosts=None,
                   cause=None, note=None, request=None, now=None, dry_run=False):
        """Move a ticket to `to_state` (None: stay) recording data; asking again for the current state with
        nothing new is a no-op (changed=False). Hosts only accumulate; a new serial on `deploying` restarts
        verification. `request` ({service, requester, forwarded_by}, as create() takes them) corrects the
        request's data while the ticket is in `received` or `observations` (the requester's reply, step 2.2)."""
        if to_state is not None and to_state not in TRANSITIONS:
            raise InvalidTransition(f"unknown ticket state {to_state!r}; states are {', '.join(STATES)}")
        reject_secrets({"reason": reason, "serial": serial, "hosts": hosts or [], "cause": cause,
                        "verified_hosts": verified_hosts or [], "note": note, "actor": actor,
                        "request": request or {}})
        now = to_datetime(now) if now else now_local()
        with self._tx(dry_run) as query:
            row = self._load(query, ref, lock=True)
            before = self._ticket(row)
            current = row["state"]
            to_state = to_state or current
            if to_state != current and to_state not in TRANSITIONS[current]:
                raise InvalidTransition(
                    f"ticket {self._name(row)} is '{current}': cannot go to '{to_state}'; allowed next: "
                    + (", ".join(TRANSITIONS[current]) or "none (final state)"), TRANSITIONS[current])
            changes = self._data_changes(row, to_state, serial, hosts, verified_hosts, cause, note, actor, now)
            changes.update(self._request_changes(row, request))
            if to_state == current and not changes:
                return Result(before, False, before)
            if to_state != current:
                changes.update(self._entering(query, row, to_state, changes, now))
            changes.update(self._breaches(row, changes, now))
            changes["state"], changes["updated_at"] = to_state, iso(now)
            # Column names come from this module, never from the caller; values are bound parameters.
            assignments = ", ".join(f"{column} = ?" for column in changes)
            row = query(f"UPDATE tickets SET {assignments} WHERE id = ? RETURNING *",  # noqa: S608
                        (*changes.values(), row["id"]))[0]
            self._append_audit(query, row["id"], now, actor, current, to_state,
                               reason or note or ("updated" if to_state == current else None),
                               row["deployed_serial"], _union(list(hosts or ()), verified_hosts))
            return Result(self._ticket(row), True, before)

    def annotate(self, ref, note, *, actor, now=None, dry_run=False):
        """Append a note to the ticket's observations (a note already there is not repeated)."""
        return self.transition(ref, None, actor=actor, note=note, now=now, dry_run=dry_run)

    # --- rules ----------------------------------------------------------------------------------------------
    def _data_changes(self, row, to_state, serial, hosts, verified_hosts, cause, note, actor, now):
        changes = {}
        current_hosts, verified = json.loads(row["hosts"]), json.loads(row["verified_hosts"])
        if serial and serial != row["deployed_serial"]:
            if to_state == row["state"] and row["deployed_serial"]:
                raise TicketConflict(f"ticket {self._name(row)} records certificate serial {row['deployed_serial']}"
                                     f" in '{row['state']}'; refusing to replace it with {serial} without a transition")
            changes["deployed_serial"] = serial
            if to_state == "deploying" and row["deployed_serial"]:
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
        if changes.get("service", "renapo") not in SERVICES:
            raise TicketStoreError(f"unknown service {changes['service']!r}; services are {', '.join(SERVICES)}")
        return changes

    def _entering(self, query, row, to_state, changes, now):
        """Column changes that entering `to_state` implies (first contact, folio, attention clock, closing)."""
        entering = {}
        if row["state"] == "received" and not row["first_contact_at"]:
            entering["first_contact_at"] = iso(now)
        if to_state == "folio_issued" and not row["folio"]:
            entering["folio"] = self._next_folio(query, row["service"], now.year)
        elif to_state == "certificate_received":
            entering["certificate_received_at"] = iso(now)
            entering["attention_due"] = iso(self.policy.due(row["service"], "attention", now))
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
        return folio(service, year, number)

    # --- helpers --------------------------------------------------------------------------------------------
    def _load(self, query, ref, lock=False):
        ref = str(ref).strip()
        column, value = ("id", int(ref)) if ref.isdigit() else ("folio", ref.upper())
        lock_clause = self.for_update if lock else ""
        rows = query(f"SELECT * FROM tickets WHERE {column} = ?{lock_clause}", (value,))  # noqa: S608
        if not rows:
            raise TicketNotFound(f"no ticket with {column} {value}")
        return rows[0]

    @staticmethod
    def _append_audit(query, ticket_id, now, actor, from_state, to_state, reason, serial, hosts):
        query("INSERT INTO audit_log (ticket_id, at, actor, from_state, to_state, reason, serial, hosts)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              (ticket_id, iso(now), actor, from_state, to_state, reason, serial, json.dumps(hosts)))

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
            "updated_at": row["updated_at"], "allowed_next": list(TRANSITIONS[row["state"]]),
        }


# The tables, written once for both backends (TEXT timestamps and JSON, INTEGER flags, so rows read back
# identically); each backend fills in its id types and adds its own append-only triggers.
_TABLES = """
    CREATE TABLE tickets (
        id {ticket_id},
        service TEXT NOT NULL CHECK (service IN ('renapo', 'sat')),
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

# Schema migrations, applied in order on open; each entry is one version.
SQLITE_MIGRATIONS = [
    _TABLES.format(ticket_id="INTEGER PRIMARY KEY AUTOINCREMENT", audit_id="INTEGER PRIMARY KEY AUTOINCREMENT",
                   ticket_ref="INTEGER") + """
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    """,
]


class SqliteTicketStore(TicketStore):
    """One SQLite file: WAL, synchronous=FULL (a committed ticket survives power loss), BEGIN IMMEDIATE."""

    migrations = SQLITE_MIGRATIONS

    def __init__(self, path, policy=None, busy_timeout=30.0):
        super().__init__(policy)
        self.path = path
        try:
            self._conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as e:
            raise TicketStoreError(f"cannot open the ticket store {path}: {e}") from e

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
]


class PostgresTicketStore(TicketStore):
    """A PostgreSQL database (psycopg 3), READ COMMITTED: the ticket row lock and the counter upsert serialise
    exactly the writers that touch the same ticket or folio series; everything else runs in parallel."""

    for_update = " FOR UPDATE"
    migrations = POSTGRESQL_MIGRATIONS

    def __init__(self, dsn, policy=None, create=True, connect_timeout=10):
        super().__init__(policy)
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


def open_store(dsn, policy=None, create=True):
    """The store a DSN names: `sqlite:///path`, a plain path, or `postgresql://...` / `postgres://...`.

    With create=False nothing is created: a SQLite file that does not exist yet opens as an empty in-memory store,
    and a PostgreSQL database without the schema gets it inside a transaction that is rolled back on close, so check
    mode and info queries leave no trace.
    """
    if dsn.startswith(POSTGRES_SCHEMES):
        return PostgresTicketStore(dsn, policy, create=create)
    # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
    path = dsn[len("sqlite:///"):] if dsn.startswith("sqlite:///") else dsn
    if not create and path != ":memory:" and not os.path.exists(path):
        path = ":memory:"
    return SqliteTicketStore(path, policy)
