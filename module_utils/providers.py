# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The provider registry: one definition per certificate provider, read by every layer.

A provider is a service whose certificate this office renews (RENAPO, SAT, and whatever the DGTIC consumes next). Its
whole definition lives in inventory, ``procedure_providers`` (inventories/*/group_vars/all/providers.yml); nothing in
the code names a provider. Each entry::

    renapo:
      kind: trust                  # trust: hosts trust its CA (a bundle); identity: hosts present its cert + key
      display_name: RENAPO         # how people read it ("RENAPO", "SAT")
      long_name: RENAPO (consulta de CURP)   # in notices and the oficio
      prose_name: RENAPO           # inside a Spanish sentence ("el SAT"); defaults to display_name
      folio_prefix: RENAPO         # DGTIC-<prefix>-<year>-<number>
      aliases: [renapo, segob]     # words in a request's "Servicio:" that name it (accents/case folded)
      sender_domains: [renapo.gob.mx]        # its deliveries come only from these, DKIM-authenticated
      sla_days: {first_contact: 5, attention: 1}             # business days (procedimiento, "Tiempo de atención")
      consultation: {strategy: curp_soap}     # how a consultation proves the service works (consulta.py)
      evidence: {accept: [endpoint, operator, authenticated_mail], operators: 1}   # trust kind: what approves an anchor
      endpoint: host:port          # the provider's live endpoint (anchor evidence, expiry monitoring)
      server_name: renapo.lab      # the name it answers to (SNI)

Modules take the dict as their ``providers`` option (doc fragment ``providers``) and build a :class:`Registry`;
a definition with a defect is refused with a message naming the provider and the key. Stdlib only: this runs on the
controller and on hosts.
"""
import re
import unicodedata
from dataclasses import dataclass, field

KINDS = ("trust", "identity")
# The consultation strategies consulta.py implements; a provider names the one its web service speaks.
STRATEGIES = ("curp_soap", "rfc_opinion")
CLOCKS = ("first_contact", "attention")
# procedimiento-renapo.md, "Tiempo de atención": first contact 5 business days, attention 1.
DEFAULT_SLA_DAYS = {"first_contact": 5, "attention": 1}
FOLIO_FORMAT = "DGTIC-{prefix}-{year:04d}-{number:06d}"
KEYS = ("kind", "display_name", "long_name", "prose_name", "folio_prefix", "aliases", "sender_domains", "sla_days",
        "consultation", "evidence", "endpoint", "server_name")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
_PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class ProviderError(ValueError):
    """A provider definition with a defect, or a provider the registry does not hold."""


def fold(text):
    """Lower case, no accents, single spaces: how people's words (labels, names, aliases) are compared."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str
    display_name: str
    long_name: str
    prose_name: str
    folio_prefix: str
    aliases: tuple
    sender_domains: tuple
    sla_days: dict = field(hash=False)
    consultation: dict = field(hash=False)
    evidence: dict = field(hash=False)
    endpoint: str = ""
    server_name: str = ""

    def folio(self, year, number):
        return FOLIO_FORMAT.format(prefix=self.folio_prefix, year=int(year), number=int(number))

    def as_dict(self):
        return {"name": self.name, "kind": self.kind, "display_name": self.display_name,
                "long_name": self.long_name, "prose_name": self.prose_name, "folio_prefix": self.folio_prefix,
                "aliases": list(self.aliases), "sender_domains": list(self.sender_domains),
                "sla_days": dict(self.sla_days), "consultation": dict(self.consultation),
                "evidence": dict(self.evidence), "endpoint": self.endpoint, "server_name": self.server_name}


def _strings(name, key, value):
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ProviderError(f"provider {name!r}: {key} must be a list of non-empty strings, not {value!r}")
    return tuple(v.strip() for v in value)


def _text(name, key, value, default):
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise ProviderError(f"provider {name!r}: {key} must be a string, not {value!r}")
    return value.strip()


def provider_from(name, spec):
    """One Provider from its inventory entry; raises ProviderError naming the provider and the defective key."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ProviderError(f"provider name {name!r} must be 2-32 lower-case letters, digits or '_', starting with a "
                            "letter (it is the ticket's service and part of file and lock names)")
    if not isinstance(spec, dict):
        raise ProviderError(f"provider {name!r}: its definition must be a mapping, not {type(spec).__name__}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise ProviderError(f"provider {name!r}: unknown key(s) {', '.join(unknown)}; keys are {', '.join(KEYS)}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ProviderError(f"provider {name!r}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    display = _text(name, "display_name", spec.get("display_name"), name.upper())
    prefix = _text(name, "folio_prefix", spec.get("folio_prefix"), name.upper()).upper()
    if not _PREFIX_RE.match(prefix):
        raise ProviderError(f"provider {name!r}: folio_prefix {prefix!r} must be 2-16 letters or digits, starting "
                            "with a letter")
    domains = tuple(d.lower() for d in _strings(name, "sender_domains", spec.get("sender_domains")))
    for domain in domains:
        if not _DOMAIN_RE.match(domain):
            raise ProviderError(f"provider {name!r}: sender domain {domain!r} is not a domain name")
    days = dict(DEFAULT_SLA_DAYS)
    raw_days = spec.get("sla_days") or {}
    if not isinstance(raw_days, dict):
        raise ProviderError(f"provider {name!r}: sla_days must map {', '.join(CLOCKS)} to business days")
    for clock, value in raw_days.items():
        if clock not in CLOCKS or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProviderError(f"provider {name!r}: sla_days {clock!r} must be one of {', '.join(CLOCKS)} with a "
                                f"whole number of business days >= 0, got {value!r}")
        days[clock] = value
    consultation = spec.get("consultation") or {}
    if not isinstance(consultation, dict):
        raise ProviderError(f"provider {name!r}: consultation must be a mapping with a strategy")
    strategy = consultation.get("strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise ProviderError(f"provider {name!r}: consultation strategy must be one of {', '.join(STRATEGIES)}, "
                            f"not {strategy!r}")
    evidence = spec.get("evidence") or {}
    if not isinstance(evidence, dict):
        raise ProviderError(f"provider {name!r}: evidence must be a mapping (accept, operators)")
    aliases = tuple(fold(a) for a in _strings(name, "aliases", spec.get("aliases")))
    return Provider(
        name=name, kind=kind, display_name=display,
        long_name=_text(name, "long_name", spec.get("long_name"), display),
        prose_name=_text(name, "prose_name", spec.get("prose_name"), display),
        folio_prefix=prefix, aliases=tuple(dict.fromkeys((fold(name), fold(display)) + aliases)),
        sender_domains=domains, sla_days=days, consultation=dict(consultation), evidence=dict(evidence),
        endpoint=_text(name, "endpoint", spec.get("endpoint"), ""),
        server_name=_text(name, "server_name", spec.get("server_name"), ""))


class Registry:
    """The providers of one inventory, in its order. Built from ``procedure_providers`` (a dict) or a Registry."""

    def __init__(self, providers):
        if isinstance(providers, Registry):
            providers = providers.as_dict()
        if not isinstance(providers, dict) or not providers:
            raise ProviderError("the provider registry (procedure_providers in inventory) is empty or not a mapping: "
                                "define at least one provider in group_vars/all/providers.yml")
        self._providers = {}
        for name, spec in providers.items():
            self._providers[name] = provider_from(name, spec)
        self._check_unique("folio_prefix", lambda p: [p.folio_prefix])
        self._check_unique("sender domain", lambda p: list(p.sender_domains))
        self._check_unique("alias", lambda p: list(p.aliases))
        prefixes = "|".join(re.escape(p.folio_prefix) for p in self._providers.values())
        self.folio_re = re.compile(r"\bDGTIC-(" + prefixes + r")-(\d{4})-(\d{6})\b", re.IGNORECASE)

    def _check_unique(self, what, values):
        seen = {}
        for provider in self._providers.values():
            for value in values(provider):
                if value in seen and seen[value] != provider.name:
                    raise ProviderError(f"providers {seen[value]!r} and {provider.name!r} share the {what} {value!r}; "
                                        "each must name one provider")
                seen[value] = provider.name

    # --- lookups ------------------------------------------------------------------------------------------------
    def __contains__(self, name):
        return name in self._providers

    def __iter__(self):
        return iter(self._providers.values())

    def __len__(self):
        return len(self._providers)

    def names(self):
        return tuple(self._providers)

    def get(self, name):
        """The provider called `name`; raises ProviderError listing the registry's providers."""
        try:
            return self._providers[name]
        except (KeyError, TypeError):
            raise ProviderError(f"unknown provider {name!r}; the registry (procedure_providers) has "
                                f"{', '.join(self._providers)}") from None

    def of_kind(self, kind):
        return tuple(p for p in self._providers.values() if p.kind == kind)

    def default(self):
        """The provider a request that names none is filed under until corrected: the registry's first."""
        return next(iter(self._providers.values()))

    def from_text(self, text):
        """The provider a person's words name ("RENAPO", "Servicio: consulta SAT"), or None when they name none or
        more than one. Whole words, accents and case folded."""
        words = f" {re.sub(r'[^a-z0-9_]+', ' ', fold(text or ''))} "
        found = {p.name for p in self._providers.values() for alias in p.aliases
                 if f" {re.sub(r'[^a-z0-9_]+', ' ', alias).strip()} " in words}
        return found.pop() if len(found) == 1 else None

    def for_domain(self, domain):
        """The provider whose sender domains include `domain` exactly (lower-cased), or None."""
        domain = (domain or "").strip().lower().rstrip(".")
        for provider in self._providers.values():
            if domain in provider.sender_domains:
                return provider
        return None

    def domains(self):
        """{sender domain: provider name} over the whole registry."""
        return {d: p.name for p in self._providers.values() for d in p.sender_domains}

    def parse_folio(self, text):
        """(provider, year, number) of the first folio in `text`, or None."""
        match = self.folio_re.search(text or "")
        if not match:
            return None
        prefix = match.group(1).upper()
        provider = next(p for p in self._providers.values() if p.folio_prefix == prefix)
        return provider, int(match.group(2)), int(match.group(3))

    def as_dict(self):
        return {p.name: {k: v for k, v in p.as_dict().items() if k != "name"} for p in self._providers.values()}


def registry(providers):
    """A Registry from a module option (dict or Registry); raises ProviderError."""
    return providers if isinstance(providers, Registry) else Registry(providers)


def checked(providers, service=None):
    """The registry a module was given, with `service` (when given) checked against it; raises ProviderError with
    the message the module shows."""
    try:
        known = registry(providers)
    except ProviderError as e:
        raise ProviderError(f"provider registry (providers): {e}") from None
    if service is not None and service not in known:
        raise ProviderError(f"unknown service {service!r}; the provider registry (procedure_providers) has "
                            f"{', '.join(known.names())}")
    return known
