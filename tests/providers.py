"""The lab inventory's provider registry, for unit tests: the same data the playbooks pass as `providers`."""
import copy
from pathlib import Path

import yaml

_PATH = Path(__file__).resolve().parent.parent / "inventories" / "lab" / "group_vars" / "all" / "providers.yml"
_DATA = yaml.safe_load(_PATH.read_text())["procedure_providers"]


def _untemplated(value):
    """An endpoint the inventory builds from a lab variable ("{{ lab_renapo_endpoint }}") becomes a closed port, as
    if templated: unit tests run no lab, and a module given the raw text would try to template it."""
    return "127.0.0.1:1" if isinstance(value, str) and "{{" in value else value


def lab_providers(**extra):
    """A fresh copy of the lab's `procedure_providers` (lab endpoints as a closed port), plus `extra` providers."""
    data = copy.deepcopy(_DATA)
    for spec in data.values():
        for key in ("endpoint", "server_name"):
            if key in spec:
                spec[key] = _untemplated(spec[key])
    data.update(copy.deepcopy(extra))
    return data


# A third provider defined as inventory would: a trust provider whose consultation reuses RENAPO's strategy.
THIRD_PROVIDER = {
    "ine": {"kind": "trust", "display_name": "INE", "long_name": "INE (verificación de credencial)",
            "folio_prefix": "INE", "aliases": ["ine", "credencial"], "sender_domains": ["ine.mx"],
            "sla_days": {"first_contact": 3, "attention": 2}, "consultation": {"strategy": "curp_soap"},
            "evidence": {"accept": ["endpoint", "operator"], "operators": 1}},
}
