"""observations.evaluate: steps 2.1–2.2, table-driven."""
import functools

import pytest
from ansible.module_utils import observations
from ansible.module_utils.mail_intake import ServiceRequest, parse_message
from ansible.module_utils.observations import rank_sufficient

from tests.providers import THIRD_PROVIDER, lab_providers

LAB = lab_providers()
evaluate = functools.partial(observations.evaluate, providers=LAB)  # the lab inventory's registry

CATALOG = {"Padrón de Productores": ["renapo", "sat"], "SIAP Apoyos": ["renapo"]}
CLEAN = {
    "requester": "Juan Pérez López",
    "requester_email": "juan.perez@agricultura.gob.mx",
    "administrative_unit": "Dirección General de Fomento a la Agricultura",
    "system": "padron  de PRODUCTORES",
    "service": "renapo",
    "forwarded_by": "Lic. María Gómez",
    "forwarded_by_rank": "Directora de Área",
}


def codes(request, **kw):
    return [(o.code, o.field) for o in evaluate(request, CATALOG, **kw)]


def test_clean_request_has_no_observations():
    assert evaluate(ServiceRequest(**CLEAN), CATALOG) == []
    assert evaluate(CLEAN, CATALOG) == []  # a mapping (ticket row) works too


@pytest.mark.parametrize("field", list(CLEAN))
def test_each_missing_field_is_named(field):
    found = evaluate({**CLEAN, field: "  "}, CATALOG)
    assert [(o.code, o.field) for o in found] == [("MISSING_FIELD", field)]
    assert found[0].message_es.startswith("Falta el dato:")


def test_everything_missing_lists_every_field_at_once():
    assert [f for c, f in codes(ServiceRequest()) if c == "MISSING_FIELD"] == list(CLEAN)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"requester_email": "juan@gmail.com"}, [("EMAIL_NOT_INSTITUTIONAL", "requester_email")]),
        ({"requester_email": "juan@agricultura.gob.mx.evil.com"}, [("EMAIL_NOT_INSTITUTIONAL", "requester_email")]),
        ({"requester_email": "juan@senasica.agricultura.gob.mx"}, []),
        ({"requester_email": "no es correo"}, [("INVALID_EMAIL", "requester_email")]),
        ({"forwarded_by_rank": "Subdirector de Área"}, [("RANK_INSUFFICIENT", "forwarded_by_rank")]),
        ({"forwarded_by_rank": "Jefe de Departamento"}, [("RANK_INSUFFICIENT", "forwarded_by_rank")]),
        ({"forwarded_by_rank": "Secretaria particular"}, [("RANK_INSUFFICIENT", "forwarded_by_rank")]),
        ({"system": "Sistema Desconocido"}, [("UNKNOWN_SYSTEM", "system")]),
        ({"system": "SIAP Apoyos", "service": "sat"}, [("NO_CONVENIO", "service")]),
        ({"service": "IMSS"}, [("UNKNOWN_SERVICE", "service")]),
        ({"requester_email": "x@yahoo.com", "forwarded_by_rank": "Enlace", "system": "Otro"},
         [("EMAIL_NOT_INSTITUTIONAL", "requester_email"), ("RANK_INSUFFICIENT", "forwarded_by_rank"),
          ("UNKNOWN_SYSTEM", "system")]),
    ],
)
def test_rules(changes, expected):
    assert codes({**CLEAN, **changes}) == expected


def test_institutional_domains_are_configurable():
    req = {**CLEAN, "requester_email": "ana@senasica.gob.mx"}
    assert codes(req) == [("EMAIL_NOT_INSTITUTIONAL", "requester_email")]
    assert codes(req, institutional_domains=["agricultura.gob.mx", "senasica.gob.mx"]) == []


@pytest.mark.parametrize("rank", [
    "Director de Área", "DIRECTORA DE AREA", "director  de   área de sistemas", "Director General Adjunto",
    "Directora General", "Jefe de Unidad", "Jefa de Unidad", "Titular de la Unidad de Administración",
    "Subsecretario de Agricultura", "Secretario", "Secretaria de Agricultura y Desarrollo Rural",
    "Lic. Director de Área", "Encargado del Despacho de la Dirección de Área", "Coordinadora General",
])
def test_ranks_director_de_area_or_higher(rank):
    assert rank_sufficient(rank)


@pytest.mark.parametrize("rank", [
    "Subdirector de Área", "Subdirectora", "Jefe de Departamento", "Enlace", "Secretaria particular",
    "Analista", "Director",
])
def test_ranks_below_director_de_area(rank):
    assert not rank_sufficient(rank)


def test_observation_messages_are_spanish_and_quote_the_value():
    (obs,) = evaluate({**CLEAN, "forwarded_by_rank": "Subdirector de Área"}, CATALOG)
    assert "Director de Área o superior" in obs.message_es and "«Subdirector de Área»" in obs.message_es


def test_evaluates_a_parsed_request_end_to_end():
    raw = (b"From: mesa@agricultura.gob.mx\nSubject: Solicitud\nContent-Type: text/plain; charset=utf-8\n\n"
           b"Solicitante: Ana Ruiz\nCorreo: ana@gmail.com\nSistema: SIAP Apoyos\nServicio: SAT\n")
    parsed = parse_message(raw, providers=LAB)
    assert [(o.code, o.field) for o in evaluate(parsed.request, CATALOG)] == [
        ("MISSING_FIELD", "administrative_unit"), ("MISSING_FIELD", "forwarded_by"),
        ("MISSING_FIELD", "forwarded_by_rank"), ("EMAIL_NOT_INSTITUTIONAL", "requester_email"),
        ("NO_CONVENIO", "service"),
    ]


def test_service_observations_name_the_registry_providers():
    (missing,) = evaluate({**CLEAN, "service": None}, CATALOG)
    assert missing.message_es == "Falta el dato: servicio: RENAPO o SAT (Servicio)."
    (unknown,) = evaluate({**CLEAN, "service": "IMSS"}, CATALOG)
    assert unknown.message_es == "El servicio «IMSS» no existe; indique RENAPO o SAT."
    (convenio,) = evaluate({**CLEAN, "system": "SIAP Apoyos", "service": "sat"}, CATALOG)
    assert convenio.message_es == "El sistema «SIAP Apoyos» no tiene convenio con SAT (opinión de cumplimiento)."


def test_a_third_provider_defined_in_inventory_only():
    """INE exists only in the inventory overlay: the observations list it and its long name, no code names it."""
    with_ine = lab_providers(**THIRD_PROVIDER)
    catalog = {**CATALOG, "Credencial Digital": ["INE"]}  # a catalog names providers as people do
    found = observations.evaluate({**CLEAN, "service": "ine"}, catalog, providers=with_ine)
    assert [(o.code, o.field) for o in found] == [("NO_CONVENIO", "service")]  # Padrón has no convenio with INE
    assert observations.evaluate({**CLEAN, "system": "Credencial Digital", "service": "credencial"}, catalog,
                                 providers=with_ine) == []
    (convenio,) = observations.evaluate({**CLEAN, "system": "SIAP Apoyos", "service": "ine"}, catalog,
                                        providers=with_ine)
    assert convenio.message_es == "El sistema «SIAP Apoyos» no tiene convenio con INE (verificación de credencial)."
    (unknown,) = observations.evaluate({**CLEAN, "service": "IMSS"}, catalog, providers=with_ine)
    assert unknown.message_es == "El servicio «IMSS» no existe; indique RENAPO, SAT o INE."
    # Without INE in the registry, "INE" is a service that does not exist.
    assert codes({**CLEAN, "service": "INE"}) == [("UNKNOWN_SERVICE", "service")]
