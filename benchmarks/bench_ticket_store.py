#!/usr/bin/env python3
"""Ticket store throughput, SQLite and PostgreSQL side by side: transitions per second, 1, 2 and 4 processes.

Usage: .venv/bin/python benchmarks/bench_ticket_store.py [--tickets 100] [--processes 1 2 4] [--pg-dsn URL]
Each ticket is opened and walked through received -> folio_issued -> ... -> closed (7 transitions). SQLite runs
with synchronous=FULL and WAL; PostgreSQL is a throw-away local server with its durable defaults (fsync on,
synchronous_commit on), started here unless --pg-dsn names a server (each run then uses a fresh schema there).
"""
import argparse
import importlib
import multiprocessing
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parents[1]
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))  # as the root conftest does for the tests
sys.path.insert(0, str(ROOT))
open_store = importlib.import_module("ansible.module_utils.ticket_store").open_store
pg = importlib.import_module("tests.pg")
PROVIDERS = importlib.import_module("tests.providers").lab_providers()
SERVICES = list(PROVIDERS)[:2]

NOW = datetime(2026, 1, 30, 10, 0, tzinfo=timezone(timedelta(hours=-6)))
WALK = [("folio_issued", {}), ("requester_validated", {}), ("certificate_received", {"serial": "0A1B"}),
        ("deploying", {"hosts": ["web01", "web02"]}), ("deployed", {"verified_hosts": ["web01", "web02"]}),
        ("notified", {}), ("closed", {})]


def walk(dsn, worker, tickets, start=None):
    if start is not None:
        start.wait()
    with open_store(dsn, providers=PROVIDERS) as store:
        for i in range(tickets):
            ticket_id = store.create(SERVICES[i % 2], actor=f"bench{worker}", now=NOW).ticket["id"]
            for state, data in WALK:
                store.transition(ticket_id, state, actor=f"bench{worker}", now=NOW, **data)


def run(dsn, processes, tickets):
    open_store(dsn, providers=PROVIDERS).close()  # schema created outside the timed part
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=walk, args=(dsn, w, tickets, start)) for w in range(processes)]
    for p in procs:
        p.start()
    began = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - began
    if any(p.exitcode for p in procs):
        raise SystemExit("a worker failed")
    with open_store(dsn) as store:
        folios = sorted(t["folio"] for t in store.find())
        rows = store._query("SELECT COUNT(*) AS n FROM audit_log")[0]["n"]
    writes = processes * tickets * (1 + len(WALK))
    assert rows == writes and len(set(folios)) == len(folios) == processes * tickets
    return writes / elapsed


def pg_schemas(admin_dsn):
    """Yield DSNs of fresh schemas on the server `admin_dsn` names."""
    import psycopg
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while True:
            name = pg.new_schema_name()
            conn.execute(f'CREATE SCHEMA "{name}"')
            yield admin_dsn + ("&" if "?" in admin_dsn else "?") + f"options=-csearch_path%3D{name}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100, help="tickets walked per process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4], help="concurrent writer processes")
    parser.add_argument("--pg-dsn", help="an existing PostgreSQL server (default: start a throw-away one)")
    parser.add_argument("--dir", help="directory for the SQLite files (default: a temporary one)")
    args = parser.parse_args()
    server = None
    if not args.pg_dsn and pg.find_bindir():
        server = pg.PostgresServer(pg.find_bindir(), durable=True).start()
    try:
        schemas = pg_schemas(args.pg_dsn or server.dsn()) if (args.pg_dsn or server) else None
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            print(f"Ticket store, {args.tickets} tickets per process, {1 + len(WALK)} writes each "
                  f"(open + {len(WALK)} transitions); SQLite synchronous=FULL + WAL in {directory}; PostgreSQL "
                  + ("at --pg-dsn" if args.pg_dsn else "local, fsync on" if server else "not installed"))
            print(f"  {'processes':>9}  {'SQLite tr/s':>12}  {'PostgreSQL tr/s':>16}")
            for processes in args.processes:
                sqlite = run(str(Path(directory) / f"bench-{processes}.db"), processes, args.tickets)
                postgres = f"{run(next(schemas), processes, args.tickets):,.0f}" if schemas else "n/a"
                print(f"  {processes:>9}  {sqlite:>12,.0f}  {postgres:>16}")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
