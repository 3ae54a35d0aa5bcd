"""The procedure's KPIs (DESIGN.md §7) from the padrón consultation results and the ticket store.

Pure code (stdlib + the project's sla/ticket_store/consulta/padron_batch/providers): no Ansible import. Every
aggregation over results runs in the results store, SQLite or PostgreSQL (GROUP BY over the run's rows; the same SQL,
a 0/1 CASE where PostgreSQL cannot sum a comparison); Python only touches the grouped rows, so millions of stored
results cost seconds and little memory. Percentages are rounded to two decimals; each KPI carries its numerator and
denominator, and its definition (DEFINITIONS, shown on the report) names both.

Denominators, per run (a run is one pass over one padrón file):
  padrón      every record of the padrón file (población actualizada)
  con resultado  records with a definitive result, the never-sent ones included (inconsistencias); equal to the
              padrón once the run is complete; records whose consultation failed after every retry are left out
              and counted as "sin respuesta"
  encontrados records the provider answered EXITOSO (bajas, mortalidad, estatus, mortality by age band and entidad)
  opinión     consultations of the padrón's RFCs with an answer (each opinion's share)

Providers come from the registry (module_utils/providers.py): the padrón's KPIs are those of the runs of one provider
whose consultation strategy is curp_soap, the opinions those of one with rfc_opinion (by default the registry's first
of each; a run stored before runs recorded their provider counts for either), and the definitions name them by their
registry names. SLA compliance is per registry provider, each with its own sla_days.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sqlite3
import statistics

from ansible.module_utils.consulta import ENTIDADES, OPINIONS, STATUS_ACTIVE, STATUS_INACTIVE
from ansible.module_utils.padron_batch import (
    CURP_SOAP,
    RFC_OPINION,
    PadronError,
    consulted_provider,
    open_results,
    results_exist,
)
from ansible.module_utils.providers import CLOCKS, registry
from ansible.module_utils.sla import (
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
MIN_SAMPLE = 30  # below this many found records a rate by entidad or age band is marked as a small sample
PADRON_KPIS = ("poblacion_actualizada", "inconsistencias", "bajas", "mortalidad")
OPINION_KPIS = {"opinion_positiva": "POSITIVA", "opinion_negativa": "NEGATIVA",
                "sin_obligaciones": "INSCRITO SIN OBLIGACIONES", "no_inscrito": "NO INSCRITO"}
# Causes of inconsistency, in the order the report lists them (a record may have more than one).
CAUSES = ("nombre", "fecha_nacimiento", "sexo", "no_encontrada", "invalida_renapo", "mal_formada", "duplicada")
# {curp}: the padrón provider's display name; {rfc}/{de_rfc}/{rfc_prose}: the opinion provider's ("SAT", "del SAT",
# "el SAT"); the other fields are filled by compute().
DEFINITIONS = {
    "cobertura": "Cobertura de la consulta: registros del padrón (renglones del archivo); enviados a {curp} (CURP "
                 "consultadas); no enviados (CURP mal formadas —estructura o dígito verificador— o repetidas en el "
                 "padrón, que nunca se consultan); con respuesta definitiva de {curp}; sin respuesta (consultas que "
                 "fallaron tras los reintentos y se repiten al reanudar la corrida).",
    "poblacion_actualizada": "Población actualizada: registros cuya CURP {curp} encontró (EXITOSO) con estatus activo "
                             "(AN, AH, RCC, RCN o CRA) y con nombre, fecha de nacimiento y sexo iguales a los del "
                             "padrón (numerador), entre todos los registros del padrón (denominador).",
    "inconsistencias": "Inconsistencias: registros con al menos una causa —nombre, fecha de nacimiento o sexo "
                       "distintos de los de {curp}; CURP no encontrada (01/06); CURP no válida según {curp} "
                       "(01/09); CURP mal formada o repetida en el padrón, que no se envía— (numerador), entre los "
                       "registros del padrón con resultado, incluidos los no enviados (denominador). Un registro con "
                       "varias causas cuenta una vez.",
    "bajas": "Bajas: registros encontrados en {curp} con estatus CURP de baja (BAP, BSU, BD, BDM, BDP, BJD y los "
             "anteriores BDA, BCC, BCN) (numerador), entre los registros encontrados en {curp} (denominador). "
             "Incluye las bajas por defunción (BD), que se muestran también como índice de mortalidad.",
    "mortalidad": "Índice de mortalidad (estatus de supervivencia): registros encontrados en {curp} con estatus BD, "
                  "baja por defunción (numerador), entre los registros encontrados en {curp} (denominador); forma "
                  "parte de las bajas. Por rango de edad y por entidad de nacimiento se da el intervalo de confianza "
                  "de 95 % (Wilson) y se marca con * el grupo con menos de {min} registros encontrados, cuyo índice "
                  "es poco confiable.",
    "opinion": "Opinión de cumplimiento {de_rfc}: RFC del padrón con opinión positiva, negativa o de inscrito sin "
               "obligaciones, y RFC que {rfc_prose} no tiene inscritos (numerador de cada uno), entre las consultas "
               "de los RFC del padrón a {rfc} con respuesta (denominador). Los RFC mal formados no se envían.",
    "tiempo_despliegue": "Tiempo de despliegue: desde que se recibe el certificado renovado hasta que todos los "
                         "servidores quedan verificados con una consulta real; en horas hábiles (lunes a viernes, "
                         "{h0}:00 a {h1}:00, hora del centro de México, sin días inhábiles) y en días hábiles.",
    "cumplimiento_sla": "Cumplimiento de SLA por servicio: relojes cumplidos a tiempo (numerador) entre relojes "
                        "cumplidos o vencidos (denominador); primer contacto en {fc} desde la recepción de la "
                        "solicitud y atención en {at} desde la recepción del certificado.",
}


# Per run: con resultado, no enviados, enviados, encontrados, inconsistentes, bajas, BD, actualizados, sin respuesta.
def _b(pg: bool, expr: str) -> str:
    """A condition as a 0/1 integer: SQLite sums the comparison itself (fast), PostgreSQL needs a CASE."""
    return f"CASE WHEN {expr} THEN 1 ELSE 0 END" if pg else expr


def _per_run(pg: bool) -> str:
    return (f"SELECT run_id, SUM(revisado), SUM({_b(pg, 'attempts = 0')}), SUM({_b(pg, 'attempts > 0')}), "  # noqa: S608
            "SUM(exitoso), SUM(inconsistente), SUM(baja), SUM(defuncion), SUM("
            + _b(pg, "exitoso = 1 AND inconsistente = 0 AND status_curp IN ("
                 + ", ".join(f"'{s}'" for s in STATUS_ACTIVE) + ")")
            + "), COUNT(*) - SUM(revisado), MAX(consulted_at) FROM results GROUP BY run_id")


_PER_RUN = _per_run(False)
_AGE_BAND = "CASE " + " ".join(f"WHEN edad BETWEEN {lo} AND {hi} THEN {i}"
                               for i, (_label, lo, hi) in enumerate(AGE_BANDS)) + " END"


class KpiError(Exception):
    """The KPIs cannot be computed; the message names the defect."""


def pct(numerator: int, denominator: int) -> float | None:
    return round(100.0 * numerator / denominator, 2) if denominator else None


def _kpi(numerator: int, denominator: int) -> dict:
    return {"valor": pct(numerator, denominator), "numerador": numerator, "denominador": denominator}


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson score interval of k/n, in percent: sound for small n and for 0 or n events."""
    if not n:
        return None
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [round(100 * max(0.0, centre - half), 2), round(100 * min(1.0, centre + half), 2)]


def _rate(k: int, n: int, min_sample: int) -> dict:
    return {"registros": n, "defunciones": k, "indice": pct(k, n), "ic95": wilson(k, n),
            "muestra_pequena": n < min_sample}


def _bounds(period_start, period_end) -> tuple[str, str]:
    """Period as ISO string bounds [start, end) comparable with stored consulted_at values."""
    start = dt.date.fromisoformat(str(period_start)) if period_start else dt.date(1900, 1, 1)
    end = dt.date.fromisoformat(str(period_end)) if period_end else dt.date(9999, 12, 30)
    if end < start:
        raise KpiError(f"the period ends ({end}) before it starts ({start})")
    return start.isoformat(), (end + dt.timedelta(days=1)).isoformat()


def padron_kpis(db_path: str, period_start=None, period_end=None, min_sample: int = MIN_SAMPLE,
                provider: str | None = None, opinion_provider: str | None = None) -> dict:
    """Per-run trend, the latest run's coverage, KPIs and breakdowns, and the opinions of the period's RFC runs.
    `provider` / `opinion_provider` keep the runs of that registry provider (and those stored before runs recorded
    their provider); None keeps every run."""
    if not results_exist(db_path):
        raise KpiError(f"the results database {db_path} does not exist; run playbooks/padron_consulta.yml first")
    lo, hi = _bounds(period_start, period_end)
    if str(db_path).startswith(("postgresql://", "postgres://")):
        try:
            db = open_results(db_path, create=False, readonly=True)
        except PadronError as e:
            raise KpiError(str(e)) from None
        pg, shown = True, db.dsn
    else:
        path = db_path[len("sqlite:///"):] if str(db_path).startswith("sqlite:///") else db_path
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        pg, shown = False, db_path
    try:
        if not _has_table(db, pg, "results"):
            raise KpiError(f"{shown} is not a padrón results database (no results table)")
        where, params = _of_provider(db, pg, "runs", provider)
        runs = db.execute(
            "SELECT run_id, started_at, finished_at, padron_total FROM runs WHERE started_at >= ? AND started_at < ? "  # noqa: S608
            f"{where} ORDER BY started_at, run_id", (lo, hi, *params)).fetchall()
        # The flags are 0/1 columns set at write time (padron_batch): one pass of integer SUMs per run.
        per_run = {r[0]: r for r in db.execute(_per_run(True) if pg else _PER_RUN)}
        trend = []
        for run_id, started, finished, total in runs:
            row = per_run.get(run_id) or (run_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, None)
            reviewed, not_sent, sent, found, inconsistent, bajas, bd, updated, errors = (n or 0 for n in row[1:10])
            trend.append({
                "run_id": run_id, "started_at": started, "finished_at": finished, "ultima_consulta": row[10],
                "cobertura": {"padron": total, "enviados": sent, "no_enviados": not_sent,
                              "con_respuesta": sent - errors, "sin_respuesta": errors, "con_resultado": reviewed,
                              "encontrados": found, "sin_resultado": total - reviewed},
                "poblacion_actualizada": _kpi(updated, total), "inconsistencias": _kpi(inconsistent, reviewed),
                "bajas": _kpi(bajas, found), "mortalidad": _kpi(bd, found)})
        latest = trend[-1] if trend else None
        breakdown = _breakdown(db, latest["run_id"], min_sample, pg) if latest else {}
        opinion = opinion_kpis(db, lo, hi, pg, opinion_provider)
    except PadronError as e:
        raise KpiError(str(e)) from None
    finally:
        db.close()
    return {"periodo": {"desde": period_start and str(period_start), "hasta": period_end and str(period_end)},
            "datos_al": max((r["ultima_consulta"] or "" for r in trend), default="") or None,
            "ultima_corrida": latest, "indicadores": {k: latest[k] for k in PADRON_KPIS} if latest else {},
            "corridas": trend, "muestra_minima": min_sample, "opinion": opinion, **breakdown}


def _of_provider(db, pg: bool, runs: str, provider: str | None) -> tuple[str, tuple]:
    """The SQL condition (and its parameters) keeping one provider's runs, when the store records providers."""
    if not provider:
        return "", ()
    if pg:
        known = db.execute("SELECT 1 FROM information_schema.columns WHERE table_name = ? AND column_name = "
                           "'provider'", (runs,)).fetchone()
    else:
        known = any(r[1] == "provider" for r in db.execute(f"PRAGMA table_info({runs})"))
    return ("AND (provider IS NULL OR provider = ?)", (provider,)) if known else ("", ())


def _has_table(db, pg: bool, name: str) -> bool:
    if pg:
        return db.execute("SELECT to_regclass(?)", (name,)).fetchone()[0] is not None
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None


def _breakdown(db, run_id: str, min_sample: int, pg: bool = False) -> dict:
    """The latest run's found records by statusCurp, age band and entidad (one GROUP BY), and its causes."""
    rows = db.execute(
        f"SELECT status_curp, {_AGE_BAND}, entidad, COUNT(*), SUM(defuncion) FROM results "  # noqa: S608
        "WHERE run_id = ? AND exitoso = 1 GROUP BY 1, 2, 3", (run_id,)).fetchall()
    causes = db.execute(
        "SELECT SUM(mismatch_nombre), SUM(mismatch_fecha_nacimiento), SUM(mismatch_sexo), "  # noqa: S608
        + ", ".join(f"SUM({_b(pg, c)})" for c in ("category = 'not_found'", "category = 'malformed' AND attempts > 0",
                                                   "category = 'malformed' AND attempts = 0",
                                                   "category = 'duplicate'"))
        + ", SUM(revisado) FROM results WHERE run_id = ?", (run_id,)).fetchone()
    found = sum(r[3] for r in rows)
    status, bands, states = {}, [[0, 0] for _band in AGE_BANDS], {code: [0, 0] for code in ENTIDADES}
    for code, band, entidad, n, bd in rows:
        if code:
            status[code] = status.get(code, 0) + n
        if band is not None:
            bands[band][0] += n
            bands[band][1] += bd or 0
        s = states.setdefault(entidad if entidad in ENTIDADES else "??", [0, 0])
        s[0] += n
        s[1] += bd or 0
    bajas = sorted(((c, n) for c, n in status.items() if c in STATUS_INACTIVE), key=lambda x: (-x[1], x[0]))
    reviewed = causes[-1] or 0
    return {
        "estatus_curp": [{"estatus": c, "registros": n, "pct": pct(n, found), "activo": c in STATUS_ACTIVE}
                         for c, n in sorted(status.items())],
        "bajas_por_estatus": [{"estatus": c, "registros": n, "pct": pct(n, found), "defuncion": c == "BD"}
                              for c, n in bajas],
        "mortalidad_por_edad": [{"rango": label, **_rate(bd, n, min_sample)}
                                for (label, _lo, _hi), (n, bd) in zip(AGE_BANDS, bands, strict=True)],
        "mortalidad_por_entidad": [{"entidad": e, "nombre": ENTIDADES.get(e, "Entidad no válida"),
                                    **_rate(bd, n, min_sample)} for e, (n, bd) in states.items()],
        "inconsistencias_por_causa": {c: _kpi(n or 0, reviewed) for c, n in zip(CAUSES, causes[:-1], strict=True)},
    }


def opinion_kpis(db, lo: str, hi: str, pg: bool = False, provider: str | None = None) -> dict | None:
    """Opinión de cumplimiento shares of the period's RFC runs (tables of padron_batch.run_rfc_batch), the latest
    run's as headline; None when the database holds no such run."""
    if not _has_table(db, pg, "sat_results"):
        return None
    where, params = _of_provider(db, pg, "sat_runs", provider)
    runs = db.execute("SELECT run_id, started_at, finished_at, padron_total FROM sat_runs WHERE started_at >= ? "  # noqa: S608
                      f"AND started_at < ? {where} ORDER BY started_at, run_id", (lo, hi, *params)).fetchall()
    if not runs:
        return None
    opinions = ", ".join(f"SUM({_b(pg, f'opinion = {o!r}')})" for o in OPINIONS)
    sums = ", ".join(f"SUM({_b(pg, c)})" for c in ("attempts > 0", "attempts = 0", "category = 'answered'",
                                                   "category = 'error'"))
    per_run = {r[0]: r for r in db.execute(
        f"SELECT run_id, {sums}, MAX(consulted_at), {opinions} FROM sat_results GROUP BY run_id")}  # noqa: S608
    trend = []
    for run_id, started, finished, total in runs:
        row = per_run.get(run_id) or (run_id, 0, 0, 0, 0, None, *([0] * len(OPINIONS)))
        sent, not_sent, answered, errors = (n or 0 for n in row[1:5])
        counts = dict(zip(OPINIONS, (n or 0 for n in row[6:]), strict=True))
        trend.append({"run_id": run_id, "started_at": started, "finished_at": finished, "ultima_consulta": row[5],
                      "cobertura": {"rfc": total, "enviados": sent, "no_enviados": not_sent,
                                    "con_respuesta": answered, "sin_respuesta": errors},
                      **{k: _kpi(counts[o], answered) for k, o in OPINION_KPIS.items()}})
    latest = trend[-1]
    return {"ultima_corrida": latest, "indicadores": {k: latest[k] for k in OPINION_KPIS}, "corridas": trend}


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


def ticket_kpis(store_path: str | None, now=None, policy: SlaPolicy | None = None, workday=WORKDAY,
                providers=None) -> dict:
    """Deploy lead time per ticket (certificate received → deployed, every host verified) in business hours of the
    procedure's zone, and SLA compliance per provider and clock (met on time over met or breached): every provider
    of the registry (`providers`, or the policy's), plus any other a ticket names."""
    policy = policy or SlaPolicy()
    if providers is not None:
        policy = policy.with_providers(providers)
    known = registry(providers) if providers is not None else policy.providers
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
                                                                  policy=policy, workday=workday),
                          "dias_habiles": business_days_between(t["certificate_received_at"], t["attended_at"],
                                                                policy.non_working_days)})
    hours = [x["horas_habiles"] for x in leads]
    services = list(known.names() if known is not None else ())
    services += sorted({t["service"] for t in tickets} - set(services))
    sla = {s: {c: {"a_tiempo": 0, "vencidos": 0, "en_curso": 0} for c in CLOCKS} for s in services}
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
                "mediana_horas_habiles": round(statistics.median(hours), 2) if hours else None,
                "promedio_horas_habiles": round(statistics.fmean(hours), 2) if hours else None,
                "maximo_dias_habiles": max((x["dias_habiles"] for x in leads), default=None)},
            "cumplimiento_sla": sla, "avisos": policy.warnings(now)}


def providers_shown(providers, provider: str | None = None, opinion_provider: str | None = None) -> dict:
    """The registry providers the report names: `padron` (curp_soap) and `opinion` (rfc_opinion), each
    {name, display_name, long_name, prose_name} or None when the registry has none of that strategy, and
    `servicios` {name: display_name} of every provider. KpiError for a provider the registry lacks."""
    reg = registry(providers)

    def pick(name, strategy):
        try:
            chosen = consulted_provider(reg, name, strategy)
        except PadronError as e:
            if name:
                raise KpiError(str(e)) from None
            return None
        return {k: getattr(chosen, k) for k in ("name", "display_name", "long_name", "prose_name")}

    return {"padron": pick(provider, CURP_SOAP), "opinion": pick(opinion_provider, RFC_OPINION),
            "servicios": {p.name: p.display_name for p in reg}}


def de(prose: str) -> str:
    """'de' before a provider's prose name, contracted as Spanish writes it: 'el SAT' -> 'del SAT'."""
    return "del " + prose[3:] if prose.lower().startswith("el ") else "de " + prose


def _days_text(per_provider: dict, names: dict, clock: str) -> str:
    """'5 días hábiles', or per provider when they differ: '5 días hábiles (RENAPO, SAT), 3 (INE)'."""
    groups = {}
    for service, days in per_provider.items():
        groups.setdefault(days[clock], []).append(names.get(service, service))

    def unit(n):
        return f"{n} día hábil" if n == 1 else f"{n} días hábiles"

    if len(groups) <= 1:
        return unit(next(iter(groups), 0))
    return ", ".join(f"{unit(n) if i == 0 else n} ({', '.join(who)})" for i, (n, who) in enumerate(groups.items()))


def compute(results_db: str, tickets_db: str | None = None, period_start=None, period_end=None, now=None,
            policy: SlaPolicy | None = None, workday=WORKDAY, min_sample: int = MIN_SAMPLE, providers=None,
            provider: str | None = None, opinion_provider: str | None = None) -> dict:
    """Every KPI of the report, with its Spanish definition. `providers` is the registry (procedure_providers);
    `provider` / `opinion_provider` name the padrón's and the opinions' providers (default: the registry's first
    provider of strategy curp_soap / rfc_opinion)."""
    if providers is None:
        raise KpiError("the KPI report needs the provider registry (procedure_providers)")
    shown = providers_shown(providers, provider, opinion_provider)
    policy = (policy or SlaPolicy()).with_providers(providers)
    result = padron_kpis(results_db, period_start, period_end, min_sample,
                         (shown["padron"] or {}).get("name"), (shown["opinion"] or {}).get("name"))
    result.update(ticket_kpis(tickets_db, now, policy, workday, providers))
    h0, h1 = (workday[0], workday[1]) if workday else (policy.opens.hour, policy.closes.hour)
    curp = (shown["padron"] or {}).get("display_name", "el proveedor")
    rfc = shown["opinion"] or {"display_name": "el proveedor", "prose_name": "el proveedor"}
    days = {s: policy.days_for(s) for s in result["cumplimiento_sla"]}
    names = {**{s: s for s in days}, **shown["servicios"]}
    fields = {"curp": curp, "rfc": rfc["display_name"], "rfc_prose": rfc["prose_name"], "de_rfc": de(rfc["prose_name"]),
              "min": min_sample, "h0": h0, "h1": h1, "fc": _days_text(days, names, "first_contact"),
              "at": _days_text(days, names, "attention")}
    result["definiciones"] = {key: text.format(**fields) for key, text in DEFINITIONS.items()}
    result["proveedores"] = shown
    return result
