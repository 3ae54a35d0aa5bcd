"""Padrón consultation batch: check a producers' padrón file, consult each CURP (or RFC) at a provider, keep every
result.

Which provider is consulted is the caller's choice from the provider registry (module_utils/providers.py): a
provider whose `consultation.strategy` is `curp_soap` takes the padrón's CURPs (run_batch), one with `rfc_opinion`
the padrón's RFCs (run_rfc_batch). Each run records the provider it consulted. The texts below name RENAPO and SAT,
the providers those strategies were written for.

Pure code (stdlib + the project's consulta module): no Ansible import.

Padrón file: CSV, UTF-8 (a BOM is accepted), comma-separated, one header row; extra columns are ignored.
  curp              the producer's CURP (18 characters, upper case)
  nombres           given name(s) as the padrón holds them
  apellido1         first surname
  apellido2         second surname (may be empty)
  fecha_nacimiento  birth date, YYYY-MM-DD (DD/MM/YYYY is accepted too)
  sexo              H or M
  entidad           state of birth, two-letter CURP code (AS, BC, ... NE); empty = taken from the CURP; any other
                    value (a name, a typo, a spreadsheet formula) is refused: the CURP's code is used and the row
                    is reported in `invalid_entidad`
A file that cannot be read as such (empty, not UTF-8, a column missing, no records) raises PadronError naming the
defect. A record with a malformed CURP (structure or check digit) or a CURP already listed in an earlier record is
stored as an inconsistency without calling RENAPO. RENAPO's 01/09 (invalid CURP) is stored as `malformed` with the
attempt that got it: a definitive answer, never retried.

Results store: a SQLite file (a path or `sqlite:///path`) or a PostgreSQL database (`postgresql://...`, psycopg 3),
the same SQL on both (`?` placeholders turned into `%s`), as the ticket store does; PostgreSQL is what AWX job
slices on several execution nodes share. Table `runs` (one row per batch run) and table `results` (one row per
padrón record per run: consulted_at, status_oper, status_curp, TipoError/CodigoError, mismatch_* flags, category,
age, entidad).
RENAPO's names (renapo_nombres, renapo_apellido1, renapo_apellido2, as received: Ñ and accents intact) and
docProbatorio are kept for the found records, so an inconsistency can be reviewed against the padrón.
Categories: found, not_found, malformed, duplicate, error (gave up after retries; retried when the run is resumed).

RFC batch (run_rfc_batch, strategy rfc_opinion): the opinión de cumplimiento of each RFC of a CSV file (columns
`rfc`, optional `curp`), through the same machinery (bounded concurrency, retries, checkpoint, resume) into the
tables sat_runs / sat_results of the same database (names kept from the first release: existing stores stay valid).
Categories: answered (opinion POSITIVA, NEGATIVA, INSCRITO SIN OBLIGACIONES or NO INSCRITO),
malformed (never sent, or refused by SAT as malformed), duplicate, error.
The 0/1 flags revisado (a definitive answer), exitoso, inconsistente (DESIGN §7), baja (inactive statusCurp) and
defuncion (BD) are set when a result is stored, so the KPIs are plain SUMs over millions of rows.
Checkpoint: results are committed as they arrive, a few at a time; a resumed run consults only the records that
have no committed result, so a CURP whose result is committed is never consulted again in that run.

Slices (AWX job slicing): `slice`/`slices` (1-based, as awx_job_slice_number/awx_job_slice_count) give a job the
records whose CURP (or RFC) hashes, sha256 mod `slices`, to its slice: a stable partition, no record in two slices
and none left out, duplicates in the slice of their first listing. Every slice writes into the same run (the
unfinished run of the same padrón, picked under a table lock so concurrent slices agree); table `run_slices` records
each slice, and the run is finished when its last slice finishes, so the KPIs of a sliced run are the unsliced run's.
Rate limit (`rate_limit`, requests per second, every attempt counted): the slices share it through table
`rate_limits`, one row per strategy and endpoint holding the next free send slot; a process reserves a block of slots
with one atomic UPDATE and its threads send each at its slot, so all the slices together never exceed the limit.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import os
import signal
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from ansible.module_utils.consulta import (
    CURP_SOAP,
    ENTIDADES,
    INVALID_CURP,
    RFC_OPINION,
    STATUS_INACTIVE,
    ConsultaError,
    consult,
    curp_problem,
    rfc_problem,
)

COLUMNS = ("curp", "nombres", "apellido1", "apellido2", "fecha_nacimiento", "sexo", "entidad")
CATEGORIES = ("found", "not_found", "malformed", "duplicate", "error")
MISMATCH_FIELDS = ("nombre", "fecha_nacimiento", "sexo")
# Failures worth another attempt: the service or the network, not the request.
RETRYABLE = ("timeout", "refused", "unreachable", "tls", "gateway")
# Failures no record can get past: stop the run instead of storing the same error for every CURP.
FATAL = ("tls_verify", "invalid_input")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    padron TEXT NOT NULL,
    padron_sha256 TEXT NOT NULL,
    padron_total INTEGER NOT NULL,
    endpoint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    row_no INTEGER NOT NULL,
    curp TEXT NOT NULL,
    consulted_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    category TEXT NOT NULL,
    status_oper TEXT,
    status_curp TEXT,
    tipo_error TEXT,
    codigo_error TEXT,
    mismatch_nombre INTEGER NOT NULL DEFAULT 0,
    mismatch_fecha_nacimiento INTEGER NOT NULL DEFAULT 0,
    mismatch_sexo INTEGER NOT NULL DEFAULT 0,
    edad INTEGER,
    entidad TEXT,
    error TEXT,
    revisado INTEGER NOT NULL,
    exitoso INTEGER NOT NULL,
    inconsistente INTEGER NOT NULL,
    baja INTEGER NOT NULL,
    defuncion INTEGER NOT NULL,
    PRIMARY KEY (run_id, row_no)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_exitoso ON results (curp, consulted_at) WHERE exitoso = 1;
CREATE TABLE IF NOT EXISTS sat_runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    padron TEXT NOT NULL,
    padron_sha256 TEXT NOT NULL,
    padron_total INTEGER NOT NULL,
    endpoint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sat_results (
    run_id TEXT NOT NULL REFERENCES sat_runs (run_id),
    row_no INTEGER NOT NULL,
    rfc TEXT NOT NULL,
    curp TEXT,
    consulted_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    category TEXT NOT NULL,
    opinion TEXT,
    error TEXT,
    revisado INTEGER NOT NULL,
    PRIMARY KEY (run_id, row_no)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_slices (
    service TEXT NOT NULL,
    run_id TEXT NOT NULL,
    slice_no INTEGER NOT NULL,
    slices INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    PRIMARY KEY (service, run_id, slice_no)
);
CREATE TABLE IF NOT EXISTS rate_limits (
    name TEXT PRIMARY KEY,
    next_slot DOUBLE PRECISION NOT NULL
);
"""
# PostgreSQL: the same tables (no WITHOUT ROWID), every later column included.
PG_SCHEMA = SCHEMA.replace(") WITHOUT ROWID;", ");")
# Columns added after the first release: a database written by an older batch gets them on open.
ADDED_COLUMNS = (("results", "renapo_nombres", "TEXT"), ("results", "renapo_apellido1", "TEXT"),
                 ("results", "renapo_apellido2", "TEXT"), ("results", "doc_probatorio", "TEXT"),
                 # The registry provider a run consulted (NULL: a run written before the registry).
                 ("runs", "provider", "TEXT"), ("sat_runs", "provider", "TEXT"))
RESULT_COLUMNS = ("run_id", "row_no", "curp", "consulted_at", "attempts", "category", "status_oper", "status_curp",
                  "tipo_error", "codigo_error", "mismatch_nombre", "mismatch_fecha_nacimiento", "mismatch_sexo",
                  "edad", "entidad", "error", "revisado", "exitoso", "inconsistente", "baja", "defuncion",
                  "renapo_nombres", "renapo_apellido1", "renapo_apellido2", "doc_probatorio")
SAT_COLUMNS = ("run_id", "row_no", "rfc", "curp", "consulted_at", "attempts", "category", "opinion", "error",
               "revisado")
SAT_CATEGORIES = ("answered", "malformed", "duplicate", "error")


def _insert(table: str, columns: tuple) -> str:
    # An upsert both backends run (a retried error row is replaced by its later answer).
    update = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("run_id", "row_no"))
    return "INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (run_id, row_no) DO UPDATE SET %s" % (  # noqa: S608
        table, ", ".join(columns), ", ".join("?" * len(columns)), update)


_INSERT = _insert("results", RESULT_COLUMNS)


class PadronError(Exception):
    """The padrón or the run cannot go on; the message names the defect."""


# ---------------------------------------------------------------- the padrón file

def read_padron(path: str) -> dict:
    """The padrón's records (row_no, curp, fields, precheck), its sha256 and its duplicated CURPs."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PadronError(f"cannot read the padrón file {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise PadronError(f"the padrón file {path} is not UTF-8: byte 0x{data[e.start]:02X} at line {line} "
                          "(save it as UTF-8, e.g. iconv -f latin1 -t utf-8)") from None
    if not text.strip():
        raise PadronError(f"the padrón file {path} is empty; expected a header row with {', '.join(COLUMNS)}")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader)]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise PadronError(f"the padrón file {path} lacks the column(s) {', '.join(missing)}; "
                          f"its header is {','.join(header)!s} and the expected columns are {', '.join(COLUMNS)}")
    index = {c: header.index(c) for c in COLUMNS}
    records, seen, duplicates, invalid_entidad = [], {}, {}, []
    for row_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        rec = {c: (row[i].strip() if i < len(row) else "") for c, i in index.items()}
        curp = rec["curp"].upper()
        rec["curp"] = curp
        entidad = rec["entidad"].upper()
        if entidad and entidad not in ENTIDADES:
            invalid_entidad.append(row_no)  # the value itself may be a formula: it goes nowhere
            entidad = ""
        rec["entidad"] = entidad
        precheck = _precheck(curp, row_no, curp_problem(curp), seen, duplicates)
        records.append({"row_no": row_no, "curp": curp, "fields": rec, "precheck": precheck})
    if not records:
        raise PadronError(f"the padrón file {path} has a header but no records")
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "records": records,
            "duplicates": duplicates, "invalid_entidad": invalid_entidad}


def _precheck(key: str, row_no: int, problem, seen: dict, duplicates: dict) -> str | None:
    """Why a padrón row is never sent: "malformed", "duplicate" (of the row in `seen`), or None (first and valid)."""
    if problem:
        return "malformed"
    if key in seen:
        duplicates.setdefault(key, [seen[key]]).append(row_no)
        return "duplicate"
    seen[key] = row_no
    return None


def _fold(text: str) -> str:
    """providers.fold (the one text folding): the service writes names without accents, case is not a difference."""
    from ansible.module_utils.providers import fold

    return fold(text or "")


def _date(text: str) -> dt.date | None:
    for fmt in ("%Y-%m-%d", "%d/%m/%Y"):
        try:
            return dt.datetime.strptime((text or "").strip(), fmt).date()
        except ValueError:
            pass
    return None


def compare(fields: dict, record: dict) -> dict:
    """Which of nombre, fecha_nacimiento, sexo disagree between a padrón record and RENAPO's CURPStruct."""
    names = ("nombres", "apellido1", "apellido2")
    padron_date = _date(fields["fecha_nacimiento"])
    return {"nombre": any(_fold(fields[n]) != _fold(record.get(n, "")) for n in names),
            "fecha_nacimiento": padron_date is None or padron_date != _date(record.get("fechNac", "")),
            "sexo": fields["sexo"].strip().upper() != (record.get("sexo") or "").upper()}


def _age(born: dt.date | None, on: dt.date) -> int | None:
    if born is None:
        return None
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


# ---------------------------------------------------------------- one consultation with retries

def _result(rec: dict, now: dt.datetime, category: str, attempts: int = 0, answer: dict | None = None,
            error: str | None = None) -> dict:
    fields, answer = rec["fields"], answer or {}
    record = answer.get("record") or {}
    mismatch = compare(fields, record) if category == "found" else {}
    born = _date(record.get("fechNac", "")) or _date(fields["fecha_nacimiento"])
    entidad = fields["entidad"] or (rec["curp"][11:13] if rec["curp"][11:13] in ENTIDADES else None)
    status = answer.get("status_curp") or None
    flags = {"revisado": int(category != "error"), "exitoso": int(category == "found"),
             "inconsistente": int(category in ("not_found", "malformed", "duplicate") or any(mismatch.values())),
             "baja": int(status in STATUS_INACTIVE), "defuncion": int(status == "BD")}
    return {**flags, "row_no": rec["row_no"], "curp": rec["curp"], "consulted_at": now.isoformat(timespec="seconds"),
            "attempts": attempts, "category": category, "status_oper": answer.get("status_oper"),
            "status_curp": status, "tipo_error": answer.get("tipo_error") or None,
            "codigo_error": answer.get("codigo_error") or None,
            **{f"mismatch_{f}": int(mismatch.get(f, False)) for f in MISMATCH_FIELDS},
            "edad": _age(born, now.date()), "entidad": entidad, "error": error,
            "renapo_nombres": record.get("nombres"), "renapo_apellido1": record.get("apellido1"),
            "renapo_apellido2": record.get("apellido2"), "doc_probatorio": record.get("docProbatorio") or None}


def _retryable(e: ConsultaError) -> bool:
    status = e.result.get("http_status") or 0
    return (e.kind in RETRYABLE or (e.kind == "http_status" and status >= 500)
            or (e.kind == "soap_fault" and str(e.result.get("fault_code", "")).endswith("Server")))


def consult_record(rec: dict, conn: dict, retries: int = 3, backoff: float = 0.5, stop=None) -> dict:
    """One record's result; retries with exponential backoff (backoff, 2x, 4x ...) on 5xx, timeouts and
    connection errors. Raises PadronError for a failure every record would hit (credentials, TLS trust)."""
    attempt = 0
    while True:
        attempt += 1
        if conn.get("limiter"):
            conn["limiter"].acquire()
        try:
            answer = consult(CURP_SOAP, conn["endpoint"], curp=rec["curp"], usuario=conn["usuario"],
                             password=conn["password"], ca_path=conn.get("ca_path"), timeout=conn.get("timeout", 10),
                             base_path=conn.get("base_path"), name=conn.get("name"))
            return _result(rec, _now(), "found", attempt, answer)
        except ConsultaError as e:
            codes = (e.result.get("tipo_error"), e.result.get("codigo_error"))
            if e.kind == "no_exitoso" and codes == ("01", "06"):
                return _result(rec, _now(), "not_found", attempt, e.result)
            if e.kind == "no_exitoso" and codes in INVALID_CURP:
                return _result(rec, _now(), "malformed", attempt, e.result)  # RENAPO's verdict: never retried
            if e.kind in FATAL or (e.kind == "no_exitoso" and codes == ("02", "01")):
                raise PadronError(f"batch stopped: {e}") from None
            if _retryable(e) and attempt <= retries and not (stop and stop.is_set()):
                time.sleep(backoff * 2 ** (attempt - 1))
                continue
            return _result(rec, _now(), "error", attempt, e.result, f"{e.kind}: {e}")


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


# ---------------------------------------------------------------- the results store and the run

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class _SqliteDb(sqlite3.Connection):
    """sqlite3's connection, tagged with its flavour; the SQL both backends run is written for it."""

    flavour = "sqlite"
    begin = "BEGIN IMMEDIATE"

    def has_table(self, name: str) -> bool:
        return self.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None


class _PgDb:
    """A psycopg 3 connection (autocommit; explicit BEGIN/COMMIT) with sqlite3's calling convention."""

    flavour = "postgresql"
    begin = "BEGIN"

    def __init__(self, dsn: str, readonly: bool = False):
        from ansible.module_utils.ticket_store import dsn_secrets, redact
        self.dsn, self._secrets = redact(dsn), dsn_secrets(dsn)
        try:
            import psycopg
        except ImportError as e:
            raise PadronError(f"a PostgreSQL results store needs psycopg 3 on the controller: {e}") from None
        self._error = psycopg.Error
        try:
            self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, application_name="padron_batch")
        except psycopg.Error as e:
            raise PadronError(f"cannot open the results store {self.dsn}: {self._scrub(e)}") from None
        if readonly:
            self.conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")

    def _scrub(self, e) -> str:
        text = str(e)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "********")
        return text

    def execute(self, sql: str, params=()):
        if params:
            sql = sql.replace("%", "%%").replace("?", "%s")
        try:
            return self.conn.execute(sql, tuple(params) if params else None)
        except self._error as e:
            raise PadronError(f"results store {self.dsn}: {self._scrub(e)}") from None

    def executemany(self, sql: str, rows) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.executemany(sql.replace("%", "%%").replace("?", "%s"), rows)
        except self._error as e:
            raise PadronError(f"results store {self.dsn}: {self._scrub(e)}") from None

    def has_table(self, name: str) -> bool:
        return self.execute("SELECT to_regclass(?)", (name,)).fetchone()[0] is not None

    def close(self) -> None:
        self.conn.close()


def _is_pg(dsn: str) -> bool:
    return str(dsn).startswith(POSTGRES_SCHEMES)


def _sqlite_path(dsn: str) -> str:
    dsn = str(dsn)
    return dsn[len("sqlite:///"):] if dsn.startswith("sqlite:///") else dsn


def results_exist(dsn: str) -> bool:
    """Whether the results store can be opened without creating anything (a SQLite file exists; PostgreSQL: yes)."""
    return _is_pg(dsn) or os.path.exists(_sqlite_path(dsn))


def open_results(path: str, create: bool = True, readonly: bool = False):
    """The results store a DSN names: a SQLite path (WAL: a report may read while a batch writes) or a PostgreSQL
    URL. With create=False nothing is created."""
    if _is_pg(path):
        db = _PgDb(path, readonly=readonly)
        if create:
            # Concurrent slices start together: CREATE TABLE IF NOT EXISTS is not safe against itself.
            db.execute("SELECT pg_advisory_lock(hashtextextended('padron_batch:schema', 0))")
            try:
                db.execute(PG_SCHEMA)
                for table, column, kind in ADDED_COLUMNS:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
            finally:
                db.execute("SELECT pg_advisory_unlock(hashtextextended('padron_batch:schema', 0))")
        return db
    path = _sqlite_path(path)
    if not create and not os.path.exists(path):
        raise PadronError(f"the results database {path} does not exist; run the padrón consultation first")
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, factory=_SqliteDb)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False, factory=_SqliteDb)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    if create:
        db.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    return db


def _n(db, expr: str) -> str:
    """A 0/1 integer of a condition: SQLite sums a comparison as is, PostgreSQL needs a CASE."""
    return expr if getattr(db, "flavour", "sqlite") == "sqlite" else f"CASE WHEN {expr} THEN 1 ELSE 0 END"


# ---------------------------------------------------------------- slices and the shared rate limit

def slice_of(key: str, slices: int) -> int:
    """The 1-based slice a CURP (or RFC) belongs to: stable across runs, hosts and Python versions."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % slices + 1


def _check_slice(slice_no: int, slices: int) -> None:
    if slices < 1 or not 1 <= slice_no <= slices:
        raise PadronError(f"slice must be between 1 and slices ({slices}), got {slice_no}")


class RateLimiter:
    """At most `rate` requests per second over every process sharing the store: slots 1/rate apart, reserved a
    block at a time with one atomic UPDATE of the row `name` of rate_limits (the database clock on PostgreSQL, so
    hosts with skewed clocks still agree). A slot left unused is lost: the limit is a ceiling."""

    def __init__(self, dsn: str, name: str, rate: float, block_seconds: float = 0.02):
        self.interval, self.name = 1.0 / rate, name
        self.block = max(1, int(rate * block_seconds))
        self.db = open_results(dsn, create=False)
        self.slots, self.lock = deque(), threading.Lock()
        self.db.execute("INSERT INTO rate_limits (name, next_slot) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                        (name,))

    def _reserve(self) -> None:
        span = self.block * self.interval
        if self.db.flavour == "postgresql":
            now = "extract(epoch from clock_timestamp())::float8"
            before = time.time()
            end, server_now = self.db.execute(
                f"UPDATE rate_limits SET next_slot = GREATEST(next_slot, {now}) + ? WHERE name = ? "  # noqa: S608
                f"RETURNING next_slot, {now}", (span, self.name)).fetchone()
            offset = (before + time.time()) / 2 - server_now  # the local clock minus the database's
        else:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                end = self.db.execute("UPDATE rate_limits SET next_slot = MAX(next_slot, ?) + ? WHERE name = ? "
                                      "RETURNING next_slot", (time.time(), span, self.name)).fetchone()[0]
            finally:
                self.db.execute("COMMIT")
            offset = 0.0
        first = end - span + offset
        self.slots.extend(first + i * self.interval for i in range(self.block))

    def acquire(self) -> None:
        """Wait for this process's next slot."""
        with self.lock:
            if not self.slots:
                self._reserve()
            slot = self.slots.popleft()
        delay = slot - time.time()
        if delay > 0:
            time.sleep(delay)

    def close(self) -> None:
        self.db.close()


def _store(db, run_id: str, results: list[dict], insert: str = _INSERT, columns: tuple = RESULT_COLUMNS) -> None:
    if results:
        db.execute(db.begin)
        try:
            db.executemany(insert, [tuple({**r, "run_id": run_id}.get(c) for c in columns) for r in results])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


class _Service:
    """What differs between the CURP and the RFC batch (named by strategy): tables, the worker, the prechecked
    result, the summary."""

    def __init__(self, name, runs, results, columns, worker, precheck_result, summary):
        self.name, self.runs, self.results, self.columns = name, runs, results, columns
        self.insert = _insert(results, columns)
        self.worker, self.precheck_result, self.summary = worker, precheck_result, summary

    def store(self, db, run_id, results):
        _store(db, run_id, results, self.insert, self.columns)


def _pick_run(db, padron: dict, endpoint: str, run_id: str | None, resume: bool, runs: str = "runs",
              service: str = CURP_SOAP, slice_no: int = 1, slices: int = 1, provider: str | None = None) -> tuple:
    """(run_id, resumed): the named run, else the unfinished run of the same padrón, else a new one; the slice is
    recorded in run_slices. Under a table lock, so slices starting together pick the same run."""
    db.execute(db.begin)
    try:
        if db.flavour == "postgresql":
            db.execute(f"LOCK TABLE {runs} IN EXCLUSIVE MODE")  # readers go on; a second picker waits
        run_id, resumed = _pick_run_locked(db, padron, endpoint, run_id, resume, runs, provider)
        other = db.execute("SELECT slices FROM run_slices WHERE service = ? AND run_id = ? AND slices != ?",
                           (service, run_id, slices)).fetchone()
        if other:
            raise PadronError(f"run {run_id} is being made in {other[0]} slices, not {slices}; use the same slice "
                              "count for every slice of a run (or start a new run)")
        db.execute("INSERT INTO run_slices (service, run_id, slice_no, slices, started_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (service, run_id, slice_no) DO UPDATE SET finished_at = NULL",
                   (service, run_id, slice_no, slices, _now().isoformat(timespec="seconds")))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return run_id, resumed


def _finish_slice(db, kind, run_id: str, slice_no: int, slices: int) -> None:
    """Mark the slice finished, and the run when every slice of it is (the run row locked: the last one sees all)."""
    now = _now().isoformat(timespec="seconds")
    db.execute(db.begin)
    try:
        if db.flavour == "postgresql":
            db.execute(f"SELECT 1 FROM {kind.runs} WHERE run_id = ? FOR UPDATE", (run_id,))  # noqa: S608
        db.execute("UPDATE run_slices SET finished_at = ? WHERE service = ? AND run_id = ? AND slice_no = ?",
                   (now, kind.name, run_id, slice_no))
        done = db.execute("SELECT COUNT(*) FROM run_slices WHERE service = ? AND run_id = ? AND finished_at IS NOT "
                          "NULL", (kind.name, run_id)).fetchone()[0]
        if done >= slices:
            db.execute(f"UPDATE {kind.runs} SET finished_at = ? WHERE run_id = ? AND finished_at IS NULL",  # noqa: S608
                       (now, run_id))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _pick_run_locked(db, padron: dict, endpoint: str, run_id: str | None, resume: bool, runs: str,
                     provider: str | None = None) -> tuple:
    if run_id:
        row = db.execute(f"SELECT padron_sha256, provider FROM {runs} WHERE run_id = ?",  # noqa: S608
                         (run_id,)).fetchone()
        if row and row[0] != padron["sha256"]:
            raise PadronError(f"run {run_id} was made over another padrón file (sha256 {row[0][:12]}...); "
                              "start a new run for this one")
        if row and provider and row[1] and row[1] != provider:
            raise PadronError(f"run {run_id} consulted the provider {row[1]}, not {provider}; start a new run")
        if row:
            return run_id, True
    elif resume:
        row = db.execute(*_unfinished(runs, padron, provider)).fetchone()
        if row:
            return row[0], True
    now = _now()
    if not run_id:
        run_id = now.strftime("%Y%m%dT%H%M%S")
        taken = {r[0] for r in db.execute(f"SELECT run_id FROM {runs} WHERE run_id LIKE ?",  # noqa: S608
                                          (run_id + "%",))}
        run_id += "" if run_id not in taken else f"-{len(taken) + 1}"
    db.execute(f"INSERT INTO {runs} (run_id, started_at, padron, padron_sha256, padron_total, endpoint, "  # noqa: S608
               "provider) VALUES (?, ?, ?, ?, ?, ?, ?)", (run_id, now.isoformat(timespec="seconds"), padron["path"],
                                                          padron["sha256"], len(padron["records"]), endpoint,
                                                          provider))
    return run_id, False


def _unfinished(runs: str, padron: dict, provider: str | None) -> tuple:
    """(SQL, params) of the latest unfinished run over the same file, of the same provider (or of a run written
    before runs recorded their provider)."""
    same = " AND (provider IS NULL OR provider = ?)" if provider else ""
    return (f"SELECT run_id FROM {runs} WHERE finished_at IS NULL AND padron_sha256 = ?{same} "  # noqa: S608
            "ORDER BY started_at DESC LIMIT 1", (padron["sha256"], provider) if provider else (padron["sha256"],))


def plan(db_path: str, padron: dict, run_id: str | None = None, resume: bool = True,
         strategy: str = CURP_SOAP, slice_no: int = 1, slices: int = 1, provider: str | None = None) -> dict:
    """What a run (or one slice of it) would do, without writing: the run it would use and how many records it
    would consult."""
    _check_slice(slice_no, slices)
    kind = _batch(strategy)
    runs, results = kind.runs, kind.results
    done, run = set(), None
    if results_exist(db_path):
        db = open_results(db_path, create=False, readonly=True)
        try:
            if db.has_table(runs):
                q = ((f"SELECT run_id FROM {runs} WHERE run_id = ?", (run_id,)) if run_id  # noqa: S608
                     else _unfinished(runs, padron, provider) if _has_column(db, runs, "provider")
                     else (f"SELECT run_id FROM {runs} WHERE finished_at IS NULL AND padron_sha256 = ? "  # noqa: S608
                           "ORDER BY started_at DESC LIMIT 1", (padron["sha256"],)))
                row = db.execute(*q).fetchone() if (run_id or resume) else None
                run = row[0] if row else None
                if run:
                    done = {r[0] for r in db.execute(
                        f"SELECT row_no FROM {results} WHERE run_id = ? AND category != 'error'",  # noqa: S608
                        (run,))}
        finally:
            db.close()
    todo = [r for r in _slice(padron, slice_no, slices) if r["row_no"] not in done]
    prechecked = sum(1 for r in todo if r["precheck"])
    return {"run_id": run or run_id, "resumed": run is not None, "already_done": len(done),
            "to_consult": len(todo) - prechecked, "prechecked": prechecked}


def _check_options(concurrency, retries, backoff, slice_no=1, slices=1, rate_limit=None, resume=True, run_id=None):
    if concurrency < 1 or retries < 0 or backoff < 0:
        raise PadronError("concurrency must be >= 1, retries and backoff >= 0")
    _check_slice(slice_no, slices)
    if rate_limit is not None and rate_limit <= 0:
        raise PadronError(f"rate_limit must be a number of requests per second > 0, got {rate_limit}")
    if slices > 1 and not resume and not run_id:
        raise PadronError("with slices, every slice must join the same run: keep resume on, or name the run with "
                          "run_id (for example the AWX workflow job id)")


def _slice(padron: dict, slice_no: int, slices: int) -> list:
    """The records of one slice: by the hash of the CURP/RFC, so a duplicate falls where its first listing does."""
    if slices == 1:
        return padron["records"]
    key = "curp" if "curp" in padron["records"][0] and "rfc" not in padron["records"][0] else "rfc"
    return [r for r in padron["records"] if slice_of(r[key], slices) == slice_no]


def _run(kind: _Service, padron: dict, db_path: str, endpoint: str, conn: dict, concurrency: int, retries: int,
         backoff: float, run_id: str | None, resume: bool, slice_no: int = 1, slices: int = 1,
         rate_limit: float | None = None, provider: str | None = None) -> dict:
    """The machinery both batches share: pick or resume the run, store the slice's prechecked records, consult the
    rest with bounded concurrency (and the shared rate limit) committing as answers arrive, close the slice (and
    the run with its last slice), summarise the run."""
    db = open_results(db_path)
    limiter = None
    try:
        run_id, resumed = _pick_run(db, padron, endpoint, run_id, resume, kind.runs, kind.name, slice_no, slices,
                                    provider)
        done = {r[0] for r in db.execute(
            f"SELECT row_no FROM {kind.results} WHERE run_id = ? AND category != 'error'", (run_id,))}  # noqa: S608
        mine = _slice(padron, slice_no, slices)
        todo = [r for r in mine if r["row_no"] not in done]
        now = _now()
        kind.store(db, run_id, [kind.precheck_result(r, now) for r in todo if r["precheck"]])
        if rate_limit:
            limiter = RateLimiter(db_path, f"{kind.name} {endpoint}", rate_limit)
        consulted = _consult_all(db, run_id, [r for r in todo if not r["precheck"]], kind,
                                 {"endpoint": endpoint, **conn, "limiter": limiter}, concurrency, retries, backoff)
        _finish_slice(db, kind, run_id, slice_no, slices)
        summary = kind.summary(db, run_id)
    finally:
        if limiter:
            limiter.close()
        db.close()
    dups = padron["duplicates"]
    return {**summary, "provider": provider, "strategy": kind.name, "resumed": resumed,
            "already_stored": len(done), "consulted": consulted,
            "slice": slice_no, "slices": slices, "slice_records": len(mine),
            "duplicated_curps": len(dups), "duplicates": dict(list(dups.items())[:20])}


def run_batch(padron_path: str, db_path: str, endpoint: str, *, usuario: str, password: str,
              ca_path: str | None = None, timeout: float = 10, concurrency: int = 8, retries: int = 3,
              backoff: float = 0.5, run_id: str | None = None, resume: bool = True, slice_no: int = 1,
              slices: int = 1, rate_limit: float | None = None, provider: str | None = None,
              base_path: str = "", name: str | None = None) -> dict:
    """Consult every padrón record of the slice without a committed result in the run, at most rate_limit
    requests per second over every slice, with the curp_soap strategy (`provider`: the registry name recorded
    with the run; `base_path`: its path on the endpoint; `name`: its display name in messages); returns the run's
    summary (all slices)."""
    _check_options(concurrency, retries, backoff, slice_no, slices, rate_limit, resume, run_id)
    padron = read_padron(padron_path)
    result = _run(CURP_BATCH, padron, db_path, endpoint,
                  {"usuario": usuario, "password": password, "ca_path": ca_path, "timeout": timeout,
                   "base_path": base_path, "name": name},
                  concurrency, retries, backoff, run_id, resume, slice_no, slices, rate_limit, provider)
    bad = padron["invalid_entidad"]
    return {**result, "invalid_entidad": len(bad), "invalid_entidad_rows": bad[:20]}


def _consult_all(db, run_id, todo, kind, conn, concurrency, retries, backoff) -> int:
    """Keeps `concurrency` consultations in flight; commits finished ones in small batches (the checkpoint)."""
    fatal, sent = None, 0
    stop = threading.Event()
    queue = iter(todo)
    # SIGTERM/SIGINT stop politely: nothing new is sent, what is in flight is answered and committed, so a rerun
    # consults every CURP exactly once (only SIGKILL can lose the answers in flight).
    interrupted = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: interrupted.set())
    try:
        sent = _drive(db, run_id, queue, kind, conn, concurrency, retries, backoff, stop, interrupted)
    except PadronError as e:
        fatal = e
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if fatal:
        raise fatal
    if interrupted.is_set():
        raise PadronError(f"batch interrupted after {sent} consultations, every answer committed; "
                          "rerun to resume where it stopped")
    return sent


def _drive(db, run_id, queue, kind, conn, concurrency, retries, backoff, stop, interrupted) -> int:
    pending, fatal, sent = set(), None, 0
    with ThreadPoolExecutor(concurrency, thread_name_prefix=f"padron-{kind.name}") as pool:
        while True:
            while not stop.is_set() and not interrupted.is_set() and len(pending) < concurrency:
                rec = next(queue, None)
                if rec is None:
                    break
                pending.add(pool.submit(kind.worker, rec, conn, retries, backoff, stop))
                sent += 1
            if not pending:
                break
            finished, pending = wait(pending, timeout=1, return_when=FIRST_COMPLETED)
            ready = []
            for fut in finished:
                try:
                    ready.append(fut.result())
                except PadronError as e:
                    fatal = fatal or e
                    stop.set()
            # Commit what has just finished (a small batch): at a kill only answers in flight are lost.
            kind.store(db, run_id, ready)
    if fatal:
        raise fatal
    return sent


def run_summary(db, run_id: str) -> dict:
    """Counts of one run by category, plus bajas, deceased and mismatched records."""
    mismatched = _n(db, "(x.mismatch_nombre + x.mismatch_fecha_nacimiento + x.mismatch_sexo) > 0")
    row = db.execute(
        "SELECT r.run_id, r.started_at, r.finished_at, r.padron, r.padron_total, r.endpoint, COUNT(x.row_no), "
        + ", ".join(f"COALESCE(SUM({_n(db, f'x.category = {c!r}')}), 0)" for c in CATEGORIES) + ", "
        "COALESCE(SUM(x.baja), 0), COALESCE(SUM(x.defuncion), 0), "
        f"COALESCE(SUM({mismatched}), 0) "
        "FROM runs r LEFT JOIN results x ON x.run_id = r.run_id WHERE r.run_id = ? GROUP BY r.run_id",
        (run_id,)).fetchone()
    if row is None:
        raise PadronError(f"no run {run_id} in the results database")
    keys = ("run_id", "started_at", "finished_at", "padron", "padron_total", "endpoint", "stored", *CATEGORIES,
            "bajas", "deceased", "mismatched")
    return dict(zip(keys, row, strict=True))


# ---------------------------------------------------------------- SAT: opinión de cumplimiento by RFC

def read_rfcs(path: str) -> dict:
    """The RFCs whose opinión de cumplimiento is consulted (CSV, UTF-8, header with `rfc` and optionally `curp`),
    as read_padron returns
    records: malformed RFCs and repeated RFCs are prechecked (never sent)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PadronError(f"cannot read the RFC file {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PadronError(f"the RFC file {path} is not UTF-8: byte 0x{data[e.start]:02X}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    if "rfc" not in header:
        raise PadronError(f"the RFC file {path} lacks the column rfc; its header is {','.join(header)!s}")
    i_rfc, i_curp = header.index("rfc"), header.index("curp") if "curp" in header else None
    records, seen, duplicates = [], {}, {}
    for row_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        rfc = (row[i_rfc] if i_rfc < len(row) else "").strip().upper()
        curp = (row[i_curp].strip().upper() if i_curp is not None and i_curp < len(row) else "") or None
        precheck = _precheck(rfc, row_no, rfc_problem(rfc), seen, duplicates)
        records.append({"row_no": row_no, "rfc": rfc, "curp": curp, "precheck": precheck})
    if not records:
        raise PadronError(f"the RFC file {path} has no records")
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "records": records,
            "duplicates": duplicates}


def _sat_result(rec: dict, now: dt.datetime, category: str, attempts: int = 0, opinion: str | None = None,
                error: str | None = None) -> dict:
    return {"row_no": rec["row_no"], "rfc": rec["rfc"], "curp": rec["curp"],
            "consulted_at": now.isoformat(timespec="seconds"), "attempts": attempts, "category": category,
            "opinion": opinion, "error": error, "revisado": int(category != "error")}


def consult_rfc(rec: dict, conn: dict, retries: int = 3, backoff: float = 0.5, stop=None) -> dict:
    """One RFC's opinión de cumplimiento, with the CURP batch's retry rules."""
    attempt = 0
    while True:
        attempt += 1
        if conn.get("limiter"):
            conn["limiter"].acquire()
        try:
            answer = consult(RFC_OPINION, conn["endpoint"], rfc=rec["rfc"], ca_path=conn.get("ca_path"),
                             client_cert=conn.get("client_cert"), client_key=conn.get("client_key"),
                             timeout=conn.get("timeout", 10), base_path=conn.get("base_path"), name=conn.get("name"))
            return _sat_result(rec, _now(), "answered", attempt, answer["opinion"])
        except ConsultaError as e:
            if e.kind == "http_status" and e.result.get("http_status") == 400:
                return _sat_result(rec, _now(), "malformed", attempt, error=str(e))  # SAT's verdict on the RFC
            if e.kind in FATAL:
                raise PadronError(f"batch stopped: {e}") from None
            if _retryable(e) and attempt <= retries and not (stop and stop.is_set()):
                time.sleep(backoff * 2 ** (attempt - 1))
                continue
            return _sat_result(rec, _now(), "error", attempt, error=f"{e.kind}: {e}")


def sat_summary(db, run_id: str) -> dict:
    """Counts of one RFC run by category and opinion."""
    from ansible.module_utils.consulta import OPINIONS

    sums = ", ".join([*(f"COALESCE(SUM({_n(db, f'x.category = {c!r}')}), 0)" for c in SAT_CATEGORIES),
                      *(f"COALESCE(SUM({_n(db, f'x.opinion = {o!r}')}), 0)" for o in OPINIONS)])
    row = db.execute(
        "SELECT r.run_id, r.started_at, r.finished_at, r.padron, r.padron_total, r.endpoint, COUNT(x.row_no), "  # noqa: S608
        f"{sums} FROM sat_runs r LEFT JOIN sat_results x ON x.run_id = r.run_id WHERE r.run_id = ? "
        "GROUP BY r.run_id", (run_id,)).fetchone()
    if row is None:
        raise PadronError(f"no RFC run {run_id} in the results database")
    keys = ("run_id", "started_at", "finished_at", "padron", "padron_total", "endpoint", "stored", *SAT_CATEGORIES)
    out = dict(zip(keys, row[:len(keys)], strict=True))
    out["opinions"] = dict(zip(OPINIONS, row[len(keys):], strict=True))
    return out


def run_rfc_batch(rfc_path: str, db_path: str, endpoint: str, *, ca_path: str | None = None,
                  client_cert: str | None = None, client_key: str | None = None, timeout: float = 10,
                  concurrency: int = 8, retries: int = 3, backoff: float = 0.5, run_id: str | None = None,
                  resume: bool = True, slice_no: int = 1, slices: int = 1, rate_limit: float | None = None,
                  provider: str | None = None, base_path: str = "", name: str | None = None) -> dict:
    """Consult the opinión de cumplimiento of every RFC of the slice without a committed result in the run (the
    rfc_opinion strategy; `provider`: the registry name recorded with the run)."""
    _check_options(concurrency, retries, backoff, slice_no, slices, rate_limit, resume, run_id)
    rfcs = read_rfcs(rfc_path)
    return _run(RFC_BATCH, rfcs, db_path, endpoint,
                {"ca_path": ca_path, "client_cert": client_cert, "client_key": client_key, "timeout": timeout,
                 "base_path": base_path, "name": name},
                concurrency, retries, backoff, run_id, resume, slice_no, slices, rate_limit, provider)


CURP_BATCH = _Service(CURP_SOAP, "runs", "results", RESULT_COLUMNS, consult_record,
                      lambda r, now: _result(r, now, r["precheck"]), run_summary)
RFC_BATCH = _Service(RFC_OPINION, "sat_runs", "sat_results", SAT_COLUMNS, consult_rfc,
                     lambda r, now: _sat_result(r, now, r["precheck"]), sat_summary)
BATCHES = {b.name: b for b in (CURP_BATCH, RFC_BATCH)}


def _batch(strategy: str) -> _Service:
    try:
        return BATCHES[strategy]
    except KeyError:
        raise PadronError(f"no padrón batch speaks the consultation strategy {strategy!r}; the batches are "
                          f"{', '.join(BATCHES)}") from None


def _has_column(db, table: str, column: str) -> bool:
    if db.flavour == "postgresql":
        return db.execute("SELECT 1 FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                          (table, column)).fetchone() is not None
    return column in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def consulted_provider(providers, provider: str | None = None, strategy: str | None = None):
    """The registry provider a batch consults: `provider` by name (its consultation strategy must be one a batch
    speaks, and `strategy` if given), else the registry's first provider whose strategy is `strategy`
    (curp_soap when neither is given). Raises PadronError naming the registry's candidates."""
    from ansible.module_utils.providers import ProviderError, registry

    try:
        reg = registry(providers)
        if provider:
            chosen = reg.get(provider)
            spoken = chosen.consultation.get("strategy")
            if spoken not in BATCHES or (strategy and spoken != strategy):
                raise PadronError(f"provider {provider!r} consults with strategy {spoken!r}; a padrón batch "
                                  f"needs {strategy or ' or '.join(BATCHES)}")
            return chosen
        strategy = strategy or CURP_SOAP
        _batch(strategy)
        for candidate in reg:
            if candidate.consultation.get("strategy") == strategy:
                return candidate
    except ProviderError as e:
        raise PadronError(str(e)) from None
    raise PadronError(f"no provider of the registry (procedure_providers: {', '.join(reg.names())}) consults with "
                      f"strategy {strategy}; give one a consultation {{strategy: {strategy}}} or name the provider")
