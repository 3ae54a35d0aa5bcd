"""sla_watch: which due-soon and breach notices are due, on tickets of a real SQLite store. Every date below was
counted on the calendar by hand (America/Mexico_City, UTC-6 all year; business hours 09:00-18:00; Christmas and New
Year's Day are federal days of rest; Dec 24 and Dec 31 are working days)."""
from datetime import datetime, timedelta, timezone

import pytest
from ansible.module_utils.sla import SlaPolicy
from ansible.module_utils.sla_watch import due_notices, notice_key

from tests.unit.stores import open_lab

CDMX = timezone(timedelta(hours=-6))
# Arrival Friday 2026-12-18 17:00 (within hours; the day does not count): first contact (5 business days) falls on
# Mon 21, Tue 22, Wed 23, Thu 24, (Fri 25 Christmas), Mon 28 -> due Monday 2026-12-28 18:00.
ARRIVAL = datetime(2026, 12, 18, 17, 0, tzinfo=CDMX)
FIRST_CONTACT_DUE = "2026-12-28T18:00:00-06:00"


def at(*args):
    return datetime(*args, tzinfo=CDMX)


@pytest.fixture
def store(tmp_path):
    with open_lab(str(tmp_path / "tickets.db")) as s:
        yield s


def watch(store, now, **filters):
    policy = store.policy
    return due_notices(store.find(open_only=True, **filters), policy, now)


def test_first_contact_due_soon_then_breached_once_each(store):
    ticket = store.create("renapo", actor="intake", source="mail", received_at=ARRIVAL, now=ARRIVAL,
                          requester={"name": "Ana López"}).ticket
    assert ticket["first_contact_due"] == FIRST_CONTACT_DUE
    # Thu Dec 24 17:00: 1 h that day + 9 h on Mon 28 = 10 h left, more than one business day (9 h): on time
    assert watch(store, at(2026, 12, 24, 17, 0)) == []
    # Sat Dec 26 10:00: only Monday's 9 h are left: due soon
    [notice] = watch(store, at(2026, 12, 26, 10, 0))
    assert notice == {
        "key": f"sla:first_contact:due_soon:{FIRST_CONTACT_DUE}", "notice": "sla_due_soon",
        "ticket_id": ticket["id"], "folio": None, "service": "renapo", "state": "received", "source": "mail",
        "clock": "first_contact", "clock_name": "primer contacto", "status": "due_soon", "due": FIRST_CONTACT_DUE,
        "due_text": "lunes 28 de diciembre de 2026 a las 18:00 h", "business_hours_left": 9.0,
        "requester": "Ana López"}
    store.record_notice(ticket["id"], notice["key"], actor="sla.watch", now=at(2026, 12, 26, 10, 0))
    assert watch(store, at(2026, 12, 26, 11, 0)) == []  # a rerun sends nothing
    assert watch(store, at(2026, 12, 28, 17, 59)) == []  # still due soon: already told
    [breach] = watch(store, at(2026, 12, 28, 18, 1))
    assert (breach["key"], breach["notice"], breach["business_hours_left"]) == (
        f"sla:first_contact:breached:{FIRST_CONTACT_DUE}", "sla_breached", 0.0)
    store.record_notice(ticket["id"], breach["key"], actor="sla.watch", now=at(2026, 12, 28, 18, 1))
    assert watch(store, at(2026, 12, 29, 9, 0)) == []


def test_a_clock_first_seen_breached_gets_only_the_breach_notice(store):
    store.create("sat", actor="intake", received_at=ARRIVAL, now=ARRIVAL)
    [notice] = watch(store, at(2027, 1, 4, 9, 0))
    assert notice["status"] == "breached" and notice["clock"] == "first_contact"


def test_a_met_clock_and_a_cancelled_ticket_send_nothing(store):
    met = store.create("renapo", actor="intake", received_at=ARRIVAL, now=ARRIVAL).ticket
    store.transition(met["id"], "folio_issued", actor="mesa", now=at(2026, 12, 21, 10, 0))
    gone = store.create("renapo", actor="intake", received_at=ARRIVAL, now=ARRIVAL).ticket
    store.transition(gone["id"], "cancelled", actor="mesa", reason="retirada", now=at(2026, 12, 21, 10, 0))
    assert watch(store, at(2026, 12, 28, 18, 1)) == []
    # even when the store's open filter is not used
    assert due_notices(store.find(), store.policy, at(2026, 12, 28, 18, 1)) == []


def test_attention_clock_and_the_new_clock_of_a_new_delivery(store):
    ticket = store.create("renapo", actor="intake", received_at=ARRIVAL, now=ARRIVAL).ticket
    for state, now in (("folio_issued", at(2026, 12, 21, 10, 0)), ("requester_validated", at(2026, 12, 21, 11, 0))):
        store.transition(ticket["id"], state, actor="mesa", now=now)
    # certificate Tuesday Dec 29 10:00: attention (1 business day) due at close of Wednesday Dec 30
    store.transition(ticket["id"], "certificate_received", actor="intake", serial="01", now=at(2026, 12, 29, 10, 0))
    assert watch(store, at(2026, 12, 29, 10, 0)) == []  # 8 h on Tuesday + 9 h on Wednesday
    [soon] = watch(store, at(2026, 12, 30, 9, 0))
    assert soon["key"] == notice_key("attention", "due_soon", "2026-12-30T18:00:00-06:00")
    assert soon["due_text"] == "miércoles 30 de diciembre de 2026 a las 18:00 h"
    store.record_notice(ticket["id"], soon["key"], actor="sla.watch", now=at(2026, 12, 30, 9, 0))
    store.transition(ticket["id"], "deploying", actor="renew", hosts=["web01"], now=at(2026, 12, 30, 10, 0))
    store.transition(ticket["id"], "rolled_back", actor="renew", cause="cadena", now=at(2026, 12, 30, 11, 0))
    # a new delivery Thursday Dec 31 12:00: Jan 1 is New Year's Day -> attention due Monday 2027-01-04 18:00
    store.transition(ticket["id"], "certificate_received", actor="intake", serial="02", now=at(2026, 12, 31, 12, 0))
    [again] = watch(store, at(2027, 1, 2, 12, 0))  # Saturday: only Monday's 9 h left
    assert again["key"] == notice_key("attention", "due_soon", "2027-01-04T18:00:00-06:00")
    assert again["due_text"] == "lunes 4 de enero de 2027 a las 18:00 h"


def test_due_soon_window_is_configurable(tmp_path):
    # two business days: at Wed Dec 23 18:00, Thu 24 (9 h) + Mon 28 (9 h) = 18 h left -> due soon
    with open_lab(str(tmp_path / "t.db"), SlaPolicy.from_options(due_soon_business_days=2)) as s:
        s.create("renapo", actor="intake", received_at=ARRIVAL, now=ARRIVAL)
        [notice] = due_notices(s.find(), s.policy, at(2026, 12, 23, 18, 0))
        assert notice["status"] == "due_soon" and notice["business_hours_left"] == 18.0
        assert due_notices(s.find(), s.policy, at(2026, 12, 23, 17, 0)) == []  # 19 h left
