"""SLA watch: which due-soon and breach notices the Mesa de Servicios must get now (playbooks/sla_watch.yml).

Pure selection, no I/O: given tickets as the ticket store returns them (with their `notices`), the SLA policy and
the moment, `due_notices` returns one notice per open ticket, clock and clock state (`due_soon`, then `breached`)
whose key is not yet recorded on the ticket. The key names the clock's due moment too, so a new attention clock
(a new delivery after a rollback) is watched afresh while a rerun of the same watch sends nothing twice. A clock
already breached when first seen gets the breach notice only (the due-soon one would arrive late and say less).
"""
from ansible.module_utils.notify import fecha_hora
from ansible.module_utils.sla import BREACHED, CLOCKS, DUE_SOON, iso, to_datetime
from ansible.module_utils.ticket_store import TERMINAL

NOTICE_OF = {DUE_SOON: "sla_due_soon", BREACHED: "sla_breached"}
CLOCK_NAMES_ES = {"first_contact": "primer contacto", "attention": "atención"}


def notice_key(clock, status, due):
    """The key a sent notice is recorded under on its ticket: `sla:<clock>:<status>:<due, local ISO>`."""
    return f"sla:{clock}:{status}:{iso(to_datetime(due))}"


def due_notices(tickets, policy, now):
    """The notices to send at `now`, oldest ticket first, each a dict: key, notice (template name), ticket_id,
    folio, service, state, clock, clock_name (Spanish), status, due (local ISO), due_text (in words),
    business_hours_left, requester."""
    out = []
    for ticket in tickets:
        if ticket["state"] in TERMINAL:
            continue
        sent = {n["key"] for n in ticket.get("notices") or ()}
        status = ticket.get("sla") or policy.ticket_status(ticket, now)
        for clock in CLOCKS:
            c = status[clock]
            if c["met_at"] is not None or c["status"] not in NOTICE_OF:
                continue
            key = notice_key(clock, c["status"], c["due"])
            if key in sent:
                continue
            out.append({
                "key": key, "notice": NOTICE_OF[c["status"]], "ticket_id": ticket["id"], "folio": ticket["folio"],
                "service": ticket["service"], "state": ticket["state"], "source": ticket["source"],
                "clock": clock, "clock_name": CLOCK_NAMES_ES[clock], "status": c["status"], "due": c["due"],
                "due_text": fecha_hora(c["due"]), "business_hours_left": c["business_hours_left"],
                "requester": (ticket.get("requester") or {}).get("name"),
            })
    return out
