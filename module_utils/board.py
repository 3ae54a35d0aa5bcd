"""The Mesa de Servicios board: its queue as one self-contained Spanish HTML page (the KPI report's style).

Pure code (stdlib + Jinja2 + the project's sla/formato/ticket_store): no Ansible import.
`collect(store, now, policy, providers)`
reads every open ticket with its SLA clocks (SlaPolicy.ticket_status), state, age, next step and timeline (audit
log and notes, oldest first); `render(data)` writes the page. Renewal requests come first, the ones that need
attention first (breached, then due soon, then by due moment); tickets the expiry monitor opened are listed apart.
Providers are named from the registry (providers.py): display_name on the board, prose_name inside a next step.
"""
from __future__ import annotations

import datetime as dt

from ansible.module_utils.formato import duracion, fecha_hora
from ansible.module_utils.kpi_report import DEFAULT_ORGANIZATION, environment
from ansible.module_utils.providers import registry
from ansible.module_utils.sla import BREACHED, CLOCKS, DUE_SOON, ON_TIME, SlaPolicy, now_local, to_datetime

FINAL = ("closed", "cancelled", "duplicate")
STATE_NAMES = {
    "received": "Recibida", "observations": "Con observaciones", "folio_issued": "Folio asignado",
    "requester_validated": "Solicitante validado", "certificate_received": "Certificado recibido",
    "deploying": "En despliegue", "deployed": "Desplegado y verificado", "rolled_back": "Revertido",
    "rejected": "Improcedente", "notified": "Conclusión notificada", "reopened": "Reabierto",
    "acknowledged": "Enterado", "closed": "Cerrado", "cancelled": "Cancelado", "duplicate": "Duplicado",
}
NEXT_STEP = {
    "received": "Mesa de Servicios: revisar los datos de la solicitud (observaciones o folio).",
    "observations": "Solicitante: responder con los datos corregidos; el reloj de primer contacto sigue corriendo.",
    "folio_issued": "Enlace administrativo: validar que el solicitante y quien turna sean personal de la Secretaría.",
    "requester_validated": "Esperar a que {provider} entregue el certificado renovado por correo.",
    "certificate_received": "SOAS: validar el certificado y desplegarlo (playbooks/renew.yml).",
    "deploying": "SOAS: concluir el despliegue; cada servidor se verifica con una consulta real.",
    "deployed": "Mesa de Servicios: notificar la conclusión al solicitante.",
    "rolled_back": "SOAS: corregir la causa de la reversión y repetir la actualización.",
    "rejected": "Enlace administrativo: enviar el oficio de respuesta.",
    "notified": "Mesa de Servicios: cerrar el ticket.",
    "reopened": "Mesa de Servicios: revisar por qué se reabrió y retomar el paso que corresponda.",
}
MONITOR_NEXT_STEP = {
    "received": "Mesa de Servicios: darse por enterada y solicitar la renovación {to_provider}.",
    "acknowledged": "Esperar la renovación; el ticket se cierra cuando el certificado se renueva.",
    "reopened": "Mesa de Servicios: revisar el vencimiento de nuevo.",
}
CLOCK_NAMES = {"first_contact": "Primer contacto", "attention": "Atención"}
STATUS_NAMES = {ON_TIME: "A tiempo", DUE_SOON: "Por vencer", BREACHED: "Vencido", None: "Sin iniciar"}
_URGENCY = {BREACHED: 0, DUE_SOON: 1, ON_TIME: 2, None: 3}


def _clock_view(clock: dict) -> dict:
    status = clock["status"]
    if clock["met_at"]:
        detail = ("cumplido a tiempo el " if status == ON_TIME else "cumplido tarde el ") + fecha_hora(clock["met_at"])
    elif status == BREACHED:
        detail = f"venció el {fecha_hora(clock['due'])}"
    elif status is None:
        detail = "aún no empieza"
    else:
        left = clock["business_hours_left"]
        detail = f"vence el {fecha_hora(clock['due'])}; quedan {left:,.1f} h hábiles".replace(".0 h", " h")
    return {"estado": status, "estado_nombre": STATUS_NAMES[status] if not clock["met_at"] else "Cumplido",
            "clase": status or "sin_reloj", "detalle": detail, "vence": clock["due"], "pendiente": not clock["met_at"]}


def _timeline(store, ticket: dict) -> list[dict]:
    """The ticket's audit log (state changes) and notes, oldest first, as a person reads them."""
    events = []
    for a in store.audit(ticket["id"]):
        before, after = (STATE_NAMES.get(a[k], a[k]) for k in ("from_state", "to_state"))
        change = (f"{before} → {after}" if a["from_state"] and a["from_state"] != a["to_state"] else
                  ("Ticket abierto" if not a["from_state"] else "Actualización"))
        events.append({"at": a["at"], "cuando": fecha_hora(a["at"]), "quien": a["actor"], "que": change,
                       "detalle": a["reason"] or ""})
    for note in ticket["observations"]:
        events.append({"at": note["at"], "cuando": fecha_hora(note["at"]), "quien": note["actor"], "que": "Nota",
                       "detalle": note["note"]})
    return sorted(events, key=lambda e: (to_datetime(e["at"]), e["que"] == "Nota"))


def _to(prose: str) -> str:
    """'a' + a provider's prose name, contracted the Spanish way: 'a RENAPO', 'al SAT'."""
    return f"al {prose[3:]}" if prose.lower().startswith("el ") else f"a {prose}"


def _view(store, ticket: dict, now: dt.datetime, policy: SlaPolicy, known) -> dict:
    status = policy.ticket_status(ticket, now)
    clocks = {c: _clock_view(status[c]) for c in CLOCKS}
    pending = [clocks[c] for c in CLOCKS if clocks[c]["pendiente"] and clocks[c]["estado"]]
    worst = min((c["estado"] for c in pending), key=_URGENCY.get, default=None)
    received = to_datetime(ticket["received_at"] or ticket["created_at"])
    provider = known.get(ticket["service"]).prose_name if ticket["service"] in known else ticket["service"]
    steps = MONITOR_NEXT_STEP if ticket["source"] == "monitor" else NEXT_STEP
    return {
        "id": ticket["id"], "folio": ticket["folio"] or f"#{ticket['id']}", "servicio": ticket["service"],
        "origen": ticket["source"], "estado": ticket["state"],
        "estado_nombre": STATE_NAMES.get(ticket["state"], ticket["state"]),
        "solicitante": ticket["requester"]["name"] or "", "correo": ticket["requester"]["email"] or "",
        "sistema": ticket["requester"]["system"] or "", "recibido": fecha_hora(received),
        "antiguedad": duracion(now - received),
        "dias_habiles": policy.business_days_between(received, now),
        "siguiente_paso": steps.get(ticket["state"], "Revisar el ticket.").format(provider=provider,
                                                                                  to_provider=_to(provider)),
        "causa": ticket["cause"] or "", "relojes": clocks, "urgencia": worst,
        "orden": (_URGENCY[worst], min((to_datetime(c["vence"]) for c in pending if c["vence"]), default=now),
                  ticket["id"]),
        "linea_de_tiempo": _timeline(store, ticket),
    }


def collect(store, now=None, policy: SlaPolicy | None = None, *, providers) -> dict:
    """Every open ticket as the board shows it: requests (most urgent first) and monitor tickets apart.
    `providers`: the provider registry (how each ticket's provider is named)."""
    known = registry(providers)
    policy = (policy or SlaPolicy()).with_providers(known)
    now = to_datetime(now) if now else now_local()
    views = [_view(store, t, now, policy, known) for t in store.find() if t["state"] not in FINAL]
    views.sort(key=lambda v: v["orden"])
    requests = [v for v in views if v["origen"] != "monitor"]
    monitor = [v for v in views if v["origen"] == "monitor"]
    for v in views:
        del v["orden"]
    return {"al": now.isoformat(timespec="seconds"), "al_texto": fecha_hora(now),
            "servicios": {p.name: p.display_name for p in known},
            "solicitudes": requests, "monitoreo": monitor,
            "resumen": {"abiertos": len(views), "solicitudes": len(requests), "monitoreo": len(monitor),
                        "vencidos": sum(v["urgencia"] == BREACHED for v in views),
                        "por_vencer": sum(v["urgencia"] == DUE_SOON for v in views)},
            "avisos": policy.warnings(now)}


def render(data: dict, title: str = "Tablero de la Mesa de Servicios", organization: str = DEFAULT_ORGANIZATION,
           template_dir=None) -> str:
    """The page; provider names come from `data["servicios"]` (collect() puts the registry's display names there)."""
    return environment(template_dir).get_template("board.html.j2").render(
        b=data, titulo=title, organizacion=organization, clock_names=CLOCK_NAMES, service_names=data["servicios"])
