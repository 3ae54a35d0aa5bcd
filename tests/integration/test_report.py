"""Padrón batch, KPI report and the Mesa's board end to end on the RENAPO and SAT simulators (in-process, ephemeral
ports, temporary state): the batch is killed with SIGKILL half-way and resumed (requests counted at the simulator's
/__lab/stats); every KPI equals the generator's ground truth per definition (never-sent records included); the
padrón's Ñ/accents, NE-born and post-2000 CURPs come back through RENAPO's ISO-8859-1 quirk byte-exact; the SAT
opinions go through the same batch; bad padrón files fail clearly; the playbooks run; the report and the board are
read in headless Chromium as a person reads them (es-MX numbers, local times in words, entidad names, headings).
Which provider is consulted and how it is named come from the provider registry (the lab's, tests/providers.py)."""
import csv
import datetime as dt
import html
import io
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
from ansible.module_utils.sla import SlaPolicy
from ansible.module_utils.ticket_store import open_store
from sim import padron, renapo, services

from tests.providers import lab_providers

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
CONCURRENCY = 2
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CDMX = dt.timezone(dt.timedelta(hours=-6))


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    state = tmp_path_factory.mktemp("reportlab")
    svc = services.start(state, renapo=("127.0.0.1", 0), sat=("127.0.0.1", 0), smtp=None)
    svc.url = f"https://127.0.0.1:{svc.renapo_port}"
    paths = pki.ensure(state)
    svc.anchor = str(paths["renapo_anchor"])
    files = padron.ensure(state)
    svc.padron, svc.rfc = str(files["padron"]), str(files["rfc"])
    svc.sat_url, svc.sat_ca = f"https://127.0.0.1:{svc.sat_port}", str(paths["sat_ca"])
    svc.sat_cert, svc.sat_key = (str(p) for p in pki.issue_sat_client(state, "padron"))
    yield svc
    svc.stop()


def registry(svc) -> dict:
    """The lab's registry as a module receives it (templated: the simulator's endpoint in place)."""
    providers = lab_providers()
    providers["renapo"]["endpoint"] = f"127.0.0.1:{svc.renapo_port}"
    return providers


def soap_requests(svc) -> int:
    ctx = ssl.create_default_context(cafile=svc.anchor)
    with urllib.request.urlopen(svc.url + "/__lab/stats", context=ctx, timeout=10) as r:
        return json.load(r).get("renapo.soap", 0)


def module(svc, check=False, **args) -> subprocess.Popen:
    """`ansible localhost -m padron_consulta` (the module runs in a worker's own session: see kill_tree)."""
    args = {"padron": svc.padron, "results_db": str(svc.state / "padron" / "resultados.db"), "endpoint": svc.url,
            "ca_path": svc.anchor, "usuario": renapo.LAB_USUARIO, "password": renapo.LAB_PASSWORD,
            "concurrency": CONCURRENCY, "providers": registry(svc), **args}
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


def test_kpis_equal_the_generators_ground_truth_per_definition(sim, killed_and_resumed):
    expected = padron.expected_counts(sim.state)
    k = compute(killed_and_resumed["db"], providers=registry(sim))
    total, found, malformed = expected["total"], expected["found"], expected["malformed"]
    assert total == 1000 and malformed == 10 and found == 940
    # Coverage: the 10 malformed CURPs are in the padrón and never sent.
    assert k["ultima_corrida"]["cobertura"] == {
        "padron": total, "enviados": total - malformed, "no_enviados": malformed, "con_respuesta": total - malformed,
        "sin_respuesta": 0, "con_resultado": total, "encontrados": found, "sin_resultado": 0}
    top = k["indicadores"]
    # Población actualizada: found, active and consistent, over the whole padrón (825 of 1,000, not 940).
    assert top["poblacion_actualizada"] == {"valor": round(100 * expected["updated"] / total, 2),
                                            "numerador": expected["updated"], "denominador": total}
    assert expected["updated"] == expected["active"] - expected["mismatched_records"]
    # Inconsistencias: mismatches + not found + malformed (never sent), over every record with a result.
    assert top["inconsistencias"] == {"valor": round(100 * expected["inconsistent"] / total, 2),
                                      "numerador": expected["inconsistent"], "denominador": total}
    # Bajas and mortality over the records RENAPO found; BD is one of the bajas.
    assert top["bajas"] == {"valor": round(100 * expected["inactive"] / found, 2),
                            "numerador": expected["inactive"], "denominador": found}
    assert top["mortalidad"] == {"valor": round(100 * expected["deceased"] / found, 2),
                                 "numerador": expected["deceased"], "denominador": found}
    assert {b["estatus"]: b["registros"] for b in k["bajas_por_estatus"]} == {
        s: n for s, n in expected["status_curp"].items() if s in STATUS_INACTIVE}
    assert [b["estatus"] for b in k["bajas_por_estatus"] if b["defuncion"]] == ["BD"]
    assert {b["estatus"]: b["registros"] for b in k["estatus_curp"]} == expected["status_curp"]
    causes = {c: v["numerador"] for c, v in k["inconsistencias_por_causa"].items()}
    assert {f: causes[f] for f in expected["mismatch"]} == expected["mismatch"]
    assert (causes["no_encontrada"], causes["mal_formada"], causes["invalida_renapo"], causes["duplicada"]) == (
        expected["not_found"], malformed, 0, 0)
    # Mortality by entidad (the padrón's, or the CURP's where the padrón's is not a state code) over found records,
    # every entidad named, NE included.
    by_entidad = {e["entidad"]: e for e in k["mortalidad_por_entidad"]}
    assert {c: [e["registros"], e["defunciones"]] for c, e in by_entidad.items() if e["registros"]} == \
        expected["mortality_by_entidad"]
    assert by_entidad["NE"]["nombre"] == "Nacido en el extranjero" and by_entidad["NL"]["nombre"] == "Nuevo León"
    assert all(e["muestra_pequena"] == (e["registros"] < 30) for e in by_entidad.values())
    # Mortality by age band over found records, recomputed here from the generator's files.
    data, today = padron.load(sim.state), dt.date.today()
    bands = {label: [0, 0] for label, _, _ in AGE_BANDS}
    for row in data["padron"]:
        category, _ = padron.classify(row, data["renapo"])
        if category in ("MALFORMED", "NOT_FOUND"):
            continue
        born = dt.datetime.strptime(data["renapo"][row["curp"]]["fechNac"], "%d/%m/%Y").date()
        age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        label = next(label for label, lo, hi in AGE_BANDS if lo <= age <= hi)
        bands[label][0] += 1
        bands[label][1] += category == "BD"
    assert {b["rango"]: [b["registros"], b["defunciones"]] for b in k["mortalidad_por_edad"]} == bands


def test_renapos_real_answers_are_parsed_with_names_byte_exact(sim, killed_and_resumed):
    """The padrón holds Ñ/accents, NE-born and post-2000 CURPs and varied docProbatorio; the simulator sends them the
    way RENAPO does (UTF-8 declared, ISO-8859-1 bytes); every record is parsed and stored as RENAPO holds it."""
    expected = padron.expected_counts(sim.state)
    assert expected["accented"] >= 100 and expected["foreign_born"] >= 20 and expected["born_2000_on"] >= 40
    assert set(expected["doc_probatorio"]) == {"1", "3", "4"} and expected["invalid_entidad"] == 2
    data = padron.load(sim.state)
    db = sqlite3.connect(killed_and_resumed["db"])
    rows = {r[0]: r[1:] for r in db.execute(
        "SELECT curp, renapo_nombres, renapo_apellido1, renapo_apellido2, doc_probatorio, category, entidad "
        "FROM results WHERE run_id = (SELECT MAX(run_id) FROM runs)")}
    assert len(rows) == expected["total"] and not any(r[4] == "error" for r in rows.values())
    found = {c: r for c, r in rows.items() if r[4] == "found"}
    assert len(found) == expected["found"]
    for curp, (nombres, a1, a2, doc, _cat, _ent) in found.items():
        want = data["renapo"][curp]
        assert (nombres, a1, a2, doc) == (want["nombres"], want["apellido1"], want["apellido2"],
                                          want["docProbatorio"]), curp
    accented = [c for c, r in found.items() if any(not ch.isascii() for ch in "".join(r[:3]))]
    assert len(accented) >= 90 and any("Ñ" in "".join(found[c][:3]) for c in accented)
    assert sum(c[11:13] == "NE" for c in found) >= 20 and sum(c[16].isalpha() for c in found) >= 35
    # The invalid entidades (a formula, a state's name) were replaced by the CURP's code.
    bad = [r for r in data["padron"] if r["entidad"] not in padron.ENTIDADES and r["entidad"] != "NE"]
    assert len(bad) == 2 and all(rows[r["curp"]][5] == r["curp"][11:13] for r in bad)
    # What the simulator really sends for an accented record: a UTF-8 declaration over ISO-8859-1 bytes.
    curp = next(c for c in accented if "Ñ" in "".join(found[c][:3]))
    body = renapo.envelope(renapo.curpstruct(renapo.FOUND, data["renapo"][curp]))
    assert b"encoding='UTF-8'" in body and "Ñ".encode("iso-8859-1") in body
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")


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


def test_a_third_provider_defined_in_the_registry_only_is_consulted_and_reported(sim, tmp_path):
    """`ine` (tests/providers.py: a trust provider whose consultation reuses the curp_soap strategy), defined in the
    registry and nowhere in the code: the module consults it (here the lab's CURP service answers for it), the run
    records it, and the report shows its runs under its name, apart from the other provider's."""
    from tests.providers import THIRD_PROVIDER

    providers = {**registry(sim), **THIRD_PROVIDER}
    header, *rows = Path(sim.padron).read_text().splitlines()
    small = tmp_path / "ine.csv"
    small.write_text("\n".join([header, *rows[:12]]) + "\n")
    db = str(tmp_path / "ine.db")
    runs = {name: outcome(module(sim, padron=str(small), results_db=db, providers=providers, provider=name))
            for name in ("ine", "renapo")}
    for name, run in runs.items():
        assert run["rc"] == 0, run["output"]
        assert (run["provider"], run["strategy"], run["stored"]) == (name, "curp_soap", 12)
    assert runs["ine"]["run_id"] != runs["renapo"]["run_id"]  # one run per provider over the same padrón
    # The provider's strategy decides the file: sat's is rfc_opinion, so this padrón is read as an RFC file.
    as_rfc = outcome(module(sim, padron=str(small), results_db=db, providers=providers, provider="sat"))
    assert as_rfc["rc"] != 0 and "the RFC file" in as_rfc["msg"] and "lacks the column rfc" in as_rfc["msg"]
    refused = outcome(module(sim, padron=str(small), results_db=db, providers=providers, provider="sat",
                             strategy="curp_soap"))
    assert refused["rc"] != 0 and "consults with strategy 'rfc_opinion'" in refused["msg"], refused["output"]
    k = compute(db, providers=providers, provider="ine")
    assert [r["run_id"] for r in k["corridas"]] == [runs["ine"]["run_id"]]
    assert k["proveedores"]["padron"]["display_name"] == "INE" and "encontrados en INE" in k["definiciones"]["bajas"]
    assert renapo.LAB_PASSWORD not in "".join(r["output"] for r in runs.values())


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
        "vars": {"lab_state_dir": str(sim.state), "lab_renapo_endpoint": f"127.0.0.1:{sim.renapo_port}",
                 "lab_sat_endpoint": f"127.0.0.1:{sim.sat_port}"},
        "children": {"consulta_hosts": {"hosts": {}}, "controller": {"hosts": {"localhost": {
            "ansible_connection": "local", "ansible_python_interpreter": str(BIN / "python")}}}}}}))
    (sim.state / "procedure").mkdir(exist_ok=True)
    policy = SlaPolicy().with_providers(registry(sim))
    day = dt.datetime.now(CDMX).date() - dt.timedelta(days=20)
    while not policy.is_business_day(day):
        day -= dt.timedelta(days=1)
    t0 = dt.datetime.combine(day, dt.time(10), CDMX)  # a business day at 10:00: the RENAPO renewal takes 3 h
    with open_store(str(sim.state / "procedure" / "tickets.db"), providers=registry(sim)) as store:
        for service, deployed_after in (("renapo", dt.timedelta(hours=3)), ("sat", dt.timedelta(days=4))):
            ref = store.create(service, actor="test", now=t0, requester={"name": "A", "email": "a@x"}).ticket["id"]
            for state, data in (("folio_issued", {}), ("requester_validated", {}), ("certificate_received", {}),
                                ("deploying", {"serial": "0A", "hosts": ["consulta-01"]})):
                store.transition(ref, state, actor="test", now=t0 + dt.timedelta(hours=1), **data)
            store.transition(ref, "deployed", actor="test", verified_hosts=["consulta-01"],
                             now=t0 + dt.timedelta(hours=1) + deployed_after)
    batch = _playbook("padron_consulta.yml", inv / "hosts.yml", "-e", f"padron_consulta_endpoint={sim.url}",
                      "-e", f"padron_consulta_ca_path={sim.anchor}",
                      "-e", f"padron_consulta_rfc_endpoint={sim.sat_url}",
                      "-e", f"padron_consulta_rfc_ca_path={sim.sat_ca}",
                      "-e", f"padron_consulta_rfc_client_cert={sim.sat_cert}",
                      "-e", f"padron_consulta_rfc_client_key={sim.sat_key}")
    assert batch.returncode == 0, batch.stdout + batch.stderr
    written = _playbook("kpi_report.yml", inv / "hosts.yml")
    assert written.returncode == 0, written.stdout + written.stderr
    return {"dir": sim.state / "reports", "batch": batch.stdout, "written": written.stdout, "inventory": inv,
            "t0": t0}


def test_playbooks_run_the_batch_and_write_the_report(sim, report):
    assert "Corrida " in report["batch"] and "1000 de 1000 registros con resultado" in report["batch"]
    assert "2 con entidad no válida" in report["batch"]
    expected = padron.expected_counts(sim.state)
    opinions = expected["sat_opinion"]
    assert (f"{expected['rfcs']} de {expected['rfcs']} RFC con opinión (positiva {opinions['POSITIVA']}, "
            f"negativa {opinions['NEGATIVA']}") in " ".join(report["batch"].split())
    assert f"Reporte de indicadores: {report['dir'] / 'kpi_report.html'}" in report["written"]
    data = json.loads((report["dir"] / "kpi_report.json").read_text())
    assert len(data["corridas"]) == 2 and data["tickets"] == 2
    assert data["cumplimiento_sla"]["renapo"]["attention"]["cumplimiento"] == 100.0
    assert data["cumplimiento_sla"]["sat"]["attention"]["cumplimiento"] == 0.0
    # SAT: each opinion's share over the padrón's SAT consultations with an answer, through the same batch.
    sat = data["opinion"]["indicadores"]
    answered = sum(opinions.values())
    for key, opinion in (("opinion_positiva", "POSITIVA"), ("opinion_negativa", "NEGATIVA"),
                         ("sin_obligaciones", "INSCRITO SIN OBLIGACIONES"), ("no_inscrito", "NO INSCRITO")):
        assert sat[key] == {"valor": round(100 * opinions[opinion] / answered, 2), "numerador": opinions[opinion],
                            "denominador": answered}
    assert data["opinion"]["ultima_corrida"]["cobertura"]["con_respuesta"] == expected["rfcs"]
    assert data["proveedores"]["padron"]["name"] == "renapo" and data["proveedores"]["opinion"]["name"] == "sat"
    assert [d["horas_habiles"] for d in data["tiempo_despliegue"]["despliegues"]][0] == 3.0
    csv_text = (report["dir"] / "kpi_report.csv").read_text()
    assert csv_text.startswith("seccion,indicador,dimension,valor,numerador,denominador,unidad\n")
    cells = [c for row in csv.reader(io.StringIO(csv_text)) for c in row]
    assert not any(c.startswith(("=", "+", "@")) for c in cells) and "HYPERLINK" not in csv_text


def _chromium(tmp_path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def _visible_text(dom: str) -> str:
    """The text a person reads (tags dropped, entities decoded, whitespace collapsed)."""
    dom = re.sub(r"<(script|style|title)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = (report["dir"] / "kpi_report.html").as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    page = dom.stdout
    text = _visible_text(page)
    data = json.loads((report["dir"] / "kpi_report.json").read_text())
    assert "Indicadores del servicio de consulta RENAPO/SAT" in text and "Periodo:" in text
    for definition in data["definiciones"].values():
        assert " ".join(definition.split()) in text
    top = data["indicadores"]
    # es-MX numbers: thousands with a comma, decimals with a point, "%" after a space.
    assert "82.5 %" in text and "825 de 1,000 registros del padrón" in text
    assert f"{top['inconsistencias']['numerador']} de 1,000 registros con resultado" in text
    assert "45 de 940 registros encontrados en RENAPO" in text and "Incluye 45 por defunción (BD)" in text
    assert "Registros del padrón 1,000" in text and "No enviados (CURP mal formada o repetida) 10" in text
    assert "700 de 900 consultas con respuesta" in text and "77.78 %" in text
    # Local time in words, headings written, entidades by name with the small-sample mark and the interval.
    assert re.search(r"Datos al \d{1,2} de [a-z]+ de 20\d\d, \d\d:\d\d", text)
    t0 = report["t0"]
    assert f"{t0.day} de " in text and f", {t0.hour + 1:02d}:00" in text  # certificate received at 11:00 local
    for heading in ("Opinión de cumplimiento del SAT", "Cobertura de la consulta a RENAPO", "Cumplimiento de SLA",
                    "Tiempo de despliegue", "Índice de mortalidad por entidad de nacimiento",
                    "Inconsistencias por causa", "CURP no encontrada en RENAPO (01/06)", "Nacido en el extranjero",
                    "Nuevo León", "Intervalo de confianza de 95 %", "BD (defunción)"):
        assert heading in text, heading
    assert "Cumplimiento sla" not in text and "Tiempo despliegue" not in text and "No encontrada" not in text
    assert re.search(r"[A-ZÁÉÍÓÚ][a-záéíóúñ ]+ \* \d+ \d+ \d+(\.\d+)? % \d+(\.\d+)? a \d+(\.\d+)? %", text)
    counts = re.sub(r"DGTIC-[A-Z]+-\d{4}-\d{6}", "", text)  # folios are identifiers, not counts
    assert not re.search(r"\b\d{4,}\b(?<!20\d\d)", counts)  # no count of 1,000 or more without its separator
    figures = dict(re.findall(r'<figure id="chart-([a-z_]+)">(.*?)</figure>', page, re.S))
    charts = {"tendencia_inconsistencias", "tendencia_bajas", "tendencia_mortalidad",
              "tendencia_poblacion_actualizada", "bajas_por_estatus", "mortalidad_por_edad",
              "mortalidad_por_entidad", "cumplimiento_sla", "opinion"}
    assert charts <= set(figures)
    for name in charts:
        svg = figures[name]
        drawn = len(re.findall(r"<(rect|circle|polyline)\b", svg))
        assert "<svg" in svg and drawn >= 2, f"chart {name} drew nothing"
    assert figures["mortalidad_por_entidad"].count("<rect") == 33  # every entidad with records, NE included
    shot = tmp_path / "report.png"
    taken = _chromium(tmp_path, f"--screenshot={shot}", url)
    assert taken.returncode == 0 and shot.exists(), taken.stderr
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 2000)
    assert len(png) > 50_000  # a blank page compresses to a few kB
    if os.environ.get("KPI_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["KPI_REPORT_SCREENSHOT"])


@pytest.fixture(scope="module")
def board(sim, report):
    """Open tickets of every kind in the same store, and the board written by playbooks/board.yml."""
    policy, now = SlaPolicy().with_providers(registry(sim)), dt.datetime.now(CDMX).replace(microsecond=0)
    with open_store(str(sim.state / "procedure" / "tickets.db"), providers=registry(sim)) as store:
        late = store.create("renapo", actor="test", now=now - dt.timedelta(days=20), requester={
            "name": "Ana López Ruiz", "email": "ana.lopez@agricultura.gob.mx", "system": "Padrón de Productores"},
            reason="solicitud recibida por correo").ticket
        # A request whose first-contact clock has no more than one business day left.
        arrival = next(now - dt.timedelta(hours=h) for h in range(1, 24 * 14)
                       if policy.clock(policy.due("sat", "first_contact", now - dt.timedelta(hours=h)), now)["status"]
                       == "due_soon")
        soon = store.create("sat", actor="test", now=arrival, received_at=arrival, requester={
            "name": "José Ángel Muñoz Núñez", "email": "jose.munoz@agricultura.gob.mx"},
            reason="solicitud recibida por correo").ticket
        store.annotate(soon["id"], "Solicitud revisada por la Mesa", actor="mesa.servicios", now=arrival)
        monitor = store.create("renapo", actor="monitor.vencimientos", source="monitor",
                               now=now - dt.timedelta(hours=2),
                               requester={"name": "Vencimiento del certificado de RENAPO en 15 días"},
                               reason="monitoreo: el certificado de RENAPO vence en 15 días").ticket
    written = _playbook("board.yml", report["inventory"] / "hosts.yml", "-e", f"mesa_board_now={now.isoformat()}")
    assert written.returncode == 0, written.stdout + written.stderr
    return {"html": sim.state / "reports" / "tablero_mesa.html", "out": written.stdout, "now": now, "late": late,
            "soon": soon, "monitor": monitor}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_board_shows_the_mesas_queue_in_headless_chromium(board, tmp_path):
    assert f"Tablero de la Mesa de Servicios: {board['html']}" in " ".join(board["out"].split())
    dom = _chromium(tmp_path, "--dump-dom", board["html"].as_uri())
    assert dom.returncode == 0, dom.stderr
    page, text = dom.stdout, _visible_text(dom.stdout)
    assert not re.search(r"<script|<link", page)
    now = board["now"]
    assert f"Estado al {now.day} de " in text and f"{now:%H:%M} (hora del centro de México)" in text
    # Requests, most urgent first; each with state, age, both clocks, next step and timeline.
    rows = re.findall(r'<tr id="ticket-(\d+)"[^>]*>(.*?)</tr>', page.split('id="monitoreo"')[0], re.S)
    ids = [int(i) for i, _ in rows]
    assert ids[:2] == [board["late"]["id"], board["soon"]["id"]]
    late, soon = (_visible_text(r) for _, r in rows[:2])
    assert "Recibida" in late and "Vencido" in late and "venció el " in late and "20 días" in late
    assert "Mesa de Servicios: revisar los datos de la solicitud" in late
    assert "Por vencer" in soon and "quedan " in soon and "h hábiles" in soon and "José Ángel Muñoz Núñez" in soon
    assert "SLA vencido" in text and "Línea de tiempo" in text and "Ticket abierto" in text
    assert "Solicitud revisada por la Mesa" in text
    # The renewals of the report's fixture are open too, with their next step.
    assert "Desplegado y verificado" in text and "Mesa de Servicios: notificar la conclusión" in text
    # Monitor tickets apart.
    monitor_part = _visible_text(page.split('id="monitoreo"')[1])
    assert "Vencimiento del certificado de RENAPO en 15 días" in monitor_part
    assert "Vencimiento del certificado" not in _visible_text(page.split('id="monitoreo"')[0])
    assert "darse por enterada" in monitor_part
    shot = tmp_path / "board.png"
    taken = _chromium(tmp_path, f"--screenshot={shot}", board["html"].as_uri())
    assert taken.returncode == 0 and shot.stat().st_size > 30_000, taken.stderr
    if os.environ.get("MESA_BOARD_SCREENSHOT"):
        shutil.copy(shot, os.environ["MESA_BOARD_SCREENSHOT"])


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
