"""The lab inventory's provider registry, for unit tests: the same data the playbooks pass as `providers`."""
import copy
from pathlib import Path

import yaml

_PATH = Path(__file__).resolve().parent.parent / "inventories" / "lab" / "group_vars" / "all" / "providers.yml"
_DATA = yaml.safe_load(_PATH.read_text())["procedure_providers"]


def lab_providers(**extra):
    """A fresh copy of the lab's `procedure_providers` (endpoints left as their Jinja text), plus `extra` providers."""
    data = copy.deepcopy(_DATA)
    data.update(copy.deepcopy(extra))
    return data


# A third provider defined as inventory would: a trust provider whose consultation reuses RENAPO's strategy.
THIRD_PROVIDER = {
    "ine": {"kind": "trust", "display_name": "INE", "long_name": "INE (verificación de credencial)",
            "folio_prefix": "INE", "aliases": ["ine", "credencial"], "sender_domains": ["ine.mx"],
            "sla_days": {"first_contact": 3, "attention": 2}, "consultation": {"strategy": "curp_soap"},
            "evidence": {"accept": ["endpoint", "operator"], "operators": 1}},
}
