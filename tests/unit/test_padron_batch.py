"""padron_batch on real files, a real results store (SQLite and PostgreSQL: the batch tests run on both) and a real
local SOAP server (RENAPO's contract, with failures injected per CURP): padrón checks, comparison, retries with
backoff, fatal stops, checkpoint and resume; which registry provider a batch consults, and runs that record it."""
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible.module_utils.padron_batch import COLUMNS, PadronError, compare, open_results, plan, read_padron, run_batch
from sim import renapo
from stdnum.mx import curp as stdcurp
from stdnum.mx import rfc as stdrfc

from tests.providers import THIRD_PROVIDER, lab_providers

pytest_plugins = ["tests.pg"]  # pg_server (session), store_dsn (sqlite path | postgresql schema)

HEADER = ",".join(COLUMNS) + "\n"


def make_curp(body17):
    return body17 + stdcurp.calc_check_digit(body17)


GOOD = make_curp("GOHJ800101HDFNRN0")
OTHER = make_curp("LOMM751231MJCPRR0")
BD = make_curp("PERA500615HOCRMN0")
MISSING = make_curp("SAXL900909MNLNXR0")
BAD_DIGIT = GOOD[:17] + str((int(GOOD[17]) + 1) % 10)


def record(curp, nombres, a1, a2, fecha, sexo, status="AN"):
    return {"CURP": curp, "nombres": nombres, "apellido1": a1, "apellido2": a2, "fechNac": fecha, "sexo": sexo,
            "statusCurp": status}


RENAPO_DB = {
    GOOD: record(GOOD, "JUAN", "GONZALEZ", "HERNANDEZ", "01/01/1980", "H"),
    OTHER: record(OTHER, "MARIA", "LOPEZ", "MARTINEZ", "31/12/1975", "M"),
    BD: record(BD, "RAMON", "PEREZ", "RAMIREZ", "15/06/1950", "H", "BD"),
}
ROWS = {
    GOOD: f"{GOOD},Juan,González,Hernández,1980-01-01,H,DF",
    OTHER: f"{OTHER},MARIA,LOPEZ,MARTINEZ,1975-12-31,H,JC",   # sex disagrees
    BD: f"{BD},RAMON,PEREZ,RAMIREZ,15/06/1950,H,",           # DD/MM/YYYY; entidad from the CURP
    MISSING: f"{MISSING},LAURA,SANCHEZ,,1990-09-09,M,NL",
}


class Renapo(ThreadingHTTPServer):
    """RENAPO's SOAP contract (the lab simulator's own parser and answers) with failures injected per CURP:
    fail[curp] = [503, 503] answers HTTP 503 twice before the real answer."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.db, self.fail, self.calls, self.lock = dict(RENAPO_DB), {}, [], threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        datos = renapo.parse_request(self.rfile.read(int(self.headers["Content-Length"])))
        curp = datos["cveCurp"]
        with self.server.lock:
            self.server.calls.append(curp)
            failures = self.server.fail.get(curp) or []
            status = failures.pop(0) if failures else 200
        body = renapo.envelope(renapo.curpstruct(*renapo.consultar(self.server.db, datos))) if status == 200 else b"x"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = Renapo()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def write(tmp_path, text, name="padron.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def batch(dsn, server, padron, **kw):
    kw = {"usuario": renapo.LAB_USUARIO, "password": renapo.LAB_PASSWORD, "backoff": 0.01, "concurrency": 3, **kw}
    return run_batch(padron, str(dsn), server.url, **kw)


def sql(dsn, query, params=()):
    """Rows as dicts, on either backend (the batch's own connection code)."""
    db = open_results(str(dsn), create=False)
    try:
        cur = db.execute(query, params)
        names = [d[0] for d in cur.description] if cur.description else []
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()] if names else []
    finally:
        db.close()


def results(dsn, run_id):
    return {r["curp"]: r for r in sql(dsn, "SELECT * FROM results WHERE run_id = ? ORDER BY row_no DESC", (run_id,))}


# ---------------------------------------------------------------- the padrón file

@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (HEADER.encode(), "has a header but no records"),
    (b"curp,nombres,apellido1,fecha_nacimiento,sexo\nX,Y,Z,2000-01-01,H\n",
     "lacks the column(s) apellido2, entidad"),
    ((HEADER + f"{GOOD},JOSÉ,NÚÑEZ,,1980-01-01,H,DF\n").encode("latin-1"), "is not UTF-8: byte 0xC9 at line 2"),
])
def test_unreadable_padron_is_a_clear_error(tmp_path, content, words):
    with pytest.raises(PadronError) as e:
        read_padron(write(tmp_path, content))
    assert words in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PadronError, match="cannot read the padrón file"):
        read_padron(str(tmp_path / "nope.csv"))


def test_padron_records_prechecks_and_duplicates(tmp_path):
    text = ("\ufeff" + HEADER.upper().replace(",", " ,") + ROWS[GOOD] + "\n\n" + f"{BAD_DIGIT},X,Y,Z,1980-01-01,H,DF\n"
            + f"{GOOD.lower()},JUAN,GONZALEZ,HERNANDEZ,1980-01-01,H,DF\n" + "short,row\n")
    p = read_padron(write(tmp_path, text))
    assert [(r["row_no"], r["precheck"]) for r in p["records"]] == [
        (2, None), (4, "malformed"), (5, "duplicate"), (6, "malformed")]
    assert p["duplicates"] == {GOOD: [2, 5]}
    assert p["records"][3]["fields"]["entidad"] == ""  # a short row reads as empty fields, not a crash


@pytest.mark.parametrize("fields, differ", [
    ({"nombres": "José", "apellido1": "Núñez", "apellido2": "", "fecha_nacimiento": "1980-01-01", "sexo": "h"}, []),
    ({"nombres": "JOSE LUIS", "apellido1": "NUNEZ", "apellido2": "", "fecha_nacimiento": "01/01/1980",
      "sexo": "H"}, ["nombre"]),
    ({"nombres": "JOSE", "apellido1": "NUNEZ", "apellido2": "", "fecha_nacimiento": "1980-02-01", "sexo": "M"},
     ["fecha_nacimiento", "sexo"]),
    ({"nombres": "JOSE", "apellido1": "NUNEZ", "apellido2": "", "fecha_nacimiento": "ayer", "sexo": "H"},
     ["fecha_nacimiento"]),
])
def test_compare_folds_case_and_accents(fields, differ):
    rec = {"nombres": "JOSE", "apellido1": "NUNEZ", "apellido2": "", "fechNac": "01/01/1980", "sexo": "H"}
    assert [k for k, v in compare(fields, rec).items() if v] == differ


# ---------------------------------------------------------------- the batch

def test_batch_stores_each_category_and_never_sends_malformed_or_duplicates(store_dsn, tmp_path, server):
    padron = write(tmp_path, HEADER + "\n".join([*ROWS.values(), f"{BAD_DIGIT},X,Y,Z,1980-01-01,H,DF", ROWS[GOOD]])
                   + "\n")
    s = batch(store_dsn, server, padron)
    assert sorted(server.calls) == sorted(ROWS)  # 4 consultations: no malformed, no duplicate
    assert (s["stored"], s["found"], s["not_found"], s["malformed"], s["duplicate"], s["error"]) == (6, 3, 1, 1, 1, 0)
    assert (s["bajas"], s["deceased"], s["mismatched"], s["consulted"], s["resumed"]) == (1, 1, 1, 4, False)
    r = results(store_dsn, s["run_id"])
    assert r[GOOD]["status_curp"] == "AN" and r[GOOD]["inconsistente"] == 0 and r[GOOD]["entidad"] == "DF"
    assert r[OTHER]["mismatch_sexo"] == 1 and r[OTHER]["inconsistente"] == 1
    assert r[BD]["defuncion"] == r[BD]["baja"] == 1 and r[BD]["entidad"] == "OC" and r[BD]["edad"] >= 76
    assert (r[MISSING]["category"], r[MISSING]["codigo_error"], r[MISSING]["inconsistente"]) == ("not_found", "06", 1)
    assert r[BAD_DIGIT]["attempts"] == 0 and r[BAD_DIGIT]["status_oper"] is None


def test_retries_with_backoff_on_5xx_then_succeeds(store_dsn, tmp_path, server):
    server.fail[GOOD] = [503, 500]
    t0 = time.perf_counter()
    s = batch(store_dsn, server, write(tmp_path, HEADER + ROWS[GOOD] + "\n"), backoff=0.1)
    assert server.calls == [GOOD] * 3 and s["found"] == 1
    assert time.perf_counter() - t0 >= 0.3  # waited 0.1 then 0.2
    assert results(store_dsn, s["run_id"])[GOOD]["attempts"] == 3


def test_gives_up_after_retries_and_a_resume_retries_only_the_errors(store_dsn, tmp_path, server):
    server.fail[GOOD] = [503, 502, 503]
    padron = write(tmp_path, HEADER + ROWS[GOOD] + "\n" + ROWS[OTHER] + "\n")
    s = batch(store_dsn, server, padron, retries=2)
    assert (s["error"], s["found"]) == (1, 1) and server.calls.count(GOOD) == 3
    assert results(store_dsn, s["run_id"])[GOOD]["error"].startswith("http_status: the CURP service answered HTTP 503")
    server.fail[MISSING] = [503]  # the provider's display name (the registry's) is the one messages give
    named = batch(store_dsn, server, write(tmp_path, HEADER + ROWS[MISSING] + "\n", name="other.csv"), retries=0,
                  name="INE")
    assert results(store_dsn, named["run_id"])[MISSING]["error"].startswith("http_status: INE answered HTTP 503")
    again = batch(store_dsn, server, padron, run_id=s["run_id"])
    assert (again["resumed"], again["consulted"], again["already_stored"], again["error"]) == (True, 1, 1, 0)
    assert server.calls.count(OTHER) == 1


def test_unreachable_endpoint_is_an_error_result_after_retries(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = run_batch(write(tmp_path, HEADER + ROWS[GOOD] + "\n"), str(tmp_path / "r.db"), f"http://127.0.0.1:{port}",
                    usuario="u", password="p", retries=1, backoff=0.01)
    assert run["error"] == 1
    assert "refused" in results(tmp_path / 'r.db', run["run_id"])[GOOD]["error"]


def test_wrong_credentials_stop_the_batch(store_dsn, tmp_path, server):
    padron = write(tmp_path, HEADER + "\n".join(ROWS.values()) + "\n")
    with pytest.raises(PadronError, match="batch stopped: .*wrong usuario/password"):
        batch(store_dsn, server, padron, password="not-it", concurrency=1)
    assert len(server.calls) == 1


def test_a_finished_run_is_not_resumed_and_a_changed_padron_is_refused(store_dsn, tmp_path, server):
    padron = write(tmp_path, HEADER + ROWS[GOOD] + "\n")
    first = batch(store_dsn, server, padron)
    assert plan(store_dsn, read_padron(padron))["resumed"] is False
    second = batch(store_dsn, server, padron)
    assert second["run_id"] != first["run_id"] and second["consulted"] == 1
    write(tmp_path, HEADER + ROWS[OTHER] + "\n")
    with pytest.raises(PadronError, match="was made over another padrón file"):
        batch(store_dsn, server, padron, run_id=first["run_id"])


def test_an_unfinished_run_is_resumed_without_consulting_committed_records(store_dsn, tmp_path, server):
    padron = write(tmp_path, HEADER + "\n".join(ROWS.values()) + "\n")
    first = batch(store_dsn, server, padron)
    sql(store_dsn, "UPDATE runs SET finished_at = NULL")  # as if killed: run unfinished, two results never committed
    sql(store_dsn, "DELETE FROM results WHERE curp IN (?, ?)", (OTHER, MISSING))
    assert plan(store_dsn, read_padron(padron))["to_consult"] == 2
    server.calls.clear()
    again = batch(store_dsn, server, padron)
    assert again["run_id"] == first["run_id"] and again["resumed"]
    assert sorted(server.calls) == sorted([OTHER, MISSING]) and again["stored"] == 4


def test_bad_options_are_refused(store_dsn, tmp_path, server):
    with pytest.raises(PadronError, match="concurrency must be >= 1"):
        batch(store_dsn, server, write(tmp_path, HEADER + ROWS[GOOD] + "\n"), concurrency=0)


# ---------------------------------------------------------------- RENAPO's real answers

def test_invalid_curp_0109_is_a_definitive_answer_never_retried(store_dsn, tmp_path, server):
    """A CURP whose check digit RENAPO refuses (our precheck passed it: RENAPO's own rules are stricter) is 01/09."""
    strict = make_curp("GOHJ800101HDFNRN1")

    def consultar(db, datos, real=renapo.consultar):
        return (renapo.INVALID_CURP, None) if datos["cveCurp"] == strict else real(db, datos)

    padron = write(tmp_path, HEADER + f"{strict},JUAN,GONZALEZ,HERNANDEZ,1980-01-01,H,DF\n" + ROWS[GOOD] + "\n")
    original, renapo.consultar = renapo.consultar, consultar
    try:
        s = batch(store_dsn, server, padron, retries=3)
        again = batch(store_dsn, server, padron, run_id=s["run_id"])
    finally:
        renapo.consultar = original
    assert server.calls.count(strict) == 1 and (s["malformed"], s["error"], s["found"]) == (1, 0, 1)
    r = results(store_dsn, s["run_id"])[strict]
    assert (r["category"], r["tipo_error"], r["codigo_error"], r["attempts"], r["inconsistente"]) == (
        "malformed", "01", "09", 1, 1)
    assert again["consulted"] == 0  # resuming the run does not ask again either


def test_entidad_is_validated_against_the_state_codes(store_dsn, tmp_path, server):
    formula = '=HYPERLINK("http://x.invalid/","NL")'
    text = (HEADER + f'{GOOD},JUAN,GONZALEZ,HERNANDEZ,1980-01-01,H,"{formula.replace(chr(34), chr(34) * 2)}"\n'
            + f"{OTHER},MARIA,LOPEZ,MARTINEZ,1975-12-31,M,Jalisco\n" + f"{BD},RAMON,PEREZ,RAMIREZ,1950-06-15,H,oc\n")
    p = read_padron(write(tmp_path, text))
    assert p["invalid_entidad"] == [2, 3]
    assert [r["fields"]["entidad"] for r in p["records"]] == ["", "", "OC"]
    s = batch(store_dsn, server, write(tmp_path, text))
    assert (s["invalid_entidad"], s["invalid_entidad_rows"]) == (2, [2, 3])
    r = results(store_dsn, s["run_id"])
    assert (r[GOOD]["entidad"], r[OTHER]["entidad"], r[BD]["entidad"]) == ("DF", "JC", "OC")  # from the CURP


def test_accented_names_arrive_byte_exact_through_the_latin1_quirk(store_dsn, tmp_path, server):
    accented = make_curp("MUNJ800101HDFXXS0")
    server.db[accented] = {**record(accented, "JOSÉ ÁNGEL", "MUÑOZ", "NÚÑEZ", "01/01/1980", "H"),
                           "docProbatorio": "4", "FolioCarta": "CN1234567"}
    s = batch(store_dsn, server, write(tmp_path, HEADER + f"{accented},José Ángel,Muñoz,Núñez,1980-01-01,H,DF\n"))
    r = results(store_dsn, s["run_id"])[accented]
    assert (r["renapo_nombres"], r["renapo_apellido1"], r["renapo_apellido2"]) == ("JOSÉ ÁNGEL", "MUÑOZ", "NÚÑEZ")
    assert r["renapo_apellido1"].encode() == "MUÑOZ".encode() and r["doc_probatorio"] == "4"
    assert (r["category"], r["inconsistente"]) == ("found", 0)


def test_an_older_results_database_gets_the_new_columns(tmp_path, server):
    from ansible.module_utils import padron_batch

    db = sqlite3.connect(tmp_path / "r.db")  # the first release's tables: no RENAPO names, no SAT tables
    db.executescript(padron_batch.SCHEMA.split("CREATE TABLE IF NOT EXISTS sat_runs")[0])
    db.close()
    s = batch(tmp_path / 'r.db', server, write(tmp_path, HEADER + ROWS[GOOD] + "\n"))
    assert results(tmp_path / 'r.db', s["run_id"])[GOOD]["renapo_nombres"] == "JUAN"


# ---------------------------------------------------------------- SAT through the same machinery

class Sat(ThreadingHTTPServer):
    """SAT's opinión contract (GET /sat/opinion/<RFC> → JSON) over plain HTTP, failures injected per RFC."""

    daemon_threads = True

    def __init__(self, opinions):
        super().__init__(("127.0.0.1", 0), SatHandler)
        self.opinions, self.fail, self.calls, self.lock = opinions, {}, [], threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class SatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        import json

        rfc = self.path.rsplit("/", 1)[1]
        with self.server.lock:
            self.server.calls.append(rfc)
            failures = self.server.fail.get(rfc) or []
            status = failures.pop(0) if failures else 200
        if status == 200 and not stdrfc.is_valid(rfc, validate_check_digits=True):
            status, body = 400, {"error": "RFC mal formado"}
        else:
            body = {"rfc": rfc, "opinion": self.server.opinions.get(rfc, "NO INSCRITO"), "folio": "F"}
        data = json.dumps(body).encode() if status in (200, 400) else b"{}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_rfc(body10, homoclave="A1"):
    body = body10 + homoclave
    return body + stdrfc.calc_check_digit(body)


def test_rfc_batch_counts_opinions_with_the_same_checkpoint_and_retries(tmp_path):
    from ansible.module_utils.padron_batch import read_rfcs, run_rfc_batch

    rfcs = [make_rfc(c[:10]) for c in (GOOD, OTHER, BD, MISSING)]
    odd = rfcs[0][:-1] + ("0" if rfcs[0][-1] != "0" else "1")  # the structure holds, SAT refuses the check digit
    srv = Sat({rfcs[0]: "POSITIVA", rfcs[1]: "NEGATIVA", rfcs[2]: "INSCRITO SIN OBLIGACIONES"})
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        srv.fail[rfcs[1]] = [503]
        path = write(tmp_path, "rfc,curp\n" + "\n".join(f"{r},{c}" for r, c in zip(rfcs, ROWS, strict=True))
                     + f"\n{odd},\nNOPE,\n{rfcs[0]},\n", name="rfc.csv")
        assert [r["precheck"] for r in read_rfcs(path)["records"]] == [None] * 5 + ["malformed", "duplicate"]
        s = run_rfc_batch(path, str(tmp_path / "r.db"), srv.url, backoff=0.01, concurrency=2, provider="sat")
        again = run_rfc_batch(path, str(tmp_path / "r.db"), srv.url, run_id=s["run_id"])
    finally:
        srv.shutdown()
        srv.server_close()
    assert (s["stored"], s["answered"], s["malformed"], s["duplicate"], s["error"]) == (7, 4, 2, 1, 0)
    assert s["opinions"] == {"POSITIVA": 1, "NEGATIVA": 1, "INSCRITO SIN OBLIGACIONES": 1, "NO INSCRITO": 1}
    assert srv.calls.count(rfcs[1]) == 2 and "NOPE" not in srv.calls and srv.calls.count(odd) == 1
    assert again["consulted"] == 0 and again["resumed"]
    assert (s["provider"], s["strategy"]) == ("sat", "rfc_opinion")
    assert sql(tmp_path / "r.db", "SELECT provider FROM sat_runs") == [{"provider": "sat"}]


# ---------------------------------------------------------------- which provider: the registry's, by strategy

@pytest.mark.parametrize("provider, strategy, chosen", [
    (None, None, "renapo"),              # the registry's first provider of strategy curp_soap
    (None, "curp_soap", "renapo"),
    (None, "rfc_opinion", "sat"),
    ("ine", None, "ine"),                # a provider defined in inventory only, strategy curp_soap
    ("ine", "curp_soap", "ine"),
    ("sat", "rfc_opinion", "sat"),
])
def test_the_consulted_provider_comes_from_the_registry_by_strategy(provider, strategy, chosen):
    from ansible.module_utils.padron_batch import consulted_provider

    assert consulted_provider(lab_providers(**THIRD_PROVIDER), provider, strategy).name == chosen


@pytest.mark.parametrize("providers, provider, strategy, words", [
    (lab_providers(), "ine", None, r"unknown provider 'ine'.*renapo, sat"),
    (lab_providers(), "sat", "curp_soap", "consults with strategy 'rfc_opinion'; a padrón batch needs curp_soap"),
    ({"renapo": lab_providers()["renapo"]}, None, "rfc_opinion", "no provider of the registry .*renapo.* rfc_opinion"),
    (lab_providers(), None, "ldap", "no padrón batch speaks the consultation strategy 'ldap'"),
    ({}, None, None, "registry .* is empty"),
])
def test_a_provider_no_batch_can_consult_is_refused_naming_the_registry(providers, provider, strategy, words):
    from ansible.module_utils.padron_batch import consulted_provider

    with pytest.raises(PadronError, match=words):
        consulted_provider(providers, provider, strategy)


def test_runs_record_their_provider_and_resume_only_their_own(store_dsn, tmp_path, server):
    padron = write(tmp_path, HEADER + ROWS[GOOD] + "\n" + ROWS[OTHER] + "\n")
    first = batch(store_dsn, server, padron, provider="renapo")
    assert (first["provider"], first["strategy"]) == ("renapo", "curp_soap")
    sql(store_dsn, "UPDATE runs SET finished_at = NULL")  # as if killed half-way
    # The same padrón consulted at another curp_soap provider is a run of its own, never the other's resumed.
    assert plan(store_dsn, read_padron(padron), provider="ine")["resumed"] is False
    other = batch(store_dsn, server, padron, provider="ine")
    assert other["run_id"] != first["run_id"] and not other["resumed"] and other["consulted"] == 2
    assert plan(store_dsn, read_padron(padron), provider="renapo")["resumed"] is True
    again = batch(store_dsn, server, padron, provider="renapo")
    assert again["run_id"] == first["run_id"] and again["resumed"]
    with pytest.raises(PadronError, match="consulted the provider renapo, not ine"):
        batch(store_dsn, server, padron, provider="ine", run_id=first["run_id"])
    rows = sql(store_dsn, "SELECT run_id, provider FROM runs ORDER BY started_at, run_id")
    assert {r["run_id"]: r["provider"] for r in rows} == {first["run_id"]: "renapo", other["run_id"]: "ine"}
