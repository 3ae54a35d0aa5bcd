"""The Mesa de Servicios board over a real SQLite ticket store: open tickets ordered by urgency with both SLA clocks,
state, age, next step and timeline; monitor tickets apart; closed ones left out; local time in words."""
import datetime as dt

from ansible.module_utils.board import collect, render
from ansible.module_utils.sla import SlaPolicy

from tests.providers import THIRD_PROVIDER, lab_providers
from tests.unit.stores import LAB, open_lab

CDMX = dt.timezone(dt.timedelta(hours=-6))
NOW = dt.datetime(2026, 12, 2, 10, 0, tzinfo=CDMX)  # Wednesday


def test_board_orders_by_urgency_and_keeps_monitor_tickets_apart(tmp_path):
    policy = SlaPolicy.from_options(non_working_days={2026: []})
    with open_lab(str(tmp_path / "t.db"), policy=policy) as store:
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
        data = collect(store, NOW, policy, providers=LAB)
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
    assert data["monitoreo"][0]["siguiente_paso"] == ("Mesa de Servicios: darse por enterada y solicitar la "
                                                      "renovación a RENAPO.")
    assert data["avisos"] == [] and data["al_texto"] == "2 de diciembre de 2026, 10:00"
    assert "Estado al 2 de diciembre de 2026, 10:00" in page and "4 tickets abiertos" in page
    assert page.index("Atrasada") < page.index("Próxima") < page.index("Fresca") < page.index("Vence en 15 días")


def test_a_third_provider_on_the_board(tmp_path):
    """INE exists only in the inventory overlay: its tickets, SLA days and names come from the registry."""
    with_ine = lab_providers(**THIRD_PROVIDER)
    policy = SlaPolicy.from_options(non_working_days={2026: []}, providers=with_ine)
    with open_lab(str(tmp_path / "t.db"), policy=policy, providers=with_ine) as store:
        # Monday 30 Nov 2026 10:00: first contact 3 business days (Tue 1, Wed 2, Thu 3) -> due Thu 3 Dec 18:00.
        ticket = store.create("ine", actor="t", now=dt.datetime(2026, 11, 30, 10, tzinfo=CDMX),
                              requester={"name": "Ine Pérez"}).ticket
        store.transition(ticket["id"], "folio_issued", actor="mesa", now=dt.datetime(2026, 11, 30, 11, tzinfo=CDMX))
        store.transition(ticket["id"], "requester_validated", actor="enlace", reason="personal",
                         now=dt.datetime(2026, 11, 30, 12, tzinfo=CDMX))
        monitor = store.create("sat", actor="monitor", source="monitor", now=NOW - dt.timedelta(hours=2)).ticket
        data = collect(store, NOW, policy, providers=with_ine)
        page = render(data)
    assert ticket["first_contact_due"] == "2026-12-03T18:00:00-06:00"
    (view,) = data["solicitudes"]
    assert view["folio"] == "DGTIC-INE-2026-000001" and view["servicio"] == "ine"
    assert view["siguiente_paso"] == "Esperar a que INE entregue el certificado renovado por correo."
    assert data["monitoreo"][0]["id"] == monitor["id"]
    assert data["monitoreo"][0]["siguiente_paso"].endswith("solicitar la renovación al SAT.")
    assert data["servicios"] == {"renapo": "RENAPO", "sat": "SAT", "ine": "INE"}
    assert "<td>INE</td>" in page
