"""Ticket stores for the unit tests, opened with the lab inventory's provider registry (a store writes tickets only
when it knows the registry: their SLA days and folio prefixes come from it)."""
from ansible.module_utils.ticket_store import open_store

from tests.providers import lab_providers

LAB = lab_providers()


def open_lab(*args, **kwargs):
    """open_store() with the lab's registry unless the test gives `providers`."""
    kwargs.setdefault("providers", LAB)
    return open_store(*args, **kwargs)
