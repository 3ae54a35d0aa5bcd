"""Padrón batch and KPI report end to end on the RENAPO simulator (in-process, ephemeral port, temporary state):
the batch is killed with SIGKILL half-way and resumed (requests counted at the simulator's /__lab/stats), the KPIs
equal the generator's ground truth, bad padrón files fail clearly through the module, both playbooks run, and the
report is opened in headless Chromium."""
import datetime as dt
import json
import os
import re
import shutil
import signal
import sqlite3
import ssl
import struct
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pki
import pytest
from ansible.module_utils.consulta import STATUS_INACTIVE
from ansible.module_utils.kpi import AGE_BANDS, compute
from ansible.module_utils.ticket_store import open_store
from sim import padron, renapo, services

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
CONCURRENCY = 2
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CDMX = dt.timezone(dt.timedelta(hours=-6))


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    state = tmp_path_factory.mktemp("reportlab")
    svc = services.start(state, renapo=("127.0.0.1", 0), sat=None, smtp=None)
    svc.url = f"https://127.0.0.1:{svc.renapo_port}"
    svc.anchor = str(pki.ensure(state)["renapo_anchor"])
    svc.padron = str(padron.ensure(state)["padron"])
    yield svc
    svc.stop()


def soap_requests(svc) -> int:
    ctx = ssl.create_default_context(cafile=svc.anchor)
    with urllib.request.urlopen(svc.url + "/__lab/stats", context=ctx, timeout=10) as r:
        return json.load(r).get("renapo.soap", 0)


def module(svc, check=False, **args) -> subprocess.Popen:
    """`ansible localhost -m padron_consulta` (the module runs in a worker's own session: see kill_tree)."""
    args = {"padron": svc.padron, "results_db": str(svc.state / "padron" / "resultados.db"), "endpoint": svc.url,
            "ca_path": svc.anchor, "usuario": renapo.LAB_USUARIO, "password": renapo.LAB_PASSWORD,
            "concurrency": CONCURRENCY, **args}
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    cmd = [str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-e",
           f"ansible_python_interpreter={BIN / 'python'}", "-m", "padron_consulta", "-a", json.dumps(args)]
    return subprocess.Popen(cmd + (["--check"] if check else []), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants: Ansible's worker calls setsid(), so the module process is out of
    ansible's process group and a killpg would leave the batch running."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return tree


def outcome(proc) -> dict:
    out, _ = proc.communicate(timeout=180)
    data = json.loads(out[out.index("=>") + 2:]) if "=>" in out else {}
    return {"rc": proc.returncode, **data, "output": out}


def committed(db_path, sent_only=False) -> set:
    db = sqlite3.connect(db_path)
    try:
        where = " WHERE category IN ('found', 'not_found')" if sent_only else ""
        return {r[0] for r in db.execute(f"SELECT curp FROM results{where}")}  # noqa: S608
    except sqlite3.OperationalError:
        return set()  # not created yet
    finally:
        db.close()


@pytest.fixture(scope="module")
def killed_and_resumed(sim):
    """A batch killed (SIGKILL: ansible and the module process) once ~40% of the records are committed, rerun."""
    db_path = str(sim.state / "padron" / "resultados.db")
    before = soap_requests(sim)
    proc = module(sim)
    deadline = time.monotonic() + 120
    while len(committed(db_path)) < 400 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    alive = proc.poll() is None
    killed = kill_tree(proc.pid)
    proc.wait(10)
    time.sleep(0.3)  # requests the killed process had in flight reach the simulator or die with it
    at_kill = {"requests": soap_requests(sim) - before, "sent_committed": committed(db_path, sent_only=True),
               "committed": committed(db_path)}
    rerun = outcome(module(sim))
    return {"alive_at_kill": alive, "killed": killed, "at_kill": at_kill, "rerun": rerun, "db": db_path,
            "total_requests": soap_requests(sim) - before}


def test_killed_batch_resumes_without_consulting_a_committed_curp_again(sim, killed_and_resumed):
    k = killed_and_resumed
    assert k["alive_at_kill"] and len(k["killed"]) >= 3, "the batch finished before it could be killed"
    rerun, at_kill = k["rerun"], k["at_kill"]
    assert rerun["rc"] == 0, rerun["output"]
    expected = padron.expected_counts(sim.state)
    sendable = expected["total"] - expected["malformed"]
    assert 400 <= len(at_kill["committed"]) < expected["total"]
    assert rerun["resumed"] and rerun["already_stored"] == len(at_kill["committed"]) and rerun["changed"]
    # The rerun sent exactly the records without a committed answer: none committed before the kill again.
    assert rerun["consulted"] == sendable - len(at_kill["sent_committed"])
    assert k["total_requests"] - at_kill["requests"] == rerun["consulted"]
    # The only repeats are answers in flight at the kill (sent, never committed): at most `concurrency`.
    in_flight = at_kill["requests"] - len(at_kill["sent_committed"])
    assert 0 <= in_flight <= CONCURRENCY
    assert k["total_requests"] == sendable + in_flight
    db = sqlite3.connect(k["db"])
    rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT curp), COUNT(DISTINCT run_id), SUM(category = 'error') "
                      "FROM results").fetchone()
    assert rows == (expected["total"], expected["total"], 1, 0)
    assert db.execute("SELECT finished_at IS NOT NULL FROM runs").fetchone() == (1,)


def test_kpis_equal_the_generators_ground_truth(sim, killed_and_resumed):
    expected = padron.expected_counts(sim.state)
    k = compute(killed_and_resumed["db"])
    total = expected["total"]
    top = k["indicadores"]
    assert top["inconsistencias"] == {"valor": round(100 * expected["inconsistent"] / total, 2),
                                      "numerador": expected["inconsistent"], "denominador": total}
    assert (top["bajas"]["numerador"], top["bajas"]["denominador"]) == (expected["inactive"], total)
    assert (top["mortalidad"]["numerador"], top["mortalidad"]["denominador"]) == (expected["deceased"], total)
    assert (top["poblacion_actualizada"]["numerador"], top["poblacion_actualizada"]["denominador"]) == (
        expected["found"], total)
    assert {b["estatus"]: b["registros"] for b in k["bajas_por_estatus"]} == {
        s: n for s, n in expected["status_curp"].items() if s in STATUS_INACTIVE}
    causes = k["inconsistencias_por_causa"]
    assert {f: causes[f] for f in expected["mismatch"]} == expected["mismatch"]
    assert (causes["no_encontrada"], causes["mal_formada"], causes["duplicada"]) == (
        expected["not_found"], expected["malformed"], 0)
    # Mortality by age band and entidad, recomputed here from the generator's files.
    data, today = padron.load(sim.state), dt.date.today()
    bands, states = {label: [0, 0] for label, _, _ in AGE_BANDS}, {}
    for row in data["padron"]:
        category, _ = padron.classify(row, data["renapo"])
        rec = data["renapo"].get(row["curp"]) if category not in ("MALFORMED", "NOT_FOUND") else None
        born = (dt.datetime.strptime(rec["fechNac"], "%d/%m/%Y").date() if rec
                else dt.date.fromisoformat(row["fecha_nacimiento"]))
        age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        label = next(label for label, lo, hi in AGE_BANDS if lo <= age <= hi)
        for counts in (bands[label], states.setdefault(row["entidad"], [0, 0])):
            counts[0] += 1
            counts[1] += category == "BD"
    assert {b["rango"]: [b["registros"], b["defunciones"]] for b in k["mortalidad_por_edad"]} == bands
    assert {e["entidad"]: [e["registros"], e["defunciones"]] for e in k["mortalidad_por_entidad"]} == states


def test_bad_padron_files_fail_clearly_or_count(sim, tmp_path):
    header = "curp,nombres,apellido1,apellido2,fecha_nacimiento,sexo,entidad\n"
    rows = Path(sim.padron).read_text().splitlines()[1:4]
    files = {"empty": b"", "missing_columns": b"curp,nombres\nX,Y\n",
             "latin1": (header + rows[0] + "\n" + "ÑUÑEZ,JOSÉ,,,,,\n").encode("latin-1"),
             "duplicates": (header + "\n".join([rows[0], rows[1], rows[0], rows[2], rows[1]]) + "\n").encode()}
    for name, data in files.items():
        (tmp_path / f"{name}.csv").write_bytes(data)
    with ThreadPoolExecutor(len(files) + 1) as pool:
        runs = dict(zip([*files, "check_mode"], pool.map(outcome, [
            *(module(sim, padron=str(tmp_path / f"{n}.csv"), results_db=str(tmp_path / f"{n}.db")) for n in files),
            module(sim, check=True, results_db=str(tmp_path / "check.db"))]), strict=True))
    for name, words in (("empty", "is empty"), ("missing_columns", "lacks the column(s) apellido1, apellido2"),
                        ("latin1", "is not UTF-8: byte 0xD1 at line 3")):
        assert runs[name]["rc"] != 0 and words in runs[name]["msg"], runs[name]["output"]
    dup = runs["duplicates"]
    assert dup["rc"] == 0, dup["output"]
    assert (dup["stored"], dup["duplicate"], dup["consulted"], dup["duplicated_curps"]) == (5, 2, 3, 2)
    check = runs["check_mode"]
    assert check["rc"] == 0 and check["consulted"] == 0 and check["would_consult"] == 990, check["output"]
    assert not (tmp_path / "check.db").exists()
    for r in runs.values():
        assert renapo.LAB_PASSWORD not in r["output"]


def _playbook(name, inventory, *extra):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / name),
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def report(sim, killed_and_resumed, tmp_path_factory):
    """A second run and the report through the playbooks, with the lab's group_vars and tickets in the store."""
    inv = tmp_path_factory.mktemp("inventory")
    (inv / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
    (inv / "hosts.yml").write_text(json.dumps({"all": {
        "vars": {"lab_state_dir": str(sim.state)},
        "children": {"consulta_hosts": {"hosts": {}}, "controller": {"hosts": {"localhost": {
            "ansible_connection": "local", "ansible_python_interpreter": str(BIN / "python")}}}}}}))
    (sim.state / "procedure").mkdir(exist_ok=True)
    t0 = dt.datetime.now(CDMX).replace(microsecond=0) - dt.timedelta(days=20)
    with open_store(str(sim.state / "procedure" / "tickets.db")) as store:
        for service, deployed_after in (("renapo", dt.timedelta(hours=3)), ("sat", dt.timedelta(days=4))):
            ref = store.create(service, actor="test", now=t0, requester={"name": "A", "email": "a@x"}).ticket["id"]
            for state, data in (("folio_issued", {}), ("requester_validated", {}), ("certificate_received", {}),
                                ("deploying", {"serial": "0A", "hosts": ["consulta-01"]})):
                store.transition(ref, state, actor="test", now=t0 + dt.timedelta(hours=1), **data)
            store.transition(ref, "deployed", actor="test", verified_hosts=["consulta-01"],
                             now=t0 + dt.timedelta(hours=1) + deployed_after)
    batch = _playbook("padron_consulta.yml", inv / "hosts.yml", "-e", f"padron_consulta_endpoint={sim.url}",
                      "-e", f"padron_consulta_ca_path={sim.anchor}")
    assert batch.returncode == 0, batch.stdout + batch.stderr
    written = _playbook("kpi_report.yml", inv / "hosts.yml")
    assert written.returncode == 0, written.stdout + written.stderr
    return {"dir": sim.state / "reports", "batch": batch.stdout, "written": written.stdout}


def test_playbooks_run_the_batch_and_write_the_report(report):
    assert "Corrida " in report["batch"] and "1000 de 1000 registros con resultado" in report["batch"]
    assert f"Reporte de indicadores: {report['dir'] / 'kpi_report.html'}" in report["written"]
    data = json.loads((report["dir"] / "kpi_report.json").read_text())
    assert len(data["corridas"]) == 2 and data["tickets"] == 2
    assert data["cumplimiento_sla"]["renapo"]["attention"]["cumplimiento"] == 100.0
    assert data["cumplimiento_sla"]["sat"]["attention"]["cumplimiento"] == 0.0
    csv_text = (report["dir"] / "kpi_report.csv").read_text()
    assert csv_text.startswith("seccion,indicador,dimension,valor,numerador,denominador,unidad\n")


def _chromium(tmp_path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = (report["dir"] / "kpi_report.html").as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    page = dom.stdout
    data = json.loads((report["dir"] / "kpi_report.json").read_text())
    assert "Indicadores del servicio de consulta RENAPO/SAT" in page and "Periodo:" in page
    for text in data["definiciones"].values():
        assert text in page
    top = data["indicadores"]
    assert f"{top['inconsistencias']['numerador']} de {top['inconsistencias']['denominador']} registros" in page
    figures = dict(re.findall(r'<figure id="chart-([a-z_]+)">(.*?)</figure>', page, re.S))
    charts = {"tendencia_inconsistencias", "tendencia_bajas", "tendencia_mortalidad",
              "tendencia_poblacion_actualizada", "bajas_por_estatus", "mortalidad_por_edad",
              "mortalidad_por_entidad", "cumplimiento_sla"}
    assert charts <= set(figures)
    for name in charts:
        svg = figures[name]
        drawn = len(re.findall(r"<(rect|circle|polyline)\b", svg))
        assert "<svg" in svg and drawn >= 2, f"chart {name} drew nothing"
    shot = tmp_path / "report.png"
    taken = _chromium(tmp_path, f"--screenshot={shot}", url)
    assert taken.returncode == 0 and shot.exists(), taken.stderr
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 2000)
    assert len(png) > 50_000  # a blank page compresses to a few kB
    if os.environ.get("KPI_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["KPI_REPORT_SCREENSHOT"])


def test_sigterm_stops_politely_and_every_curp_is_consulted_exactly_once(sim, tmp_path):
    """SIGTERM (an operator's kill, AWX's cancel) lets the answers in flight land: the rerun repeats none."""
    from ansible.module_utils.padron_batch import run_batch

    db_path = str(tmp_path / "resultados.db")
    kwargs = {"usuario": renapo.LAB_USUARIO, "password": renapo.LAB_PASSWORD, "ca_path": sim.anchor,
              "concurrency": 4}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import conftest\n"
            "from ansible.module_utils.padron_batch import PadronError, run_batch\n"
            "try:\n"
            f"    run_batch(sys.argv[2], sys.argv[3], sys.argv[4], **{kwargs!r})\n"
            "except PadronError as e:\n"
            "    print(e); sys.exit(3)\n")
    before = soap_requests(sim)
    proc = subprocess.Popen([str(BIN / "python"), "-c", code, str(ROOT), sim.padron, db_path, sim.url],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while len(committed(db_path)) < 300 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the batch finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "interrupted" in out, out
    stopped_at = len(committed(db_path))
    result = run_batch(sim.padron, db_path, sim.url, **kwargs)
    expected = padron.expected_counts(sim.state)
    assert result["resumed"] and result["already_stored"] == stopped_at
    assert soap_requests(sim) - before == expected["total"] - expected["malformed"]  # exactly once each
