"""A ticket as a person reads it, in Spanish: state, SLA clocks in local time, the requester's observations in words,
the evidence behind the anchor it delivered, the work notes and the timeline.

Pure: it formats what `service_ticket_info` (ticket with `sla` and `audit`) and `trust_anchor_info` (registry
entries) return; library/ticket_view.py is the thin module around it. The requester's observations are recomputed
from the ticket's request data with observations.evaluate (the store keeps only their codes in the audit reason),
so the words are exactly those the observations notice carried. Providers are named as the registry
(providers.py, `procedure_providers`) names them for people: their display name.
"""
from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from ansible.module_utils.mail_intake import ServiceRequest
from ansible.module_utils.observations import evaluate
from ansible.module_utils.providers import registry

DEFAULT_TIMEZONE = "America/Mexico_City"

STATE_WORDS = {
    "received": "recibido",
    "observations": "con observaciones (espera la respuesta del solicitante)",
    "folio_issued": "folio asignado",
    "requester_validated": "solicitante validado (espera el certificado del proveedor)",
    "certificate_received": "certificado recibido (listo para renovar: playbooks/renew.yml)",
    "deploying": "instalando en los servidores",
    "deployed": "instalado y verificado en los servidores",
    "rolled_back": "revertido",
    "rejected": "rechazado",
    "notified": "notificado",
    "closed": "cerrado",
    "reopened": "reabierto",
    "cancelled": "cancelado",
    "duplicate": "duplicado",
    "acknowledged": "atendido por la Mesa",
}
CLOCK_WORDS = {"first_contact": "Primer contacto", "attention": "Atención"}
SLA_STATUS_WORDS = {"on_time": "en tiempo", "due_soon": "por vencer", "breached": "vencido"}
# Codes as the audit keeps them ("observaciones: MISSING_FIELD, ..."), for observations already answered.
OBSERVATION_CODE_WORDS = {
    "MISSING_FIELD": "faltaba un dato",
    "INVALID_EMAIL": "correo no válido",
    "EMAIL_NOT_INSTITUTIONAL": "correo no institucional",
    "RANK_INSUFFICIENT": "turnada por un cargo inferior a Director de Área",
    "UNKNOWN_SERVICE": "servicio desconocido",
    "UNKNOWN_SYSTEM": "sistema fuera del catálogo",
    "NO_CONVENIO": "sistema sin convenio con el servicio",
}
EVIDENCE_WORDS = {
    "claim": "lo que afirma el correo (no prueba nada por sí solo)",
    "authenticated_mail": "correo autenticado (DKIM) del proveedor con la huella en su oficio",
    "operator": "huella confirmada por un operador",
    "endpoint": "el certificado que presenta el servicio del proveedor",
    "seed": "lo que los servidores confiaban el primer día",
}
ANCHOR_STATE_WORDS = {"pending": "pendiente de aprobar", "approved": "aprobada", "retired": "retirada"}
_FINGERPRINT = re.compile(r"\b(?:[0-9A-F]{2}:){31}[0-9A-F]{2}\b")


def local_time(value, timezone: str = DEFAULT_TIMEZONE) -> str:
    """'08/12/2026 18:00' in `timezone` from an ISO-8601 moment; '—' for none."""
    if not value:
        return "—"
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is not None:
        moment = moment.astimezone(ZoneInfo(timezone))
    return moment.strftime("%d/%m/%Y %H:%M")


def state_words(state) -> str:
    return STATE_WORDS.get(state, str(state))


def sla_lines(sla: dict | None, timezone: str = DEFAULT_TIMEZONE) -> list[str]:
    """One line per SLA clock: due moment, status, and when it was met or how many business hours are left."""
    lines = []
    for clock, label in CLOCK_WORDS.items():
        c = (sla or {}).get(clock) or {}
        if not c.get("due"):
            lines.append(f"{label}: aún no corre")
            continue
        text = f"{label}: vence {local_time(c['due'], timezone)}, {SLA_STATUS_WORDS.get(c.get('status'), '?')}"
        if c.get("met_at"):
            text += f" (cumplido {local_time(c['met_at'], timezone)})"
        elif c.get("business_hours_left") is not None:
            text += f" (quedan {c['business_hours_left']:g} horas hábiles)"
        lines.append(text)
    return lines


def requester_observations(ticket: dict, catalog: dict | None, providers) -> list[str]:
    """The observations in words while the ticket waits for the requester's answer; [] otherwise."""
    if ticket.get("state") != "observations":
        return []
    return [o.message_es for o in evaluate(ServiceRequest.from_ticket(ticket), catalog or {}, providers=providers)]


def provider_words(name, providers) -> str:
    """A provider's display name (its registry name when the registry does not hold it: an old ticket's)."""
    return providers.get(name).display_name if name in providers else str(name or "?")


def observation_history(audit: list[dict]) -> list[str]:
    """Every round of observations the ticket had, in words from the audit's codes."""
    rounds = []
    for entry in audit or []:
        reason = entry.get("reason") or ""
        if entry.get("to_state") == "observations" and reason.startswith("observaciones:"):
            codes = [c.strip() for c in reason.split(":", 1)[1].split(",") if c.strip()]
            rounds.append(", ".join(OBSERVATION_CODE_WORDS.get(c, c) for c in codes))
    return rounds


def ticket_anchors(ticket: dict, anchors: list[dict]) -> list[dict]:
    """Registry entries behind this ticket's delivery: those recorded for its folio, or whose fingerprint its notes
    or audit name."""
    folio = ticket.get("folio")
    texts = [n.get("note") or "" for n in ticket.get("observations") or []]
    texts += [a.get("reason") or "" for a in ticket.get("audit") or []]
    named = {fp for t in texts for fp in _FINGERPRINT.findall(t.upper())}
    return [a for a in anchors or []
            if (folio and (a.get("ticket") == folio
                           or any(e.get("ticket") == folio for e in a.get("evidence") or [])))
            or (a.get("fingerprint") or "").upper() in named]


def anchor_lines(entry: dict, providers, timezone: str = DEFAULT_TIMEZONE) -> list[str]:
    lines = [f"{provider_words(entry.get('provider'), providers)} {entry.get('fingerprint')} ({entry.get('subject')}): "
             f"{ANCHOR_STATE_WORDS.get(entry.get('state'), entry.get('state'))}"
             + (f" por {entry['approved_by']} el {local_time(entry.get('approved_at'), timezone)}"
                if entry.get("approved_by") else "")]
    for e in entry.get("evidence") or []:
        detail = f": {e['detail']}" if e.get("detail") else ""
        lines.append(f"  - {EVIDENCE_WORDS.get(e.get('kind'), e.get('kind'))}{detail} "
                     f"({e.get('actor') or '?'}, {local_time(e.get('at'), timezone)})")
    return lines


def timeline_lines(audit: list[dict], timezone: str = DEFAULT_TIMEZONE) -> list[str]:
    """The state changes (the notes in between are the work notes, listed apart)."""
    lines = []
    for a in audit or []:
        if a.get("from_state") is not None and a.get("from_state") == a.get("to_state"):
            continue
        when = local_time(a.get("at"), timezone)
        change = (state_words(a.get("to_state")) if a.get("from_state") is None
                  else f"{state_words(a.get('from_state'))} -> {state_words(a.get('to_state'))}")
        lines.append(f"{when} {change} ({a.get('actor')}): {a.get('reason') or ''}".rstrip(": "))
    return lines


def render(ticket: dict, anchors: list[dict] | None = None, catalog: dict | None = None,
           timezone: str = DEFAULT_TIMEZONE, *, providers) -> dict:
    """The ticket as a person reads it: `lines` (printable, Spanish) and the parts apart (`observations` for the
    requester, `work_notes`, `anchors`, `timeline`). `providers`: the provider registry."""
    providers = registry(providers)
    requester = ticket.get("requester") or {}
    forwarded = ticket.get("forwarded_by") or {}
    observations = requester_observations(ticket, catalog, providers)
    history = observation_history(ticket.get("audit"))
    notes = [f"{local_time(n.get('at'), timezone)} {n.get('note')}" for n in ticket.get("observations") or []]
    mine = ticket_anchors(ticket, anchors or [])
    timeline = timeline_lines(ticket.get("audit"), timezone)
    lines = [f"Ticket {ticket.get('id')} — folio {ticket.get('folio') or '(sin folio)'} — "
             f"servicio {provider_words(ticket.get('service'), providers)}",
             f"Estado: {state_words(ticket.get('state'))}"]
    if ticket.get("cause"):
        lines.append(f"Causa: {ticket['cause']}")
    lines.append(f"Solicitante: {requester.get('name') or '?'} <{requester.get('email') or '?'}>, "
                 f"{requester.get('unit') or '?'}; sistema {requester.get('system') or '?'}")
    lines.append(f"Turnado por: {forwarded.get('name') or '?'} ({forwarded.get('rank') or 'cargo no indicado'})")
    lines.append(f"Recibido: {local_time(ticket.get('received_at') or ticket.get('created_at'), timezone)}")
    lines.append("Plazos (SLA, hora local):")
    lines += [f"  {s}" for s in sla_lines(ticket.get("sla"), timezone)]
    lines.append("Observaciones al solicitante:" + ("" if observations else " ninguna pendiente"))
    lines += [f"  - {o}" for o in observations]
    if history:
        lines.append("Rondas de observaciones: " + "; ".join(history))
    if ticket.get("hosts"):
        lines.append(f"Servidores: {', '.join(ticket['hosts'])}; verificados: "
                     f"{', '.join(ticket.get('verified_hosts') or []) or 'ninguno'}")
    if ticket.get("deployed_serial"):
        lines.append(f"Serie instalada: {ticket['deployed_serial']}")
    lines.append("Ancla de confianza y su evidencia:" + ("" if mine else " ninguna registrada para este ticket"))
    for entry in mine:
        lines += [f"  {s}" for s in anchor_lines(entry, providers, timezone)]
    lines.append("Notas de trabajo:" + ("" if notes else " ninguna"))
    lines += [f"  {n}" for n in notes]
    lines.append("Historial:")
    lines += [f"  {t}" for t in timeline]
    return {"lines": lines, "observations": observations, "observation_history": history, "work_notes": notes,
            "anchors": [e.get("fingerprint") for e in mine], "timeline": timeline,
            "state": ticket.get("state"), "state_es": state_words(ticket.get("state"))}
