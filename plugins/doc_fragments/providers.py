# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `providers` option every module that needs the provider registry takes (module_utils/providers.py)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  providers:
    description:
      - The provider registry, as inventory defines it (C(procedure_providers)); pass it as it is,
        C(providers="{{ procedure_providers }}").
      - One entry per provider with its kind (V(trust) or V(identity)), display names, folio prefix, request aliases,
        sender domains, SLA days, consultation strategy, evidence policy and endpoint; see
        C(inventories/lab/group_vars/all/providers.yml).
      - A definition with a defect fails the task naming the provider and the key.
    type: dict
    required: true
"""
