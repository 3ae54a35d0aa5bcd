"""module_utils/ticket_view: a ticket as a person reads it, in Spanish."""
from __future__ import annotations

from ansible.module_utils import ticket_view
from ansible.module_utils.ticket_view import local_time, observation_history, sla_lines, ticket_anchors

from tests.providers import THIRD_PROVIDER, lab_providers

LAB = lab_providers()


def render(ticket, *args, **kwargs):
    """ticket_view.render with the lab inventory's registry."""
    kwargs.setdefault("providers", LAB)
    return ticket_view.render(ticket, *args, **kwargs)

CATALOG = {"Padrón de Productores": ["RENAPO", "SAT"]}
FP = ":".join(["AB"] * 32)


def ticket(**over):
    t = {"id": 1, "folio": None, "service": "renapo", "state": "observations",
         "requester": {"name": "Ana López Ruiz", "email": "ana.lopez@agricultura.gob.mx",
                       "unit": "Dirección General de Padrones y Registros", "system": "Padrón de Productores"},
         "forwarded_by": {"name": "Luis Pérez Gómez", "rank": None},
         "received_at": "2026-12-01T16:18:20-06:00",
         "sla": {"first_contact": {"due": "2026-12-08T18:00:00-06:00", "met_at": "2026-12-01T16:18:22-06:00",
                                   "status": "on_time", "business_hours_left": None},
                 "attention": {"due": None, "met_at": None, "status": None, "business_hours_left": None}},
         "observations": [{"at": "2026-12-01T16:18:22-06:00", "actor": "mesa.servicios",
                           "note": "Correo procesado: <a1@agricultura.gob.mx> [contenido 95b6]"}],
         "audit": [{"at": "2026-12-01T16:18:22-06:00", "actor": "mesa.servicios", "from_state": None,
                    "to_state": "received", "reason": "solicitud recibida por correo"},
                   {"at": "2026-12-01T16:18:22-06:00", "actor": "mesa.servicios", "from_state": "received",
                    "to_state": "observations", "reason": "observaciones: MISSING_FIELD"}]}
    t.update(over)
    return t


def test_local_time_converts_to_the_procedure_zone():
    assert local_time("2026-12-01T22:18:22+00:00") == "01/12/2026 16:18"
    assert local_time(None) == "—"


def test_observations_in_words_kept_apart_from_work_notes():
    view = render(ticket(), catalog=CATALOG)
    assert view["observations"] == ["Falta el dato: cargo de quien turna la solicitud (Cargo)."]
    assert view["work_notes"] == ["01/12/2026 16:18 Correo procesado: <a1@agricultura.gob.mx> [contenido 95b6]"]
    text = "\n".join(view["lines"])
    assert "Estado: con observaciones" in text
    assert text.index("Falta el dato") < text.index("Notas de trabajo:") < text.index("Correo procesado")


def test_answered_observations_stay_in_the_history_not_as_pending():
    view = render(ticket(state="requester_validated", folio="DGTIC-RENAPO-2026-000001",
                         forwarded_by={"name": "Luis Pérez Gómez", "rank": "Director de Área"}), catalog=CATALOG)
    assert view["observations"] == [] and view["observation_history"] == ["faltaba un dato"]
    assert "Observaciones al solicitante: ninguna pendiente" in view["lines"]


def test_sla_clocks_say_due_status_and_time_left():
    lines = sla_lines({"first_contact": {"due": "2026-12-08T18:00:00-06:00", "met_at": None, "status": "due_soon",
                                         "business_hours_left": 7.5}})
    assert lines == ["Primer contacto: vence 08/12/2026 18:00, por vencer (quedan 7.5 horas hábiles)",
                     "Atención: aún no corre"]


def test_anchor_evidence_matched_by_folio_or_fingerprint_in_notes():
    entry = {"provider": "renapo", "fingerprint": FP, "subject": "CN=RENAPO CA 2027", "state": "approved",
             "approved_by": "renew", "approved_at": "2026-12-01T17:00:00-06:00", "ticket": None,
             "evidence": [{"kind": "operator", "detail": "telefono", "actor": "jdoe",
                           "at": "2026-12-01T16:50:00-06:00", "ticket": "DGTIC-RENAPO-2026-000001"}]}
    other = {**entry, "fingerprint": ":".join(["CD"] * 32), "evidence": []}
    t = ticket(folio="DGTIC-RENAPO-2026-000001", state="closed")
    assert ticket_anchors(t, [entry, other]) == [entry]
    by_note = ticket(observations=[{"at": None, "note": f"Entrega con huella {FP.lower()}"}])
    assert ticket_anchors(by_note, [other, entry]) == [entry]
    text = "\n".join(render(t, [entry, other])["lines"])
    assert "aprobada por renew" in text and "huella confirmada por un operador: telefono (jdoe" in text


def test_timeline_in_words():
    view = render(ticket())
    assert view["timeline"][1] == ("01/12/2026 16:18 recibido -> con observaciones (espera la respuesta del "
                                   "solicitante) (mesa.servicios): observaciones: MISSING_FIELD")
    assert observation_history([{"to_state": "observations", "reason": "observaciones: RANK_INSUFFICIENT, X"}]) == [
        "turnada por un cargo inferior a Director de Área, X"]


def test_a_third_provider_is_named_by_the_registry():
    with_ine = lab_providers(**THIRD_PROVIDER)
    view = render(ticket(service="ine", state="requester_validated", folio="DGTIC-INE-2026-000001"),
                  providers=with_ine)
    assert view["lines"][0] == "Ticket 1 — folio DGTIC-INE-2026-000001 — servicio INE"
    (observation,) = [o for o in render(ticket(service="ine"), catalog=CATALOG, providers=with_ine)["observations"]
                      if "convenio" in o]
    assert observation.endswith("no tiene convenio con INE (verificación de credencial).")
