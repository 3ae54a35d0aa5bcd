#!/usr/bin/env python3
"""Ticket store throughput on SQLite: transitions per second, one process and two processes on one file.

Usage: .venv/bin/python benchmarks/bench_ticket_store.py [--tickets 100]
Each ticket is opened and walked through received -> folio_issued -> ... -> closed (7 transitions).
"""
import argparse
import importlib
import multiprocessing
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parents[1]
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))  # as the root conftest does for the tests
open_store = importlib.import_module("ansible.module_utils.ticket_store").open_store

NOW = datetime(2026, 1, 30, 10, 0, tzinfo=timezone(timedelta(hours=-6)))
WALK = [("folio_issued", {}), ("requester_validated", {}), ("certificate_received", {"serial": "0A1B"}),
        ("deploying", {"hosts": ["web01", "web02"]}), ("deployed", {"verified_hosts": ["web01", "web02"]}),
        ("notified", {}), ("closed", {})]


def walk(path, worker, tickets, start=None):
    if start is not None:
        start.wait()
    with open_store(path) as store:
        for i in range(tickets):
            ticket_id = store.create("renapo" if i % 2 else "sat", actor=f"bench{worker}", now=NOW).ticket["id"]
            for state, data in WALK:
                store.transition(ticket_id, state, actor=f"bench{worker}", now=NOW, **data)


def run(processes, tickets, directory):
    path = str(Path(directory) / f"bench-{processes}.db")
    open_store(path).close()  # schema created outside the timed part
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=walk, args=(path, w, tickets, start)) for w in range(processes)]
    for p in procs:
        p.start()
    began = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - began
    if any(p.exitcode for p in procs):
        raise SystemExit("a worker failed")
    with open_store(path) as store:
        folios = sorted(t["folio"] for t in store.find())
        rows = store._query("SELECT COUNT(*) AS n FROM audit_log")[0]["n"]
    writes = processes * tickets * (1 + len(WALK))
    assert rows == writes and len(set(folios)) == len(folios)
    return writes, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100, help="tickets walked per process")
    parser.add_argument("--dir", help="directory for the SQLite files (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        print(f"SQLite ticket store, {args.tickets} tickets per process, "
              f"{1 + len(WALK)} writes each (open + {len(WALK)} transitions), synchronous=FULL, WAL; "
              f"files in {directory}")
        for processes in (1, 2):
            writes, elapsed = run(processes, args.tickets, directory)
            print(f"  {processes} process(es): {writes} writes in {elapsed:.2f} s = {writes / elapsed:,.0f} "
                  f"transitions/s ({elapsed / writes * 1000:.2f} ms each)")


if __name__ == "__main__":
    main()
