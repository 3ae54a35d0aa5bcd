"""Steps 2.1–2.2 of the procedure: the observations that stop a request until the requester corrects it.

Pure code: no Ansible import. `evaluate(request, catalog)` returns a list of Observation; empty = no observations.

`request` is a `mail_intake.ServiceRequest` (a stored ticket: `ServiceRequest.from_ticket(ticket)`) or a flat
mapping with its field names.
`catalog` maps each system the DGTIC administers to the providers it has a convenio for, each named as the provider
registry knows it (its name, display name or an alias), e.g. `{"Padrón de Productores": [<provider>, ...]}` (names
compared folded: accents, case and spacing ignored). `providers` is the registry (providers.py): the services that
exist and how the observations name them (long_name; the list of display names when a request names none).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ansible.module_utils.mail_intake import EMAIL_RE
from ansible.module_utils.providers import fold, registry

DEFAULT_INSTITUTIONAL_DOMAINS = ("agricultura.gob.mx",)
# Director de Área or higher; feminine forms accepted. "Subdirector de Área" and "Jefe de Departamento" are not.
DEFAULT_RANKS = (
    "director de area",
    "director adjunto",
    "director general adjunto",
    "director general",
    "coordinador general",
    "jefe de unidad",
    "titular",
    "oficial mayor",
    "subsecretario",
    "secretario",
)
REQUIRED_FIELDS = {
    "requester": "nombre del solicitante (Solicitante)",
    "requester_email": "correo electrónico institucional del solicitante (Correo)",
    "administrative_unit": "unidad administrativa (Unidad Administrativa)",
    "system": "sistema o aplicación (Sistema)",
    "service": "servicio: {choices} (Servicio)",
    "forwarded_by": "nombre de quien turna la solicitud (Turnado por)",
    "forwarded_by_rank": "cargo de quien turna la solicitud (Cargo)",
}


def choices(providers) -> str:
    """The registry's display names as a Spanish choice: 'RENAPO o SAT', 'RENAPO, SAT o INE'."""
    names = [p.display_name for p in registry(providers)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} o {names[-1]}"


@dataclass(frozen=True)
class Observation:
    code: str
    message_es: str
    field: str | None = None


def _value(request, name: str):
    value = request.get(name) if isinstance(request, Mapping) else getattr(request, name, None)
    if isinstance(value, str):
        value = value.strip() or None
    return value


def _rank_pattern(rank: str) -> str:
    # A secretary of state ("Secretaria") and an office secretary share a word: only the bare title or "... de <ramo>".
    if rank == "secretario":
        return r"secretari[oa](?: de .*)?$"
    words = rank.split()
    words[0] = {"director": "directora?", "coordinador": "coordinadora?", "jefe": "jef[ea]",
                "subsecretario": "subsecretari[oa]"}.get(words[0], re.escape(words[0]))
    return r"\s".join(words[:1] + [re.escape(w) for w in words[1:]]) + r"\b"


def rank_sufficient(rank: str, ranks: Iterable[str] = DEFAULT_RANKS) -> bool:
    """True when the stated rank is Director de Área or higher (titles like 'Lic.' or 'Encargado de' ignored)."""
    text = fold(rank)
    text = re.sub(r"^(?:(?:lic|ing|mtro|mtra|dr|dra|c|arq)\.?\s+)+", "", text)
    text = re.sub(r"^encargad[oa] (?:del despacho )?de (?:la )?", "", text)
    text = re.sub(r"^direccion de area", "director de area", text)
    return any(re.match(_rank_pattern(fold(r)), text) for r in ranks)


def _domain_allowed(address: str, domains: Iterable[str]) -> bool:
    domain = address.rpartition("@")[2].lower()
    return any(domain == d.lower() or domain.endswith("." + d.lower()) for d in domains)


def evaluate(
    request,
    catalog: Mapping[str, Iterable[str]],
    institutional_domains: Iterable[str] = DEFAULT_INSTITUTIONAL_DOMAINS,
    ranks: Iterable[str] = DEFAULT_RANKS,
    *,
    providers,
) -> list[Observation]:
    """Every observation of the request at once, in a stable order (fields first, then rules). `providers`: the
    provider registry."""
    known = registry(providers)
    found: list[Observation] = []
    for name, label in REQUIRED_FIELDS.items():
        if _value(request, name) is None:
            found.append(Observation("MISSING_FIELD", f"Falta el dato: {label.format(choices=choices(known))}.",
                                     name))

    email_addr = _value(request, "requester_email")
    if email_addr is not None:
        if not EMAIL_RE.fullmatch(email_addr):
            found.append(Observation("INVALID_EMAIL", f"El correo «{email_addr}» no es una dirección válida.",
                                     "requester_email"))
        elif not _domain_allowed(email_addr, institutional_domains):
            allowed = ", ".join(f"@{d}" for d in institutional_domains)
            found.append(Observation("EMAIL_NOT_INSTITUTIONAL",
                                     f"El correo «{email_addr}» no es institucional; use una cuenta {allowed}.",
                                     "requester_email"))

    rank = _value(request, "forwarded_by_rank")
    if rank is not None and not rank_sufficient(rank, ranks):
        found.append(Observation("RANK_INSUFFICIENT",
                                 f"La solicitud debe ser turnada por un Director de Área o superior; "
                                 f"el cargo indicado es «{rank}».", "forwarded_by_rank"))

    service = _value(request, "service")
    if service is not None:
        named = service if service in known else known.from_text(service)
        if named is None:
            found.append(Observation("UNKNOWN_SERVICE", f"El servicio «{service}» no existe; indique "
                                     f"{choices(known)}.", "service"))
        service = named

    system = _value(request, "system")
    if system is not None:
        # A catalog entry names a provider as people do (name, display name, alias): read through the registry.
        systems = {fold(name): (name, {known.from_text(s) or fold(s) for s in services})
                   for name, services in catalog.items()}
        entry = systems.get(fold(system))
        if entry is None:
            found.append(Observation("UNKNOWN_SYSTEM",
                                     f"El sistema «{system}» no está en el catálogo de sistemas administrados "
                                     f"por la DGTIC.", "system"))
        elif service is not None and service not in entry[1]:
            found.append(Observation("NO_CONVENIO",
                                     f"El sistema «{entry[0]}» no tiene convenio con {known.get(service).long_name}.",
                                     "service"))
    return found
