"""The procedure's KPIs (DESIGN.md §7) from the padrón consultation results and the ticket store.

Pure code (stdlib + the project's sla/ticket_store): no Ansible import. Every aggregation over results runs in
SQLite (GROUP BY over the run's rows); Python only touches the grouped rows, so millions of stored results cost
seconds and little memory. Percentages are rounded to two decimals; each KPI carries its numerator and denominator.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sqlite3
import statistics

from ansible.module_utils.consulta import STATUS_INACTIVE
from ansible.module_utils.sla import (
    CLOCKS,
    SERVICES,
    SlaPolicy,
    business_days_between,
    parse_business_hours,
    parse_days,
    to_datetime,
)
from ansible.module_utils.ticket_store import open_store

# (label, lowest age, highest age) of each age band; ages outside every band (unknown date) are not banded.
AGE_BANDS = (("menos de 30", 0, 29), ("30 a 44", 30, 44), ("45 a 59", 45, 59), ("60 a 74", 60, 74),
             ("75 y más", 75, 200))
WORKDAY = (9, 18)  # office hours (local time) counted as business hours
PADRON_KPIS = ("inconsistencias", "bajas", "mortalidad", "poblacion_actualizada")
DEFINITIONS = {
    "inconsistencias": "Porcentaje de inconsistencias: registros del padrón cuyos datos en RENAPO no coinciden con el "
                       "padrón (nombre, fecha de nacimiento o sexo), o cuya CURP no se encuentra en RENAPO, está mal "
                       "formada o está repetida en el padrón, entre los registros consultados.",
    "bajas": "Porcentaje de bajas: registros con un estatus CURP de baja (BAP, BSU, BD, BDM, BDP, BJD y los "
             "anteriores BDA, BCC, BCN), entre los registros consultados.",
    "mortalidad": "Índice de mortalidad (estatus de supervivencia): registros con estatus CURP BD (baja por "
                  "defunción), entre los registros consultados; también por rango de edad y por entidad.",
    "poblacion_actualizada": "Porcentaje de población actualizada: CURP distintas con respuesta EXITOSO de RENAPO "
                             "dentro del periodo, entre el total de registros del padrón.",
    "tiempo_despliegue": "Tiempo de despliegue: desde que se recibe el certificado renovado hasta que todos los "
                         "servidores quedan verificados con una consulta real; en horas hábiles (lunes a viernes, "
                         "{h0}:00 a {h1}:00, sin días inhábiles) y en días hábiles.",
    "cumplimiento_sla": "Cumplimiento de SLA por servicio: relojes cumplidos a tiempo entre relojes concluidos o "
                        "vencidos; primer contacto en {fc} días hábiles desde la recepción y atención en {at} día "
                        "hábil desde la recepción del certificado.",
}

_AGE_BAND = "CASE " + " ".join(f"WHEN edad BETWEEN {lo} AND {hi} THEN {i}"
                               for i, (_, lo, hi) in enumerate(AGE_BANDS)) + " END"


class KpiError(Exception):
    """The KPIs cannot be computed; the message names the defect."""


def pct(numerator: int, denominator: int) -> float | None:
    return round(100.0 * numerator / denominator, 2) if denominator else None


def _kpi(numerator: int, denominator: int) -> dict:
    return {"valor": pct(numerator, denominator), "numerador": numerator, "denominador": denominator}


def _bounds(period_start, period_end) -> tuple[str, str]:
    """Period as ISO string bounds [start, end) comparable with stored consulted_at values."""
    start = dt.date.fromisoformat(str(period_start)) if period_start else dt.date(1900, 1, 1)
    end = dt.date.fromisoformat(str(period_end)) if period_end else dt.date(9999, 12, 30)
    if end < start:
        raise KpiError(f"the period ends ({end}) before it starts ({start})")
    return start.isoformat(), (end + dt.timedelta(days=1)).isoformat()


def padron_kpis(db_path: str, period_start=None, period_end=None) -> dict:
    """Per-run trend, the latest run's KPIs and breakdowns, and the period's updated population."""
    if not os.path.exists(db_path):
        raise KpiError(f"the results database {db_path} does not exist; run playbooks/padron_consulta.yml first")
    lo, hi = _bounds(period_start, period_end)
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'results'").fetchone():
            raise KpiError(f"{db_path} is not a padrón results database (no results table)")
        runs = db.execute(
            "SELECT run_id, started_at, finished_at, padron_total FROM runs WHERE started_at >= ? AND started_at < ? "
            "ORDER BY started_at, run_id", (lo, hi)).fetchall()
        # The flags are 0/1 columns set at write time (padron_batch): one pass of integer SUMs per run.
        per_run = {r[0]: r for r in db.execute(
            "SELECT run_id, SUM(revisado), SUM(inconsistente), SUM(baja), SUM(defuncion), SUM(exitoso), "
            "COUNT(*) - SUM(revisado), MAX(consulted_at) FROM results GROUP BY run_id")}
        trend = []
        for run_id, started, finished, total in runs:
            row = per_run.get(run_id) or (run_id, 0, 0, 0, 0, 0, 0, None)
            reviewed, inconsistent, bajas, bd, exitoso, errors = (n or 0 for n in row[1:7])
            trend.append({"run_id": run_id, "started_at": started, "finished_at": finished, "padron_total": total,
                          "revisados": reviewed, "errores": errors, "ultima_consulta": row[7],
                          "inconsistencias": _kpi(inconsistent, reviewed), "bajas": _kpi(bajas, reviewed),
                          "mortalidad": _kpi(bd, reviewed), "poblacion_actualizada": _kpi(exitoso, total)})
        latest = trend[-1] if trend else None
        breakdown = _breakdown(db, latest["run_id"]) if latest else {}
        # Distinct CURPs over every run of the period, read in CURP order from the partial index (no sort).
        updated = db.execute("SELECT COUNT(*) FROM (SELECT curp FROM results WHERE exitoso = 1 AND consulted_at >= ? "
                             "AND consulted_at < ? GROUP BY curp)", (lo, hi)).fetchone()[0]
    finally:
        db.close()
    headline = {}
    if latest:
        headline = {k: latest[k] for k in ("inconsistencias", "bajas", "mortalidad")}
        headline["poblacion_actualizada"] = _kpi(updated, latest["padron_total"])
    return {"periodo": {"desde": period_start and str(period_start), "hasta": period_end and str(period_end)},
            "datos_al": max((r["ultima_consulta"] or "" for r in trend), default="") or None,
            "ultima_corrida": latest, "indicadores": headline, "corridas": trend, **breakdown}


def _breakdown(db: sqlite3.Connection, run_id: str) -> dict:
    """The latest run by statusCurp, age band, entidad and cause of inconsistency: one GROUP BY over its rows."""
    rows = db.execute(
        f"SELECT status_curp, {_AGE_BAND}, entidad, COUNT(*), SUM(defuncion) FROM results "  # noqa: S608
        "WHERE run_id = ? AND revisado = 1 GROUP BY 1, 2, 3", (run_id,)).fetchall()
    causes = db.execute(
        "SELECT SUM(mismatch_nombre), SUM(mismatch_fecha_nacimiento), SUM(mismatch_sexo), SUM(category = "
        "'not_found'), SUM(category = 'malformed'), SUM(category = 'duplicate') FROM results WHERE run_id = ?",
        (run_id,)).fetchone()
    reviewed = sum(r[3] for r in rows)
    status, bands, states = {}, [[0, 0] for _ in AGE_BANDS], {}
    for code, band, entidad, n, bd in rows:
        if code:
            status[code] = status.get(code, 0) + n
        if band is not None:
            bands[band][0] += n
            bands[band][1] += bd or 0
        s = states.setdefault(entidad or "??", [0, 0])
        s[0] += n
        s[1] += bd or 0
    bajas = sorted(((c, n) for c, n in status.items() if c in STATUS_INACTIVE), key=lambda x: (-x[1], x[0]))
    return {
        "estatus_curp": [{"estatus": c, "registros": n, "pct": pct(n, reviewed)} for c, n in sorted(status.items())],
        "bajas_por_estatus": [{"estatus": c, "registros": n, "pct": pct(n, reviewed)} for c, n in bajas],
        "mortalidad_por_edad": [{"rango": label, "registros": n, "defunciones": bd, "indice": pct(bd, n)}
                                for (label, _, _), (n, bd) in zip(AGE_BANDS, bands, strict=True)],
        "mortalidad_por_entidad": [{"entidad": e, "registros": n, "defunciones": bd, "indice": pct(bd, n)}
                                   for e, (n, bd) in sorted(states.items())],
        "inconsistencias_por_causa": dict(zip(
            ("nombre", "fecha_nacimiento", "sexo", "no_encontrada", "mal_formada", "duplicada"),
            (c or 0 for c in causes), strict=True)),
    }


def business_hours_between(start, end, extra=(), workday=None, policy: SlaPolicy | None = None) -> float:
    """Hours of office time between two instants, to 4 decimals (14:07 -> 15:30 on a business day = 1.3833): the
    business hours of business days in the procedure zone, whatever zone the instants are written in. The calendar
    is `policy`'s (default SlaPolicy(): MX holidays, Semana Santa, its DOF days) plus `extra` non-working days;
    `workday` ((9, 18) or '09:00-18:00') overrides its business hours."""
    policy = policy or SlaPolicy()
    opens, closes = parse_business_hours(workday) if workday is not None else (policy.opens, policy.closes)
    calendar = dataclasses.replace(policy, non_working_days=policy.non_working_days | parse_days(extra),
                                   opens=opens, closes=closes)
    return round(calendar.business_hours_between(start, end), 4)


def ticket_kpis(store_path: str | None, now=None, policy: SlaPolicy | None = None, workday=WORKDAY) -> dict:
    """Deploy lead time per ticket (certificate received → deployed, every host verified) and SLA compliance
    per service and clock (met on time over met or breached)."""
    policy = policy or SlaPolicy()
    now = to_datetime(now) if now else dt.datetime.now().astimezone()
    tickets = []
    if store_path:
        with open_store(str(store_path), policy=policy, create=False) as store:
            tickets = store.find()
    leads = []
    for t in tickets:
        if t["certificate_received_at"] and t["attended_at"]:
            leads.append({"folio": t["folio"] or f"#{t['id']}", "servicio": t["service"],
                          "certificado_recibido": t["certificate_received_at"], "desplegado": t["attended_at"],
                          "horas_habiles": business_hours_between(t["certificate_received_at"], t["attended_at"],
                                                                  policy.non_working_days, workday),
                          "dias_habiles": business_days_between(t["certificate_received_at"], t["attended_at"],
                                                                policy.non_working_days)})
    hours = [x["horas_habiles"] for x in leads]
    sla = {s: {c: {"a_tiempo": 0, "vencidos": 0, "en_curso": 0} for c in CLOCKS} for s in SERVICES}
    for t in tickets:
        status = policy.ticket_status(t, now)
        for clock in CLOCKS:
            c = status[clock]
            if c["status"] is None:
                continue
            key = "vencidos" if c["status"] == "breached" else ("a_tiempo" if c["met_at"] else "en_curso")
            sla[t["service"]][clock][key] += 1
    for clocks in sla.values():
        for c in clocks.values():
            c["cumplimiento"] = pct(c["a_tiempo"], c["a_tiempo"] + c["vencidos"])
    return {"tickets": len(tickets),
            "tiempo_despliegue": {
                "despliegues": leads,
                "mediana_horas_habiles": statistics.median(hours) if hours else None,
                "promedio_horas_habiles": round(statistics.fmean(hours), 2) if hours else None,
                "maximo_dias_habiles": max((x["dias_habiles"] for x in leads), default=None)},
            "cumplimiento_sla": sla}


def compute(results_db: str, tickets_db: str | None = None, period_start=None, period_end=None, now=None,
            policy: SlaPolicy | None = None, workday=WORKDAY) -> dict:
    """Every KPI of the report, with its Spanish definition."""
    policy = policy or SlaPolicy()
    result = padron_kpis(results_db, period_start, period_end)
    result.update(ticket_kpis(tickets_db, now, policy, workday))
    days = policy.days["renapo"]
    result["definiciones"] = {
        **DEFINITIONS,
        "tiempo_despliegue": DEFINITIONS["tiempo_despliegue"].format(h0=workday[0], h1=workday[1]),
        "cumplimiento_sla": DEFINITIONS["cumplimiento_sla"].format(fc=days["first_contact"], at=days["attention"]),
    }
    return result
