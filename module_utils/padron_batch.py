"""Padrón consultation batch: check a producers' padrón file, consult each CURP at RENAPO, keep every result.

Pure code (stdlib + the project's consulta module): no Ansible import.

Padrón file: CSV, UTF-8 (a BOM is accepted), comma-separated, one header row; extra columns are ignored.
  curp              the producer's CURP (18 characters, upper case)
  nombres           given name(s) as the padrón holds them
  apellido1         first surname
  apellido2         second surname (may be empty)
  fecha_nacimiento  birth date, YYYY-MM-DD (DD/MM/YYYY is accepted too)
  sexo              H or M
  entidad           state of birth, two-letter CURP code (AS, BC, ... NE); empty = taken from the CURP
A file that cannot be read as such (empty, not UTF-8, a column missing, no records) raises PadronError naming the
defect. A record with a malformed CURP (structure or check digit) or a CURP already listed in an earlier record is
stored as an inconsistency without calling RENAPO.

Results (SQLite, one file): table `runs` (one row per batch run) and table `results` (one row per padrón record
per run: consulted_at, status_oper, status_curp, TipoError/CodigoError, mismatch_* flags, category, age, entidad).
Categories: found, not_found, malformed, duplicate, error (gave up after retries; retried when the run is resumed).
The 0/1 flags revisado (a definitive answer), exitoso, inconsistente (DESIGN §7), baja (inactive statusCurp) and
defuncion (BD) are set when a result is stored, so the KPIs are plain SUMs over millions of rows.
Checkpoint: results are committed as they arrive, a few at a time; a resumed run consults only the records that
have no committed result, so a CURP whose result is committed is never consulted again in that run.
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
import unicodedata
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from ansible.module_utils.consulta import STATUS_INACTIVE, ConsultaError, consult, curp_problem

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
"""
RESULT_COLUMNS = ("run_id", "row_no", "curp", "consulted_at", "attempts", "category", "status_oper", "status_curp",
                  "tipo_error", "codigo_error", "mismatch_nombre", "mismatch_fecha_nacimiento", "mismatch_sexo",
                  "edad", "entidad", "error", "revisado", "exitoso", "inconsistente", "baja", "defuncion")
_INSERT = "INSERT OR REPLACE INTO results (%s) VALUES (%s)" % (  # noqa: S608 - constant column names
    ", ".join(RESULT_COLUMNS), ", ".join("?" * len(RESULT_COLUMNS)))


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
    records, seen, duplicates = [], {}, {}
    for row_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        rec = {c: (row[i].strip() if i < len(row) else "") for c, i in index.items()}
        curp = rec["curp"].upper()
        rec["curp"] = curp
        if curp_problem(curp):
            precheck = "malformed"
        elif curp in seen:
            precheck = "duplicate"
            duplicates.setdefault(curp, [seen[curp]]).append(row_no)
        else:
            precheck, seen[curp] = None, row_no
        records.append({"row_no": row_no, "curp": curp, "fields": rec, "precheck": precheck})
    if not records:
        raise PadronError(f"the padrón file {path} has a header but no records")
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "records": records,
            "duplicates": duplicates}


def _fold(text: str) -> str:
    """Upper case, no accents, single spaces: RENAPO writes names without accents."""
    text = unicodedata.normalize("NFKD", text or "")
    return " ".join("".join(c for c in text if not unicodedata.combining(c)).upper().split())


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
    entidad = (fields["entidad"] or rec["curp"][11:13]).upper() or None
    status = answer.get("status_curp") or None
    flags = {"revisado": int(category != "error"), "exitoso": int(category == "found"),
             "inconsistente": int(category in ("not_found", "malformed", "duplicate") or any(mismatch.values())),
             "baja": int(status in STATUS_INACTIVE), "defuncion": int(status == "BD")}
    return {**flags, "row_no": rec["row_no"], "curp": rec["curp"], "consulted_at": now.isoformat(timespec="seconds"),
            "attempts": attempts, "category": category, "status_oper": answer.get("status_oper"),
            "status_curp": status, "tipo_error": answer.get("tipo_error") or None,
            "codigo_error": answer.get("codigo_error") or None,
            **{f"mismatch_{f}": int(mismatch.get(f, False)) for f in MISMATCH_FIELDS},
            "edad": _age(born, now.date()), "entidad": entidad, "error": error}


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
        try:
            answer = consult("renapo", conn["endpoint"], curp=rec["curp"], usuario=conn["usuario"],
                             password=conn["password"], ca_path=conn.get("ca_path"), timeout=conn.get("timeout", 10))
            return _result(rec, _now(), "found", attempt, answer)
        except ConsultaError as e:
            codes = (e.result.get("tipo_error"), e.result.get("codigo_error"))
            if e.kind == "no_exitoso" and codes == ("01", "06"):
                return _result(rec, _now(), "not_found", attempt, e.result)
            if e.kind == "no_exitoso" and codes == ("01", "03"):
                return _result(rec, _now(), "malformed", attempt, e.result)
            if e.kind in FATAL or (e.kind == "no_exitoso" and codes == ("02", "01")):
                raise PadronError(f"batch stopped: {e}") from None
            if _retryable(e) and attempt <= retries and not (stop and stop.is_set()):
                time.sleep(backoff * 2 ** (attempt - 1))
                continue
            return _result(rec, _now(), "error", attempt, e.result, f"{e.kind}: {e}")


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


# ---------------------------------------------------------------- the results store and the run

def open_results(path: str, create: bool = True) -> sqlite3.Connection:
    """The results database (WAL: a report may read while a batch writes)."""
    if not create and not os.path.exists(path):
        raise PadronError(f"the results database {path} does not exist; run the padrón consultation first")
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    if create:
        db.executescript(SCHEMA)
    return db


def _store(db: sqlite3.Connection, run_id: str, results: list[dict]) -> None:
    if results:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, [tuple({**r, "run_id": run_id}[c] for c in RESULT_COLUMNS) for r in results])
        db.execute("COMMIT")


def _pick_run(db: sqlite3.Connection, padron: dict, endpoint: str, run_id: str | None, resume: bool) -> tuple:
    """(run_id, resumed): the named run, else the unfinished run of the same padrón, else a new one."""
    if run_id:
        row = db.execute("SELECT padron_sha256 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row and row[0] != padron["sha256"]:
            raise PadronError(f"run {run_id} was made over another padrón file (sha256 {row[0][:12]}...); "
                              "start a new run for this one")
        if row:
            return run_id, True
    elif resume:
        row = db.execute("SELECT run_id FROM runs WHERE finished_at IS NULL AND padron_sha256 = ? "
                         "ORDER BY started_at DESC LIMIT 1", (padron["sha256"],)).fetchone()
        if row:
            return row[0], True
    now = _now()
    if not run_id:
        run_id = now.strftime("%Y%m%dT%H%M%S")
        taken = {r[0] for r in db.execute("SELECT run_id FROM runs WHERE run_id LIKE ?", (run_id + "%",))}
        run_id += "" if run_id not in taken else f"-{len(taken) + 1}"
    db.execute("INSERT INTO runs (run_id, started_at, padron, padron_sha256, padron_total, endpoint) "
               "VALUES (?, ?, ?, ?, ?, ?)", (run_id, now.isoformat(timespec="seconds"), padron["path"],
                                             padron["sha256"], len(padron["records"]), endpoint))
    return run_id, False


def plan(db_path: str, padron: dict, run_id: str | None = None, resume: bool = True) -> dict:
    """What a run would do, without writing: the run it would use and how many records it would consult."""
    done, run = set(), None
    if os.path.exists(db_path):
        db = open_results(db_path, create=False)
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
                q = ("SELECT run_id FROM runs WHERE run_id = ?", (run_id,)) if run_id else (
                    "SELECT run_id FROM runs WHERE finished_at IS NULL AND padron_sha256 = ? "
                    "ORDER BY started_at DESC LIMIT 1", (padron["sha256"],))
                row = db.execute(*q).fetchone() if (run_id or resume) else None
                run = row[0] if row else None
                if run:
                    done = {r[0] for r in db.execute(
                        "SELECT row_no FROM results WHERE run_id = ? AND category != 'error'", (run,))}
        finally:
            db.close()
    todo = [r for r in padron["records"] if r["row_no"] not in done]
    prechecked = sum(1 for r in todo if r["precheck"])
    return {"run_id": run or run_id, "resumed": run is not None, "already_done": len(done),
            "to_consult": len(todo) - prechecked, "prechecked": prechecked}


def run_batch(padron_path: str, db_path: str, endpoint: str, *, usuario: str, password: str,
              ca_path: str | None = None, timeout: float = 10, concurrency: int = 8, retries: int = 3,
              backoff: float = 0.5, run_id: str | None = None, resume: bool = True) -> dict:
    """Consult every padrón record without a committed result in the run; returns the run's summary."""
    if concurrency < 1 or retries < 0 or backoff < 0:
        raise PadronError("concurrency must be >= 1, retries and backoff >= 0")
    padron = read_padron(padron_path)
    db = open_results(db_path)
    try:
        run_id, resumed = _pick_run(db, padron, endpoint, run_id, resume)
        done = {r[0] for r in db.execute("SELECT row_no FROM results WHERE run_id = ? AND category != 'error'",
                                         (run_id,))}
        todo = [r for r in padron["records"] if r["row_no"] not in done]
        now = _now()
        _store(db, run_id, [_result(r, now, r["precheck"]) for r in todo if r["precheck"]])
        consulted = _consult_all(db, run_id, [r for r in todo if not r["precheck"]],
                                 {"endpoint": endpoint, "usuario": usuario, "password": password,
                                  "ca_path": ca_path, "timeout": timeout},
                                 concurrency, retries, backoff)
        db.execute("UPDATE runs SET finished_at = ? WHERE run_id = ? AND finished_at IS NULL",
                   (_now().isoformat(timespec="seconds"), run_id))
        summary = run_summary(db, run_id)
    finally:
        db.close()
    dups = padron["duplicates"]
    return {**summary, "resumed": resumed, "already_stored": len(done), "consulted": consulted,
            "duplicated_curps": len(dups), "duplicates": dict(list(dups.items())[:20])}


def _consult_all(db, run_id, todo, conn, concurrency, retries, backoff) -> int:
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
        sent = _drive(db, run_id, queue, conn, concurrency, retries, backoff, stop, interrupted)
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


def _drive(db, run_id, queue, conn, concurrency, retries, backoff, stop, interrupted) -> int:
    pending, fatal, sent = set(), None, 0
    with ThreadPoolExecutor(concurrency, thread_name_prefix="padron") as pool:
        while True:
            while not stop.is_set() and not interrupted.is_set() and len(pending) < concurrency:
                rec = next(queue, None)
                if rec is None:
                    break
                pending.add(pool.submit(consult_record, rec, conn, retries, backoff, stop))
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
            _store(db, run_id, ready)
    if fatal:
        raise fatal
    return sent


def run_summary(db: sqlite3.Connection, run_id: str) -> dict:
    """Counts of one run by category, plus bajas, deceased and mismatched records."""
    row = db.execute(
        "SELECT r.run_id, r.started_at, r.finished_at, r.padron, r.padron_total, r.endpoint, COUNT(x.row_no), "
        + ", ".join(f"COALESCE(SUM(x.category = '{c}'), 0)" for c in CATEGORIES) + ", "
        "COALESCE(SUM(x.baja), 0), COALESCE(SUM(x.defuncion), 0), "
        "COALESCE(SUM(x.mismatch_nombre OR x.mismatch_fecha_nacimiento OR x.mismatch_sexo), 0) "
        "FROM runs r LEFT JOIN results x ON x.run_id = r.run_id WHERE r.run_id = ? GROUP BY r.run_id",
        (run_id,)).fetchone()
    if row is None:
        raise PadronError(f"no run {run_id} in the results database")
    keys = ("run_id", "started_at", "finished_at", "padron", "padron_total", "endpoint", "stored", *CATEGORIES,
            "bajas", "deceased", "mismatched")
    return dict(zip(keys, row, strict=True))
