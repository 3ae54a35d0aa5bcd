"""KPIs over a real results database and a real ticket store, and the report built from them (HTML, CSV, JSON)."""
import csv
import datetime as dt
import io
import json
import re
import time

import pytest
from ansible.module_utils import padron_batch
from ansible.module_utils.kpi import AGE_BANDS, KpiError, business_hours_between, compute, padron_kpis, ticket_kpis
from ansible.module_utils.kpi_report import bar_chart, build, line_chart
from ansible.module_utils.sla import SlaPolicy
from ansible.module_utils.ticket_store import open_store

CDMX = dt.timezone(dt.timedelta(hours=-6))


def rec(row_no, curp, fecha="1980-01-01", entidad="DF", precheck=None):
    fields = {"curp": curp, "nombres": "ANA", "apellido1": "DIAZ", "apellido2": "ROJAS", "fecha_nacimiento": fecha,
              "sexo": "M", "entidad": entidad}
    return {"row_no": row_no, "curp": curp, "fields": fields, "precheck": precheck}


def answer(status, sexo, fecha):
    return {"status_oper": "EXITOSO", "status_curp": status,
            "record": {"nombres": "ANA", "apellido1": "DIAZ", "apellido2": "ROJAS", "sexo": sexo,
                       "fechNac": dt.date.fromisoformat(fecha).strftime("%d/%m/%Y")}}


def add_run(db, run_id, started, specs, total=None):
    """specs: (category, statusCurp, sexo on RENAPO, birth date, entidad) per record."""
    db.execute("INSERT INTO runs VALUES (?, ?, ?, 'p.csv', 'x', ?, 'e')",
               (run_id, started, started, total or len(specs)))
    now = dt.datetime.fromisoformat(started)
    padron_batch._store(db, run_id, [
        padron_batch._result(rec(i, f"CURP{i:014d}", fecha, entidad), now, cat, 1,
                             answer(status, sexo, fecha) if cat == "found" else {},
                             "timeout: x" if cat == "error" else None)
        for i, (cat, status, sexo, fecha, entidad) in enumerate(specs, start=2)])


@pytest.fixture
def results_db(tmp_path):
    path = str(tmp_path / "r.db")
    db = padron_batch.open_results(path)
    young, old = "2000-06-01", "1940-06-01"
    first = [("found", "AN", "M", young, "DF")] * 6 + [("found", "BD", "M", old, "JC")] * 2 + [
        ("found", "BSU", "M", young, "DF"), ("not_found", None, None, young, "DF")]
    second = [("found", "AN", "M", young, "DF")] * 5 + [("found", "AN", "H", young, "DF")] + [
        ("found", "BD", "M", old, "JC")] * 3 + [("malformed", None, None, young, "NL"), ("error", None, None, young,
                                                                                         "DF")]
    add_run(db, "run1", "2026-10-05T10:00:00-06:00", first)
    add_run(db, "run2", "2026-11-05T10:00:00-06:00", second, total=12)
    db.close()
    return path


def test_latest_run_kpis_and_trend(results_db):
    k = padron_kpis(results_db)
    assert [r["run_id"] for r in k["corridas"]] == ["run1", "run2"]
    run1, run2 = k["corridas"]
    assert (run1["inconsistencias"]["numerador"], run1["bajas"]["numerador"]) == (1, 3)
    assert run1["mortalidad"]["valor"] == 20.0
    # run2: 10 answered (the error is not a result), 1 sex mismatch + 1 malformed, 3 BD, 9 EXITOSO over 12 in padrón.
    assert run2["revisados"] == 10 and run2["errores"] == 1
    assert k["indicadores"]["inconsistencias"] == {"valor": 20.0, "numerador": 2, "denominador": 10}
    assert k["indicadores"]["bajas"]["valor"] == k["indicadores"]["mortalidad"]["valor"] == 30.0
    # The period covers both runs: the distinct CURPs found in either (run1 found 9, run2 found the same 9).
    assert k["indicadores"]["poblacion_actualizada"] == {"valor": 75.0, "numerador": 9, "denominador": 12}
    assert k["bajas_por_estatus"] == [{"estatus": "BD", "registros": 3, "pct": 30.0}]
    assert k["inconsistencias_por_causa"] == {"nombre": 0, "fecha_nacimiento": 0, "sexo": 1, "no_encontrada": 0,
                                              "mal_formada": 1, "duplicada": 0}
    assert k["datos_al"] == "2026-11-05T10:00:00-06:00"


def test_mortality_by_age_band_and_entidad(results_db):
    k = padron_kpis(results_db)
    bands = {b["rango"]: (b["registros"], b["defunciones"], b["indice"]) for b in k["mortalidad_por_edad"]}
    assert list(bands) == [label for label, _, _ in AGE_BANDS]
    assert bands["menos de 30"] == (7, 0, 0.0) and bands["75 y más"] == (3, 3, 100.0)
    states = {e["entidad"]: (e["registros"], e["defunciones"]) for e in k["mortalidad_por_entidad"]}
    assert states == {"DF": (6, 0), "JC": (3, 3), "NL": (1, 0)}


def test_period_filters_runs(results_db):
    k = padron_kpis(results_db, "2026-10-01", "2026-10-31")
    assert [r["run_id"] for r in k["corridas"]] == ["run1"]
    assert k["indicadores"]["poblacion_actualizada"]["numerador"] == 9
    assert padron_kpis(results_db, "2027-01-01")["indicadores"] == {}
    with pytest.raises(KpiError, match="ends .* before it starts"):
        padron_kpis(results_db, "2026-12-01", "2026-11-01")


def test_missing_or_foreign_database_is_a_clear_error(tmp_path):
    with pytest.raises(KpiError, match="does not exist; run playbooks/padron_consulta.yml"):
        padron_kpis(str(tmp_path / "none.db"))
    (tmp_path / "other.db").write_bytes(b"")
    with pytest.raises(KpiError, match="not a padrón results database"):
        padron_kpis(str(tmp_path / "other.db"))


@pytest.mark.parametrize("start, end, hours", [
    ("2026-11-27T10:00:00-06:00", "2026-11-27T12:30:00-06:00", 2.5),     # same Friday
    ("2026-11-27T17:00:00-06:00", "2026-11-30T10:00:00-06:00", 2.0),     # Friday evening → Monday morning
    ("2026-11-13T17:00:00-06:00", "2026-11-17T10:00:00-06:00", 2.0),     # Monday 16 Nov 2026 is a holiday
    ("2026-11-28T08:00:00-06:00", "2026-11-29T20:00:00-06:00", 0.0),     # a weekend
    ("2026-11-27T12:00:00-06:00", "2026-11-27T11:00:00-06:00", 0.0),     # end before start
])
def test_business_hours(start, end, hours):
    assert business_hours_between(start, end) == hours


@pytest.mark.parametrize("start, end, hours", [
    # Hand-counted in America/Mexico_City business hours (09:00-18:00, Monday-Friday).
    ("2027-02-10T14:07:00-06:00", "2027-02-10T15:30:00-06:00", 1.3833),  # 83 minutes on a Wednesday
    ("2027-02-10T20:07:00+00:00", "2027-02-10T21:30:00+00:00", 1.3833),  # the same instants stored in UTC
    ("2027-02-10T14:07:00", "2027-02-10T15:30:00", 1.3833),              # naive values are Mexico City time
    ("2027-02-12T16:30:00-06:00", "2027-02-15T10:15:00-06:00", 2.75),    # Fri 1.5 h + Mon 1.25 h over a weekend
    ("2027-02-12T22:30:00+00:00", "2027-02-15T16:15:00+00:00", 2.75),    # same, UTC
    ("2027-02-12T19:00:00-06:00", "2027-02-15T08:00:00-06:00", 0.0),     # Friday evening to Monday before opening
    ("2027-03-24T17:00:00-06:00", "2027-03-29T09:30:00-06:00", 1.5),     # Holy Thursday and Good Friday skipped
    ("2026-12-24T17:00:00-06:00", "2026-12-28T09:30:00-06:00", 1.5),     # Christmas Friday skipped
    ("2027-02-09T09:00:00-06:00", "2027-02-10T18:00:00-06:00", 18.0),    # two whole business days
])
def test_business_hours_in_mexico_city_on_a_utc_controller(monkeypatch, start, end, hours):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert business_hours_between(start, end) == hours
    finally:
        monkeypatch.undo()
        time.tzset()


def test_business_hours_with_dof_days_policy_and_workday():
    # Thursday 24 Dec 2026 as a DOF day: Wed 23 17:00-18:00 + Mon 28 09:00-09:30.
    assert business_hours_between("2026-12-23T17:00:00-06:00", "2026-12-28T09:30:00-06:00",
                                  extra=["2026-12-24"]) == 1.5
    policy = SlaPolicy.from_options(non_working_days=["2026-12-24"], business_hours="08:00-15:00")
    # Wed 23 14:00-15:00 + Mon 28 08:00-09:30 with the policy's hours; `workday` overrides them.
    assert business_hours_between("2026-12-23T14:00:00-06:00", "2026-12-28T09:30:00-06:00", policy=policy) == 2.5
    assert business_hours_between("2026-12-23T14:00:00-06:00", "2026-12-28T09:30:00-06:00", policy=policy,
                                  workday=(9, 18)) == 4.5


def ticket_through(store, service, t0, received_after, deployed_after, contact_after=dt.timedelta(hours=1)):
    ref = store.create(service, actor="t", now=t0, requester={"name": "A", "email": "a@x"}).ticket["id"]
    store.transition(ref, "folio_issued", actor="t", now=t0 + contact_after)
    store.transition(ref, "requester_validated", actor="t", now=t0 + contact_after)
    if received_after is None:
        return ref
    store.transition(ref, "certificate_received", actor="t", now=t0 + received_after)
    store.transition(ref, "deploying", actor="t", serial="0A", hosts=["h1"], now=t0 + received_after)
    store.transition(ref, "deployed", actor="t", verified_hosts=["h1"], now=t0 + deployed_after)
    return ref


@pytest.fixture
def tickets_db(tmp_path):
    path = str(tmp_path / "tickets.db")
    t0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=CDMX)  # Monday
    h = dt.timedelta(hours=1)
    with open_store(path) as store:
        ticket_through(store, "renapo", t0, 2 * h, 5 * h)                 # deployed the same day: 3 h
        ticket_through(store, "renapo", t0, 2 * h, dt.timedelta(days=3))  # Thursday: attention breached
        ticket_through(store, "sat", t0, None, None, contact_after=dt.timedelta(days=8))  # first contact breached
    return path


def test_lead_time_and_sla_compliance(tickets_db):
    k = ticket_kpis(tickets_db, now="2026-12-10T10:00:00-06:00")
    leads = k["tiempo_despliegue"]["despliegues"]
    assert [(d["servicio"], d["horas_habiles"], d["dias_habiles"]) for d in leads] == [
        ("renapo", 3.0, 0), ("renapo", 25.0, 3)]  # Mon 12-18, Tue, Wed, Thu 9-10
    assert k["tiempo_despliegue"]["mediana_horas_habiles"] == 14.0
    assert k["cumplimiento_sla"]["renapo"]["first_contact"] == {"a_tiempo": 2, "vencidos": 0, "en_curso": 0,
                                                                "cumplimiento": 100.0}
    assert k["cumplimiento_sla"]["renapo"]["attention"]["cumplimiento"] == 50.0
    assert k["cumplimiento_sla"]["sat"]["first_contact"]["vencidos"] == 1
    assert k["cumplimiento_sla"]["sat"]["attention"]["cumplimiento"] is None


def test_no_ticket_store_means_empty_ticket_kpis(tmp_path):
    k = ticket_kpis(str(tmp_path / "missing.db"))
    assert k["tickets"] == 0 and k["tiempo_despliegue"]["mediana_horas_habiles"] is None
    assert not (tmp_path / "missing.db").exists()


def test_compute_carries_definitions(results_db, tickets_db):
    k = compute(results_db, tickets_db, policy=SlaPolicy.from_options(days={"sat": {"attention": 2}}))
    assert set(k["definiciones"]) == {"inconsistencias", "bajas", "mortalidad", "poblacion_actualizada",
                                      "tiempo_despliegue", "cumplimiento_sla"}
    assert "9:00 a 18:00" in k["definiciones"]["tiempo_despliegue"]
    assert "BD (baja por defunción)" in k["definiciones"]["mortalidad"]


# ---------------------------------------------------------------- the report

def test_report_documents_hold_the_same_numbers(results_db, tickets_db):
    k = compute(results_db, tickets_db, now="2026-12-10T10:00:00-06:00")
    docs = build(k, basename="r")
    html = docs["r.html"]
    assert html.startswith("<!DOCTYPE html>") and 'lang="es"' in html
    assert not re.search(r"<script|<link|https?://(?!www\.w3\.org/2000/svg)", html)  # nothing fetched
    for text in k["definiciones"].values():
        assert text.replace("á", "&aacute;") in html or text in html
    assert html.count("<svg") == 8  # 4 trends, bajas, age bands, entidades, SLA
    rows = list(csv.DictReader(io.StringIO(docs["r.csv"])))
    top = {r["indicador"]: r for r in rows if r["seccion"] == "indicador"}
    assert (top["bajas"]["valor"], top["bajas"]["numerador"], top["bajas"]["denominador"]) == ("30.0", "3", "10")
    assert [r["dimension"] for r in rows if r["seccion"] == "tendencia" and r["indicador"] == "mortalidad"] == [
        "run1", "run2"]
    assert json.loads(docs["r.json"])["indicadores"] == k["indicadores"]


def test_charts_draw_their_values():
    svg = line_chart([("05/10", 12.5), ("05/11", 20.0)], "Tendencia")
    assert svg.count("<circle") == 2 and "<polyline" in svg and "12.5 %" in svg and ">100<" not in svg
    bars = bar_chart([("BD", 4.5), ("BSU <x>", 0.4)], "Bajas", note=["45 reg.", "4 reg."])
    assert bars.count("<rect") == 2 and "BSU &lt;x&gt;" in bars and "4.5 % (45 reg.)" in bars
    assert "Sin datos" in line_chart([], "Vacía") and "Sin datos" in bar_chart([], "Vacía")
