"""KPIs over a real results database and a real ticket store, and the report built from them (HTML, CSV, JSON);
providers named and counted as the registry (tests/providers.py: the lab's, plus a third defined only there) says."""
import csv
import datetime as dt
import io
import json
import re
import time
from pathlib import Path

import markupsafe
import pytest
from ansible.module_utils import padron_batch
from ansible.module_utils.kpi import AGE_BANDS, KpiError, business_hours_between, compute, padron_kpis, ticket_kpis
from ansible.module_utils.kpi_report import bar_chart, build, line_chart
from ansible.module_utils.sla import SlaPolicy
from ansible.module_utils.ticket_store import open_store

from tests.providers import THIRD_PROVIDER, lab_providers

CDMX = dt.timezone(dt.timedelta(hours=-6))


def rec(row_no, curp, fecha="1980-01-01", entidad="DF", precheck=None):
    fields = {"curp": curp, "nombres": "ANA", "apellido1": "DIAZ", "apellido2": "ROJAS", "fecha_nacimiento": fecha,
              "sexo": "M", "entidad": entidad}
    return {"row_no": row_no, "curp": curp, "fields": fields, "precheck": precheck}


def answer(status, sexo, fecha):
    return {"status_oper": "EXITOSO", "status_curp": status,
            "record": {"nombres": "ANA", "apellido1": "DIAZ", "apellido2": "ROJAS", "sexo": sexo,
                       "fechNac": dt.date.fromisoformat(fecha).strftime("%d/%m/%Y")}}


def add_run(db, run_id, started, specs, total=None, provider=None):
    """specs: (category, statusCurp, sexo on RENAPO, birth date, entidad) per record."""
    db.execute("INSERT INTO runs (run_id, started_at, finished_at, padron, padron_sha256, padron_total, endpoint, "
               "provider) VALUES (?, ?, ?, 'p.csv', 'x', ?, 'e', ?)", (run_id, started, started, total or len(specs),
                                                                   provider))
    now = dt.datetime.fromisoformat(started)
    padron_batch._store(db, run_id, [
        padron_batch._result(rec(i, f"CURP{i:014d}", fecha, entidad), now, cat,
                             0 if cat in ("malformed", "duplicate") else 1,  # prechecked records are never sent
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
    # run1: 9 found (6 AN, 2 BD, 1 BSU) + 1 not found, all with a result.
    assert run1["inconsistencias"] == {"valor": 10.0, "numerador": 1, "denominador": 10}
    assert run1["bajas"] == {"valor": 33.33, "numerador": 3, "denominador": 9}  # over found records, BD included
    assert run1["mortalidad"] == {"valor": 22.22, "numerador": 2, "denominador": 9}
    assert run1["poblacion_actualizada"] == {"valor": 60.0, "numerador": 6, "denominador": 10}
    # run2: padrón of 12; 11 stored: 9 found (5 AN consistent, 1 AN sex mismatch, 3 BD), 1 malformed never sent,
    # 1 error (no answer after the retries); one record has no result yet.
    assert run2["cobertura"] == {"padron": 12, "enviados": 10, "no_enviados": 1, "con_respuesta": 9,
                                 "sin_respuesta": 1, "con_resultado": 10, "encontrados": 9, "sin_resultado": 2}
    top = k["indicadores"]
    assert list(top) == ["poblacion_actualizada", "inconsistencias", "bajas", "mortalidad"]
    assert top["inconsistencias"] == {"valor": 20.0, "numerador": 2, "denominador": 10}
    assert top["bajas"] == top["mortalidad"] == {"valor": 33.33, "numerador": 3, "denominador": 9}
    # Only found, active and consistent records count as updated, over the whole padrón.
    assert top["poblacion_actualizada"] == {"valor": 41.67, "numerador": 5, "denominador": 12}
    assert k["bajas_por_estatus"] == [{"estatus": "BD", "registros": 3, "pct": 33.33, "defuncion": True}]
    causes = {c: v["numerador"] for c, v in k["inconsistencias_por_causa"].items()}
    assert causes == {"nombre": 0, "fecha_nacimiento": 0, "sexo": 1, "no_encontrada": 0, "invalida_renapo": 0,
                      "mal_formada": 1, "duplicada": 0}
    assert k["inconsistencias_por_causa"]["sexo"] == {"valor": 10.0, "numerador": 1, "denominador": 10}
    assert k["datos_al"] == "2026-11-05T10:00:00-06:00" and k["opinion"] is None


def test_mortality_by_age_band_and_entidad_over_found_records(results_db):
    k = padron_kpis(results_db, min_sample=5)
    bands = {b["rango"]: (b["registros"], b["defunciones"], b["indice"], b["muestra_pequena"])
             for b in k["mortalidad_por_edad"]}
    assert list(bands) == [label for label, _, _ in AGE_BANDS]
    assert bands["menos de 30"] == (6, 0, 0.0, False) and bands["75 y más"] == (3, 3, 100.0, True)
    states = {e["entidad"]: e for e in k["mortalidad_por_entidad"]}
    assert len(states) == 33 and states["NE"]["nombre"] == "Nacido en el extranjero"  # every entidad, with its name
    assert {c: (e["registros"], e["defunciones"]) for c, e in states.items() if e["registros"]} == {
        "DF": (6, 0), "JC": (3, 3)}  # NL's malformed record was never found: not in the denominator
    assert states["JC"]["nombre"] == "Jalisco" and states["JC"]["muestra_pequena"]
    assert states["JC"]["ic95"] == [43.85, 100.0] and states["DF"]["ic95"] == [0.0, 39.03]
    assert states["AS"]["indice"] is None and states["AS"]["ic95"] is None


@pytest.mark.parametrize("k, n, expected", [(0, 10, [0.0, 27.75]), (5, 10, [23.66, 76.34]), (45, 940, [3.6, 6.35]),
                                            (0, 0, None)])
def test_wilson_interval(k, n, expected):
    from ansible.module_utils.kpi import wilson

    assert wilson(k, n) == expected


def test_period_filters_runs(results_db):
    k = padron_kpis(results_db, "2026-10-01", "2026-10-31")
    assert [r["run_id"] for r in k["corridas"]] == ["run1"]
    assert k["indicadores"]["poblacion_actualizada"]["numerador"] == 6
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
    with open_store(path, providers=lab_providers(**THIRD_PROVIDER)) as store:
        ticket_through(store, "renapo", t0, 2 * h, 5 * h)                 # deployed the same day: 3 h
        ticket_through(store, "renapo", t0, 2 * h, dt.timedelta(days=3))  # Thursday: attention breached
        ticket_through(store, "sat", t0, None, None, contact_after=dt.timedelta(days=8))  # first contact breached
    return path


def test_lead_time_and_sla_compliance(tickets_db):
    k = ticket_kpis(tickets_db, now="2026-12-10T10:00:00-06:00", providers=lab_providers(**THIRD_PROVIDER))
    leads = k["tiempo_despliegue"]["despliegues"]
    assert [(d["servicio"], d["horas_habiles"], d["dias_habiles"]) for d in leads] == [
        ("renapo", 3.0, 0), ("renapo", 25.0, 3)]  # Mon 12-18, Tue, Wed, Thu 9-10
    assert k["tiempo_despliegue"]["mediana_horas_habiles"] == 14.0
    assert k["cumplimiento_sla"]["renapo"]["first_contact"] == {"a_tiempo": 2, "vencidos": 0, "en_curso": 0,
                                                                "cumplimiento": 100.0}
    assert k["cumplimiento_sla"]["renapo"]["attention"]["cumplimiento"] == 50.0
    assert k["cumplimiento_sla"]["sat"]["first_contact"]["vencidos"] == 1
    assert k["cumplimiento_sla"]["sat"]["attention"]["cumplimiento"] is None
    # Every registry provider has its row, a third one defined only in inventory included (no ticket yet).
    assert list(k["cumplimiento_sla"]) == ["renapo", "sat", "ine"]
    assert k["cumplimiento_sla"]["ine"]["first_contact"] == {"a_tiempo": 0, "vencidos": 0, "en_curso": 0,
                                                             "cumplimiento": None}


def test_a_third_providers_tickets_count_with_its_own_sla_days(tmp_path):
    providers = lab_providers(**THIRD_PROVIDER)  # ine: first contact in 3 business days, attention in 2
    t0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=CDMX)  # Monday
    with open_store(str(tmp_path / "t.db"), providers=providers) as store:
        # First contact on Thursday 26 (3 business days: due Thursday 18:00) is on time for ine; 4 days late is not.
        ticket_through(store, "ine", t0, None, None, contact_after=dt.timedelta(days=3, hours=1))
        ticket_through(store, "ine", t0, None, None, contact_after=dt.timedelta(days=4))
    k = ticket_kpis(str(tmp_path / "t.db"), now="2026-12-10T10:00:00-06:00", providers=providers)
    assert k["cumplimiento_sla"]["ine"]["first_contact"] == {"a_tiempo": 1, "vencidos": 1, "en_curso": 0,
                                                             "cumplimiento": 50.0}
    d = compute(_empty_results(tmp_path), str(tmp_path / "t.db"),
                providers=providers)["definiciones"]["cumplimiento_sla"]
    assert "primer contacto en 5 días hábiles (RENAPO, SAT), 3 (INE)" in d
    assert "atención en 1 día hábil (RENAPO, SAT), 2 (INE)" in d


def _empty_results(tmp_path):
    path = str(tmp_path / "empty.db")
    padron_batch.open_results(path).close()
    return path


def test_no_ticket_store_means_empty_ticket_kpis(tmp_path):
    k = ticket_kpis(str(tmp_path / "missing.db"), providers=lab_providers())
    assert k["tickets"] == 0 and k["tiempo_despliegue"]["mediana_horas_habiles"] is None
    assert not (tmp_path / "missing.db").exists()


def test_compute_carries_definitions_that_name_numerator_and_denominator(results_db, tickets_db):
    providers = lab_providers()
    k = compute(results_db, tickets_db, providers=providers,
                policy=SlaPolicy.from_options(days={"sat": {"attention": 2}}, providers=providers))
    d = k["definiciones"]
    assert set(d) == {"cobertura", "poblacion_actualizada", "inconsistencias", "bajas", "mortalidad", "opinion",
                      "tiempo_despliegue", "cumplimiento_sla"}
    for key in ("poblacion_actualizada", "inconsistencias", "bajas", "mortalidad", "opinion", "cumplimiento_sla"):
        assert "(numerador)" in d[key] or "(numerador de cada uno)" in d[key], key
        assert "(denominador)" in d[key], key
    assert "entre todos los registros del padrón (denominador)" in d["poblacion_actualizada"]
    assert "activo" in d["poblacion_actualizada"] and "iguales a los del padrón" in d["poblacion_actualizada"]
    assert "entre los registros encontrados en RENAPO (denominador)" in d["bajas"]
    assert "Incluye las bajas por defunción (BD)" in d["bajas"] and "forma parte de las bajas" in d["mortalidad"]
    assert "incluidos los no enviados" in d["inconsistencias"]
    assert "menos de 30 registros" in d["mortalidad"]
    assert "9:00 a 18:00, hora del centro de México" in d["tiempo_despliegue"]
    # Names from the registry: "del SAT" from SAT's prose name "el SAT"; the SLA override of one provider shows.
    assert d["opinion"].startswith("Opinión de cumplimiento del SAT:") and "que el SAT no tiene" in d["opinion"]
    assert "atención en 1 día hábil (RENAPO), 2 días hábiles (SAT)" not in d["cumplimiento_sla"]
    assert "atención en 1 día hábil (RENAPO), 2 (SAT)" in d["cumplimiento_sla"]
    assert k["proveedores"]["padron"]["name"] == "renapo" and k["proveedores"]["opinion"]["name"] == "sat"


def test_the_padron_provider_is_the_registrys_and_names_every_text(tmp_path):
    """A registry whose CURP provider is a third one: its runs only, its name in every definition and heading; the
    runs of another provider over the same store are left out."""
    path = str(tmp_path / "r.db")
    db = padron_batch.open_results(path)
    add_run(db, "ine1", "2026-10-05T10:00:00-06:00", [("found", "AN", "M", "1980-01-01", "DF")] * 3, provider="ine")
    add_run(db, "ren1", "2026-10-06T10:00:00-06:00", [("found", "BD", "M", "1940-01-01", "DF")] * 2,
            provider="renapo")
    db.close()
    providers = {"ine": THIRD_PROVIDER["ine"], "sat": lab_providers()["sat"]}
    k = compute(path, None, providers=providers)
    assert [r["run_id"] for r in k["corridas"]] == ["ine1"]
    assert k["indicadores"]["mortalidad"]["numerador"] == 0
    assert "encontrados en INE" in k["definiciones"]["bajas"] and "RENAPO" not in json.dumps(k["definiciones"])
    html = build(k)["kpi_report.html"]
    assert "Cobertura de la consulta a INE" in html and "Indicadores del servicio de consulta INE/SAT" in html
    assert "RENAPO" not in html
    # Naming the other provider shows its runs; a provider the registry lacks is refused naming the registry's.
    assert [r["run_id"] for r in compute(path, None, providers=lab_providers(**THIRD_PROVIDER),
                                         provider="renapo")["corridas"]] == ["ren1"]
    with pytest.raises(KpiError, match="unknown provider 'renapo'.*ine, sat"):
        compute(path, None, providers=providers, provider="renapo")


# ---------------------------------------------------------------- the report

def test_report_documents_hold_the_same_numbers(results_db, tickets_db):
    k = compute(results_db, tickets_db, now="2026-12-10T10:00:00-06:00", providers=lab_providers())
    docs = build(k, basename="r")
    html = docs["r.html"]
    assert html.startswith("<!DOCTYPE html>") and 'lang="es-MX"' in html
    assert not re.search(r"<script|<link|https?://(?!www\.w3\.org/2000/svg)", html)  # nothing fetched
    for text in k["definiciones"].values():
        assert str(markupsafe.escape(text)) in html
    assert html.count("<svg") == 8  # 4 trends, bajas, age bands, entidades, SLA (no RFC run: no opinion chart)
    assert "No hay consultas de opinión de cumplimiento en el periodo." in html
    assert "Indicadores del servicio de consulta RENAPO/SAT" in html and "Cobertura de la consulta a RENAPO" in html
    # es-MX and local time in words, headings written.
    assert "41.67 %" in html and "5 de 12 registros del padrón" in html and "3 de 9 registros encontrados" in html
    assert "Datos al 5 de noviembre de 2026, 10:00" in html and "Jalisco *" in html
    assert "Cumplimiento sla" not in html and "Tiempo despliegue" not in html
    rows = list(csv.DictReader(io.StringIO(docs["r.csv"])))
    top = {r["indicador"]: r for r in rows if r["seccion"] == "indicador"}
    assert (top["bajas"]["valor"], top["bajas"]["numerador"], top["bajas"]["denominador"]) == ("33.33", "3", "9")
    assert [r["dimension"] for r in rows if r["seccion"] == "tendencia" and r["indicador"] == "mortalidad"] == [
        "run1", "run2"]
    assert {r["dimension"] for r in rows if r["seccion"] == "mortalidad_por_entidad"} >= {"JC Jalisco",
                                                                                         "NE Nacido en el extranjero"}
    assert json.loads(docs["r.json"])["indicadores"] == k["indicadores"]


@pytest.mark.parametrize("cell, safe", [
    ('=HYPERLINK("http://x","NL")', '\'=HYPERLINK("http://x","NL")'), ("+52 55", "'+52 55"), ("-1+1", "'-1+1"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tX", "'\tX"), ("Jalisco", "Jalisco"), (-3.5, -3.5), (None, None)])
def test_csv_cells_never_run_as_formulas(cell, safe):
    from ansible.module_utils.kpi_report import neutralise, to_csv

    assert neutralise(cell) == safe
    text = to_csv({"inconsistencias_por_causa": {cell if isinstance(cell, str) else "x": {
        "valor": 1.0, "numerador": 1, "denominador": 1}}})
    assert not any(line.split(",")[2].startswith(("=", "+", "@")) for line in text.splitlines()[1:])


@pytest.mark.parametrize("value, text", [(1000, "1,000"), (2000000, "2,000,000"), (10.5, "10.5"), (82.50, "82.5"),
                                         (0, "0"), (None, "s/d"), (1234.567, "1,234.57")])
def test_es_mx_numbers(value, text):
    from ansible.module_utils.formato import numero, porcentaje

    assert numero(value) == text
    assert porcentaje(value) == ("s/d" if value is None else text + " %")


def test_local_time_in_words_whatever_the_stored_zone(monkeypatch):
    from ansible.module_utils.formato import duracion, fecha_hora, fecha_larga

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert fecha_hora("2026-12-01T20:05:00+00:00") == "1 de diciembre de 2026, 14:05"
        assert fecha_hora("2026-12-01T14:05:00-06:00") == "1 de diciembre de 2026, 14:05"
        assert fecha_hora("2026-12-02T03:30:00+00:00") == "1 de diciembre de 2026, 21:30"  # still the 1st locally
        assert fecha_larga("2026-12-02T03:30:00+00:00") == "1 de diciembre de 2026"
        assert duracion(dt.timedelta(days=1, hours=2, minutes=5)) == "1 día 2 h"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_charts_draw_their_values():
    svg = line_chart([("05/10", 12.5), ("05/11", 20.0)], "Tendencia")
    assert svg.count("<circle") == 2 and "<polyline" in svg and "12.5 %" in svg and ">100<" not in svg
    bars = bar_chart([("BD", 4.5), ("BSU <x>", 0.4)], "Bajas", note=["1,045 reg.", "4 reg."], colors=["#111", "#ccc"])
    assert bars.count("<rect") == 2 and "BSU &lt;x&gt;" in bars and "4.5 % (1,045 reg.)" in bars
    assert 'fill="#ccc"' in bars
    assert "Sin datos" in line_chart([], "Vacía") and "Sin datos" in bar_chart([], "Vacía")


def _module(args: dict):
    """`ansible localhost -m kpi_report` (the module as a playbook runs it)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, ANSIBLE_CONFIG=str(root / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(root / ".venv" / "bin" / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={root / '.venv' / 'bin' / 'python'}", "-m", "kpi_report",
                           "-a", json.dumps(args)], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_module_takes_store_and_never_shows_a_dsn_password(results_db, tickets_db, tmp_path):
    providers = lab_providers()
    providers["renapo"]["endpoint"] = "127.0.0.1:1"  # as a playbook hands it over: templated
    templates = str(Path(__file__).resolve().parents[2] / "templates" / "report")
    ok = _module({"providers": providers, "results_db": results_db, "tickets_db": tickets_db,
                  "output_dir": str(tmp_path / "out"), "template_dir": templates})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads((tmp_path / "out" / "kpi_report.json").read_text())["tickets"] == 3  # the alias still works
    secret = "s3cr3t-Pass"
    bad = _module({"providers": providers, "results_db": results_db, "output_dir": str(tmp_path / "out"),
                   "template_dir": templates,
                   "store": f"postgresql://kpi:{secret}@127.0.0.1:9/tickets?connect_timeout=2"})
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0 and secret not in out and "kpi:********@127.0.0.1:9/tickets" in out, out
