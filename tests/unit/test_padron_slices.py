"""The padrón batch scaled out as AWX job slices (issue 14, item 5): a padrón of 20,000 CURPs consulted by 2
concurrent slices (two processes, as two execution nodes would) on a real PostgreSQL results store, with a rate limit
they share through the store, against a real local SOAP server (RENAPO's contract) that counts every request.

Shown: every well-formed CURP consulted exactly once (counted at the server), the measured rate within 10 % of the
limit, the sliced run one run finished by its last slice, and its KPIs equal to one unsliced run's (on SQLite)."""
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible.module_utils import kpi
from ansible.module_utils.consulta import curp_check_digit, curp_problem
from ansible.module_utils.padron_batch import COLUMNS, PadronError, plan, read_padron, run_batch, slice_of
from sim import renapo

pytest_plugins = ["tests.pg"]  # pg_server (session), pg_schema

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 20_000
# Measured on the dev container: one batch process sends ~650 requests/s to this server unthrottled (~1,000 from
# a process of its own); 800/s (400 a slice) keeps the sliced run at 25 s with headroom on a slower machine.
RATE = 800
STATES = "AS BC BS CC CL CM CS CH DF DG GT GR HG JC MC MN MS NT NL OC PL QT QR SP SL SR TC TS TL VZ YN ZS".split()
LETTERS = "BCDFGHJKLMNPRSTVXZ"


def synthetic_padron(total: int, seed: int = 14) -> tuple[str, dict]:
    """(padrón CSV text, RENAPO's records): valid, unique CURPs; ~8 % unknown to RENAPO, ~4 % deceased (BD),
    ~3 % with another name at RENAPO, plus a few malformed and repeated rows (never sent)."""
    rng = random.Random(seed)
    rows, db, seen = [], {}, set()
    while len(rows) < total - 40:
        born = f"{rng.randint(40, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        sexo, state = rng.choice("HM"), rng.choice(STATES)
        body = ("".join(rng.choice(LETTERS) for _ in range(4)) + born + sexo + state
                + "".join(rng.choice(LETTERS) for _ in range(3)) + str(rng.randint(0, 9)))
        curp = body + curp_check_digit(body)
        if curp in seen or curp_problem(curp):
            continue
        seen.add(curp)
        fecha = f"19{born[:2]}-{born[2:4]}-{born[4:]}"
        rows.append(f"{curp},JUAN,PEREZ,LOPEZ,{fecha},{sexo},{state}")
        draw = rng.random()
        if draw < 0.08:
            continue  # not found (01/06)
        status = "BD" if draw < 0.12 else rng.choice(["AN", "AN", "AN", "AH", "BAP"])
        nombre = "PEDRO" if draw > 0.97 else "JUAN"
        db[curp] = {"CURP": curp, "nombres": nombre, "apellido1": "PEREZ", "apellido2": "LOPEZ",
                    "fechNac": f"{born[4:]}/{born[2:4]}/19{born[:2]}", "sexo": sexo, "statusCurp": status}
    good = [r.split(",", 1)[0] for r in rows]
    rows += [f"{c[:17]}{(int(c[17]) + 1) % 10},X,Y,Z,1980-01-01,H,DF" for c in good[:20]]  # wrong check digit
    rows += [f"{c},JUAN,PEREZ,LOPEZ,1980-01-01,H," for c in good[100:120]]  # listed twice
    rng.shuffle(rows)
    return ",".join(COLUMNS) + "\n" + "\n".join(rows) + "\n", db


class Renapo(ThreadingHTTPServer):
    """RENAPO's SOAP contract (the lab simulator's parser and answers); counts each CURP and times each request."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, db):
        super().__init__(("127.0.0.1", 0), Handler)
        self.db, self.calls, self.times, self.lock = db, Counter(), [], threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reset(self):
        with self.lock:
            self.calls, self.times = Counter(), []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_POST(self):
        datos = renapo.parse_request(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.calls[datos["cveCurp"]] += 1
            self.server.times.append(time.monotonic())
        body = renapo.envelope(renapo.curpstruct(*renapo.consultar(self.server.db, datos)))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def padron(tmp_path_factory):
    text, db = synthetic_padron(TOTAL)
    path = tmp_path_factory.mktemp("padron") / "padron.csv"
    path.write_text(text, encoding="utf-8")
    return str(path), db


@pytest.fixture
def server(padron):
    srv = Renapo(padron[1])
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


SLICE = """
import json, sys
import ansible.module_utils
ansible.module_utils.__path__.append({root!r} + "/module_utils")
from ansible.module_utils.padron_batch import run_batch
kw = json.loads(sys.argv[1])
print(json.dumps(run_batch(kw.pop("padron"), kw.pop("dsn"), kw.pop("endpoint"), **kw)))
"""


def start_slice(padron_path, dsn, url, slice_no=1, slices=1, rate=None):
    """One batch process, as one AWX job slice on its execution node would run it."""
    kw = {"padron": padron_path, "dsn": dsn, "endpoint": url, "usuario": renapo.LAB_USUARIO,
          "password": renapo.LAB_PASSWORD, "concurrency": 16, "slice_no": slice_no, "slices": slices,
          "rate_limit": rate, "backoff": 0.05}
    return subprocess.Popen([sys.executable, "-c", SLICE.format(root=str(ROOT)), json.dumps(kw)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def comparable(k: dict) -> dict:
    """The KPIs and breakdowns of the latest run, without what names or dates the run."""
    latest = k["ultima_corrida"]
    return {"cobertura": latest["cobertura"], "indicadores": k["indicadores"],
            **{key: k[key] for key in ("estatus_curp", "bajas_por_estatus", "mortalidad_por_edad",
                                       "mortalidad_por_entidad", "inconsistencias_por_causa")}}


def test_slices_partition_the_padron_stably(padron):
    records = read_padron(padron[0])["records"]
    for slices in (2, 3, 7):
        parts = [[r["curp"] for r in records if slice_of(r["curp"], slices) == n] for n in range(1, slices + 1)]
        assert sum(len(p) for p in parts) == len(records)  # none skipped
        assert not set.intersection(*map(set, parts))  # none in two slices
        assert all(len(p) > len(records) / slices * 0.9 for p in parts)  # even enough to spread the load
    assert slice_of("GOHJ800101HDFNRN09", 2) == slice_of("GOHJ800101HDFNRN09", 2)  # no per-process salt
    assert [plan("/nonexistent/r.db", read_padron(padron[0]), slice_no=n, slices=2)["to_consult"]
            + plan("/nonexistent/r.db", read_padron(padron[0]), slice_no=n, slices=2)["prechecked"]
            for n in (1, 2)] == [sum(1 for r in records if slice_of(r["curp"], 2) == n) for n in (1, 2)]


def test_bad_slice_options_are_refused(tmp_path, padron):
    for kw, words in (({"slice_no": 3, "slices": 2}, "slice must be between 1 and slices"),
                      ({"slice_no": 0, "slices": 2}, "slice must be between 1 and slices"),
                      ({"rate_limit": 0}, "rate_limit must be"),
                      ({"slice_no": 1, "slices": 2, "resume": False}, "every slice must join the same run")):
        with pytest.raises(PadronError, match=words):
            run_batch(padron[0], str(tmp_path / "r.db"), "http://127.0.0.1:9", usuario="u", password="p", **kw)


def test_two_concurrent_slices_on_postgresql_consult_each_curp_once_at_the_shared_rate(pg_schema, tmp_path,
                                                                                       padron, server):
    padron_path, _ = padron
    records = read_padron(padron_path)["records"]
    sendable = {r["curp"] for r in records if not r["precheck"]}
    t0 = time.monotonic()
    procs = [start_slice(padron_path, pg_schema, server.url, n, 2, RATE) for n in (1, 2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out))
    sliced_seconds = time.monotonic() - t0

    # Every well-formed CURP exactly once, counted at the server; nothing malformed or repeated was sent.
    assert set(server.calls) == sendable and set(server.calls.values()) == {1}
    assert sum(o["consulted"] for o in outs) == len(sendable)
    # One run for both slices, finished by the last one, holding every record of the padrón.
    assert outs[0]["run_id"] == outs[1]["run_id"]
    last = max(outs, key=lambda o: o["finished_at"] or "")
    assert last["finished_at"] and last["stored"] == TOTAL and last["error"] == 0
    # The measured rate (at the server, first to last request, both slices together) within 10 % of the limit.
    times = sorted(server.times)
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert abs(rate - RATE) <= 0.1 * RATE, f"measured {rate:.0f} req/s against a limit of {RATE}"
    # The same padrón in one unsliced run (SQLite, no limit): the same KPIs, read from each store.
    server.reset()
    proc = start_slice(padron_path, str(tmp_path / "single.db"), server.url)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    single = json.loads(out)
    assert set(server.calls) == sendable and single["stored"] == TOTAL and single["slices"] == 1
    sliced_kpis, single_kpis = kpi.padron_kpis(pg_schema), kpi.padron_kpis(str(tmp_path / "single.db"))
    assert comparable(sliced_kpis) == comparable(single_kpis)
    assert sliced_kpis["indicadores"]["mortalidad"]["numerador"] > 0  # the comparison compared something
    print(f"2 slices: {len(times)} requests in {times[-1] - times[0]:.1f} s = {rate:.0f} req/s "
          f"(limit {RATE}); wall {sliced_seconds:.1f} s")


def test_a_run_finishes_with_its_last_slice_and_keeps_its_slice_count(store_dsn, tmp_path, server):
    """On both backends: slice 1 alone leaves the run open, slice 2 joins and closes it, each CURP sent once at no
    more than the limit (here SQLite's limiter too), and another slice count for the same run is refused."""
    text, db = synthetic_padron(300, seed=7)
    padron_path = str(tmp_path / "small.csv")
    Path(padron_path).write_text(text, encoding="utf-8")
    server.db = db
    kw = {"usuario": renapo.LAB_USUARIO, "password": renapo.LAB_PASSWORD, "concurrency": 8, "slices": 2,
          "rate_limit": 200}
    first = run_batch(padron_path, store_dsn, server.url, slice_no=1, **kw)
    assert first["finished_at"] is None and first["stored"] == first["slice_records"] < 300
    with pytest.raises(PadronError, match="is being made in 2 slices, not 3"):
        run_batch(padron_path, store_dsn, server.url, **{**kw, "slice_no": 3, "slices": 3})
    second = run_batch(padron_path, store_dsn, server.url, slice_no=2, **kw)
    assert second["run_id"] == first["run_id"] and second["resumed"]
    assert second["finished_at"] and second["stored"] == 300
    sent = {r["curp"] for r in read_padron(padron_path)["records"] if not r["precheck"]}
    assert set(server.calls) == sent and set(server.calls.values()) == {1}
    times = sorted(server.times)
    assert (len(times) - 1) / (times[-1] - times[0]) <= 200 * 1.1
