"""The Mesa de Servicios board over a real SQLite ticket store: open tickets ordered by urgency with both SLA clocks,
state, age, next step and timeline; monitor tickets apart; closed ones left out; local time in words."""
import datetime as dt

from ansible.module_utils.board import collect, render
from ansible.module_utils.sla import SlaPolicy
from ansible.module_utils.ticket_store import open_store

CDMX = dt.timezone(dt.timedelta(hours=-6))
NOW = dt.datetime(2026, 12, 2, 10, 0, tzinfo=CDMX)  # Wednesday


def test_board_orders_by_urgency_and_keeps_monitor_tickets_apart(tmp_path):
    policy = SlaPolicy.from_options(non_working_days={2026: []})
    with open_store(str(tmp_path / "t.db"), policy=policy) as store:
        fresh = store.create("renapo", actor="t", now=NOW - dt.timedelta(hours=1), requester={"name": "Fresca"}).ticket
        late = store.create("sat", actor="t", now=dt.datetime(2026, 11, 16, 12, tzinfo=CDMX),
                            requester={"name": "Atrasada"}).ticket
        soon = store.create("renapo", actor="t", now=dt.datetime(2026, 11, 25, 12, tzinfo=CDMX),
                            requester={"name": "Próxima"}).ticket
        store.transition(soon["id"], "folio_issued", actor="mesa", now=dt.datetime(2026, 11, 25, 13, tzinfo=CDMX))
        store.transition(soon["id"], "requester_validated", actor="enlace", reason="personal de la Secretaría",
                         now=dt.datetime(2026, 11, 25, 13, tzinfo=CDMX))
        store.transition(soon["id"], "certificate_received", actor="mesa",
                         now=dt.datetime(2026, 12, 1, 12, tzinfo=CDMX))  # attention due Wed 18:00: 8 h left
        done = store.create("renapo", actor="t", now=dt.datetime(2026, 11, 2, 10, tzinfo=CDMX)).ticket
        store.transition(done["id"], "cancelled", actor="mesa", reason="duplicada por error",
                         now=dt.datetime(2026, 11, 2, 11, tzinfo=CDMX))
        monitor = store.create("renapo", actor="monitor", source="monitor", now=NOW - dt.timedelta(days=1),
                               requester={"name": "Vence en 15 días"}).ticket
        data = collect(store, NOW, policy)
        page = render(data)
    assert [t["id"] for t in data["solicitudes"]] == [late["id"], soon["id"], fresh["id"]]
    assert [t["id"] for t in data["monitoreo"]] == [monitor["id"]]
    assert data["resumen"] == {"abiertos": 4, "solicitudes": 3, "monitoreo": 1, "vencidos": 1, "por_vencer": 1}
    late_v, soon_v, fresh_v = data["solicitudes"]
    assert late_v["relojes"]["first_contact"]["estado"] == "breached"
    # Monday 16 November 2026 is a holiday: the clock starts on the 17th.
    assert late_v["relojes"]["first_contact"]["detalle"] == "venció el 24 de noviembre de 2026, 18:00"
    assert soon_v["relojes"]["attention"]["estado"] == "due_soon" and soon_v["urgencia"] == "due_soon"
    assert soon_v["relojes"]["first_contact"]["estado_nombre"] == "Cumplido"
    assert soon_v["siguiente_paso"].startswith("SOAS: validar el certificado")
    assert [e["que"] for e in soon_v["linea_de_tiempo"]] == [
        "Ticket abierto", "Recibida → Folio asignado", "Folio asignado → Solicitante validado",
        "Solicitante validado → Certificado recibido"]
    assert soon_v["linea_de_tiempo"][2]["detalle"] == "personal de la Secretaría"
    assert fresh_v["antiguedad"] == "1 h 0 min" and fresh_v["relojes"]["first_contact"]["estado"] == "on_time"
    assert data["monitoreo"][0]["siguiente_paso"].startswith("Mesa de Servicios: darse por enterada")
    assert data["avisos"] == [] and data["al_texto"] == "2 de diciembre de 2026, 10:00"
    assert "Estado al 2 de diciembre de 2026, 10:00" in page and "4 tickets abiertos" in page
    assert page.index("Atrasada") < page.index("Próxima") < page.index("Fresca") < page.index("Vence en 15 días")
