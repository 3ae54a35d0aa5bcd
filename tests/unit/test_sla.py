"""SLA clocks on Mexico's clock: America/Mexico_City business hours, the real Mexican calendar (holidays MX),
Semana Santa and DOF days, on a controller whose system zone is UTC.

Every expected moment below was counted on a calendar, not taken from the code:
December 2026: Fri 18, Mon 21 .. Thu 24, Fri 25 Christmas, Mon 28 .. Thu 31; Fri 2027-01-01 New Year.
February 2027: Mon 1 Constitution day; Sun 7, Mon 8 .. Fri 12, Mon 15 .. Fri 19.
March 2027: Mon 15 Juárez's day; Easter Sunday 28, so Holy Thursday 25 and Good Friday 26.
Mexico City is UTC-6 all year since 2022 (no DST).
"""
import time
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from ansible.module_utils import sla
from ansible.module_utils.sla import (
    BREACHED,
    DUE_SOON,
    ON_TIME,
    SlaPolicy,
    add_business_days,
    business_days_between,
    is_business_day,
    iso,
    now_local,
    semana_santa,
    to_datetime,
)

from tests.providers import THIRD_PROVIDER, lab_providers

CDMX = timezone(timedelta(hours=-6))
LAB = lab_providers()  # the lab inventory's registry: renapo and sat, 5 and 1 business days


@pytest.fixture(autouse=True)
def utc_controller(monkeypatch):
    """The controller's system zone is UTC; the procedure zone stays America/Mexico_City."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("PROCEDURE_TIMEZONE", raising=False)
    time.tzset()
    sla.set_timezone(None)
    yield
    monkeypatch.undo()
    time.tzset()
    sla.set_timezone(None)


def at(text):
    """A Mexico City wall-clock moment."""
    return datetime.fromisoformat(text).replace(tzinfo=CDMX)


def due(policy, clock, arrival, service="renapo"):
    """The due moment on `policy` bound to the lab's registry (a policy built without one keeps its calendar)."""
    return iso(policy.with_providers(LAB).due(service, clock, arrival))


# --- time zone -------------------------------------------------------------------------------------------------
def test_system_zone_is_utc_but_the_procedure_is_in_mexico_city():
    assert time.localtime().tm_gmtoff == 0
    now = now_local()
    assert now.tzinfo.key == "America/Mexico_City" and now.utcoffset() == timedelta(hours=-6)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_to_datetime_reads_naive_as_local_and_converts_aware_values():
    assert iso(to_datetime("2026-12-18T17:00")) == "2026-12-18T17:00:00-06:00"          # naive: Mexico City
    assert iso(to_datetime("2026-12-18T23:00:00+00:00")) == "2026-12-18T17:00:00-06:00"  # same instant, local
    assert iso(to_datetime("2026-12-19T03:30:00Z")) == "2026-12-18T21:30:00-06:00"
    assert to_datetime("2026-02-09T10:00:00-06:00") == at("2026-02-09T10:00")
    assert iso(to_datetime(date(2026, 2, 9))) == "2026-02-09T00:00:00-06:00"
    assert to_datetime(datetime(2026, 2, 9, 10)).tzinfo.key == "America/Mexico_City"
    with pytest.raises(ValueError):
        to_datetime(42)


def test_iso_stores_local_time_with_offset():
    assert iso(datetime(2027, 2, 8, 5, 0, tzinfo=UTC)) == "2027-02-07T23:00:00-06:00"


def test_zone_is_configurable_and_an_unknown_one_is_named(monkeypatch):
    sla.set_timezone("America/Tijuana")
    assert iso(to_datetime("2027-02-08T05:00:00+00:00")) == "2027-02-07T21:00:00-08:00"
    sla.set_timezone(None)
    monkeypatch.setenv("PROCEDURE_TIMEZONE", "America/Cancun")
    assert sla.set_timezone(None).key == "America/Cancun"
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        sla.set_timezone("Mars/Olympus")


def test_the_day_of_a_utc_instant_is_the_local_day():
    # Friday 2026-12-25 02:00 UTC is Thursday 24 at 20:00 in Mexico City: a business day, not Christmas.
    assert is_business_day(to_datetime("2026-12-25T02:00:00+00:00"))
    assert is_business_day("2026-12-25T02:00:00+00:00")
    assert not is_business_day("2026-12-25")


# --- calendar --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("day", ["2026-01-01", "2026-02-02", "2026-03-16", "2026-05-01", "2026-09-16",
                                 "2026-11-16", "2026-12-25", "2027-01-01", "2027-02-01", "2027-03-15"])
def test_mexican_holidays_are_not_business_days(day):
    assert not is_business_day(day)


@pytest.mark.parametrize("day, business", [
    ("2026-02-03", True),   # Tuesday after Constitution day
    ("2026-01-31", False),  # Saturday
    ("2026-02-01", False),  # Sunday
    ("2026-12-24", True),   # Christmas Eve is not a federal day of rest (a DOF list may add it)
    ("2026-12-31", True),   # nor is New Year's Eve
    ("2026-04-02", False),  # Holy Thursday 2026 (Easter is April 5): Semana Santa rule
    ("2026-04-03", False),  # Good Friday 2026
    ("2026-04-01", True),   # Holy Wednesday works
    ("2027-03-25", False),  # Holy Thursday 2027
    ("2027-03-26", False),  # Good Friday 2027
])
def test_business_day_table(day, business):
    assert is_business_day(day) is business


def test_semana_santa_dates():
    assert semana_santa(2027) == (date(2027, 3, 25), date(2027, 3, 26))
    assert semana_santa(2026) == (date(2026, 4, 2), date(2026, 4, 3))


def test_extra_dof_day_is_not_a_business_day():
    assert is_business_day("2026-12-24")
    assert not is_business_day("2026-12-24", extra=["2026-12-24"])


@pytest.mark.parametrize("start, n, expected", [  # plain day arithmetic, keeping the local time of day
    ("2026-01-30T10:00", 5, "2026-02-09T10:00"),  # weekend + Constitution day (Feb 2) skipped
    ("2025-12-31T09:30", 1, "2026-01-02T09:30"),  # New Year's day
    ("2026-03-13T17:00", 1, "2026-03-17T17:00"),  # Friday before Juárez's day (Mar 16)
    ("2026-12-24T12:00", 1, "2026-12-28T12:00"),  # Christmas on Friday, then the weekend
    ("2026-04-01T10:00", 1, "2026-04-06T10:00"),  # Holy Thursday and Good Friday, then the weekend
    ("2026-02-04T08:00", 0, "2026-02-04T08:00"),
    ("2026-02-03T08:00", -1, "2026-01-30T08:00"),  # backwards over Feb 2 and the weekend
])
def test_add_business_days(start, n, expected):
    assert add_business_days(at(start), n) == at(expected)


def test_add_business_days_on_dates_with_dof_days():
    assert add_business_days(date(2026, 3, 30), 1, extra=[date(2026, 3, 31)]) == date(2026, 4, 1)
    assert add_business_days(date(2026, 12, 23), 1, extra=["2026-12-24"]) == date(2026, 12, 28)


@pytest.mark.parametrize("start, end, expected", [
    ("2026-01-30", "2026-02-09", 5),
    ("2026-02-09", "2026-01-30", -5),
    ("2026-12-24", "2026-12-28", 1),
    ("2026-02-04", "2026-02-04", 0),
    ("2027-03-24", "2027-03-29", 1),  # Holy Thursday, Good Friday, weekend, Monday
])
def test_business_days_between(start, end, expected):
    assert business_days_between(start, end) == expected


# --- clock start and due moments -------------------------------------------------------------------------------
def test_friday_2026_12_18_1700_arrival_over_christmas():
    policy = SlaPolicy()
    arrival = at("2026-12-18T17:00")  # within hours: the clock starts now, Friday does not count
    assert policy.clock_start(arrival) == arrival
    # 1 Mon 21, 2 Tue 22, 3 Wed 23, 4 Thu 24, (Fri 25 Christmas, weekend), 5 Mon 28 -> close of business.
    assert due(policy, "first_contact", arrival) == "2026-12-28T18:00:00-06:00"
    assert due(policy, "attention", arrival, "sat") == "2026-12-21T18:00:00-06:00"
    # Same instant as the receiving server wrote it in UTC.
    assert due(policy, "first_contact", "2026-12-18T23:00:00+00:00") == "2026-12-28T18:00:00-06:00"


def test_christmas_eve_as_a_dof_day_moves_the_deadline():
    policy = SlaPolicy.from_options(non_working_days={2026: ["2026-12-24"]})
    # 1 Mon 21, 2 Tue 22, 3 Wed 23, (Thu 24 DOF, Fri 25), 4 Mon 28, 5 Tue 29.
    assert due(policy, "first_contact", at("2026-12-18T17:00")) == "2026-12-29T18:00:00-06:00"


def test_new_year():
    policy = SlaPolicy()
    # Wednesday 30 Dec within hours: 1 Thu 31, (Fri 1 Jan New Year, weekend), 2 Mon 4, 3 Tue 5, 4 Wed 6, 5 Thu 7.
    assert due(policy, "first_contact", at("2026-12-30T10:00")) == "2027-01-07T18:00:00-06:00"
    assert due(policy, "attention", at("2026-12-30T10:00")) == "2026-12-31T18:00:00-06:00"
    # Thursday 31 Dec 18:30 is after closing: the clock starts at the next opening, Monday 4 Jan 09:00.
    assert iso(policy.clock_start(at("2026-12-31T18:30"))) == "2027-01-04T09:00:00-06:00"
    assert due(policy, "attention", at("2026-12-31T18:30")) == "2027-01-05T18:00:00-06:00"


def test_sunday_2300_arrival_is_not_due_friday_2300():
    policy = SlaPolicy()
    sunday = at("2027-02-07T23:00")  # Monday 05:00 UTC on the controller
    assert iso(policy.clock_start(sunday)) == "2027-02-08T09:00:00-06:00"
    # Monday 8 is the start day; 1 Tue 9, 2 Wed 10, 3 Thu 11, 4 Fri 12, 5 Mon 15.
    assert due(policy, "first_contact", sunday) == "2027-02-15T18:00:00-06:00"
    assert due(policy, "first_contact", "2027-02-08T05:00:00Z") == "2027-02-15T18:00:00-06:00"
    assert due(policy, "attention", sunday) == "2027-02-09T18:00:00-06:00"


def test_sunday_2300_before_christmas():
    # Sunday 20 Dec 2026 -> starts Monday 21 09:00; 1 Tue 22, 2 Wed 23, 3 Thu 24, (Fri 25), 4 Mon 28, 5 Tue 29.
    assert due(SlaPolicy(), "first_contact", at("2026-12-20T23:00")) == "2026-12-29T18:00:00-06:00"


def test_weekday_2030_arrival_starts_at_the_next_opening():
    policy = SlaPolicy()
    evening = at("2027-02-10T20:30")  # Wednesday after closing
    assert iso(policy.clock_start(evening)) == "2027-02-11T09:00:00-06:00"
    assert due(policy, "attention", evening) == "2027-02-12T18:00:00-06:00"
    # Start day Thu 11; 1 Fri 12, 2 Mon 15, 3 Tue 16, 4 Wed 17, 5 Thu 18.
    assert due(policy, "first_contact", evening) == "2027-02-18T18:00:00-06:00"


@pytest.mark.parametrize("arrival, start", [
    ("2027-02-10T08:15", "2027-02-10T09:00"),  # before opening: that day's opening
    ("2027-02-10T09:00", "2027-02-10T09:00"),  # opening is within hours
    ("2027-02-10T17:59", "2027-02-10T17:59"),
    ("2027-02-10T18:00", "2027-02-11T09:00"),  # closing is out of hours
    ("2027-02-13T11:00", "2027-02-15T09:00"),  # Saturday
    ("2027-02-01T10:00", "2027-02-02T09:00"),  # Constitution day (Monday)
    ("2027-03-24T19:00", "2027-03-29T09:00"),  # Holy Wednesday evening: Thursday, Friday, weekend skipped
])
def test_clock_start(arrival, start):
    assert SlaPolicy().clock_start(at(arrival)) == at(start)


def test_zero_days_is_due_at_close_of_the_start_day():
    policy = SlaPolicy.from_options({"sat": {"attention": 0}}, providers=LAB)
    assert due(policy, "attention", at("2027-02-10T10:00"), "sat") == "2027-02-10T18:00:00-06:00"
    assert due(policy, "attention", at("2027-02-10T20:30"), "sat") == "2027-02-11T18:00:00-06:00"


# --- Semana Santa 2027 and the DOF list ------------------------------------------------------------------------
ARRIVAL_HOLY_WEEK = "2027-03-22T10:00"  # Monday of Holy Week 2027, within hours


def test_semana_santa_2027_without_a_dof_list():
    policy = SlaPolicy()
    # 1 Tue 23, 2 Wed 24, (Thu 25, Fri 26 Semana Santa, weekend), 3 Mon 29, 4 Tue 30, 5 Wed 31.
    assert due(policy, "first_contact", at(ARRIVAL_HOLY_WEEK)) == "2027-03-31T18:00:00-06:00"
    # Certificate on Wednesday 24 at 15:00: attention due close of Monday 29.
    assert due(policy, "attention", at("2027-03-24T15:00")) == "2027-03-29T18:00:00-06:00"
    assert policy.warnings(at("2027-03-22T10:00")) == [
        "No hay lista de días inhábiles del DOF para 2027: los plazos de SLA solo descuentan fines de semana, días "
        "de descanso obligatorio federales y jueves y viernes santos. Registre los días inhábiles que publique el DOF "
        "para 2027 (una lista vacía si no publica ninguno)."]


def test_semana_santa_2027_with_a_dof_list():
    # The DOF list names Holy Week's Thursday and Friday: same deadline as the rule, and no warning.
    listed = SlaPolicy.from_options(non_working_days={"2027": ["2027-03-25", "2027-03-26"]})
    assert due(listed, "first_contact", at(ARRIVAL_HOLY_WEEK)) == "2027-03-31T18:00:00-06:00"
    assert listed.warnings(at("2027-03-22T10:00")) == []
    # A DOF list that also suspends Holy Wednesday: 1 Tue 23, (Wed 24 .. Sun 28), 2 Mon 29, 3 Tue 30, 4 Wed 31,
    # 5 Thu 1 April.
    wider = SlaPolicy.from_options(non_working_days=["2027-03-24", "2027-03-25", "2027-03-26"])
    assert due(wider, "first_contact", at(ARRIVAL_HOLY_WEEK)) == "2027-04-01T18:00:00-06:00"
    assert wider.warnings(at("2027-06-01T12:00")) == []


def test_semana_santa_rule_can_be_switched_off_per_year():
    # An office that works Holy Week in 2027: 1 Tue 23, 2 Wed 24, 3 Thu 25, 4 Fri 26, 5 Mon 29.
    working = SlaPolicy.from_options(non_working_days={2027: []}, semana_santa={2027: False})
    assert due(working, "first_contact", at(ARRIVAL_HOLY_WEEK)) == "2027-03-29T18:00:00-06:00"
    assert working.is_business_day("2027-03-25") and not working.is_business_day("2026-04-02")  # 2026 keeps it
    assert working.warnings(at("2027-03-22T10:00")) == []  # an empty list still counts as the year's list
    off = SlaPolicy.from_options(semana_santa=False)
    assert "jueves y viernes santos" not in off.warnings(at("2027-03-22T10:00"))[0]


def test_dof_warning_is_about_the_current_year_in_mexico_city():
    policy = SlaPolicy.from_options(non_working_days={2026: ["2026-12-24"]})
    assert policy.warnings(at("2026-12-31T17:00")) == []
    # 2027-01-01 05:00 UTC is still 31 December 2026 in Mexico City.
    assert policy.warnings(datetime(2027, 1, 1, 5, 0, tzinfo=UTC)) == []
    assert policy.warnings(at("2027-01-01T00:00"))[0].startswith("No hay lista de días inhábiles del DOF para 2027:")
    assert SlaPolicy().warnings()[0].startswith(f"No hay lista de días inhábiles del DOF para {now_local().year}:")


def test_dof_mapping_checks_each_year():
    with pytest.raises(ValueError, match="2027-03-25 is listed under 2026"):
        SlaPolicy.from_options(non_working_days={2026: ["2027-03-25"]})


# --- business hours --------------------------------------------------------------------------------------------
def test_business_hours_are_configurable():
    policy = SlaPolicy.from_options(business_hours="08:30-15:00", business_weekdays=["mon", "tue", "wed", "thu"])
    # Thursday 11 Feb 2027 at 16:00 is out of hours; Friday is not a business weekday: Monday 15 at 08:30.
    assert iso(policy.clock_start(at("2027-02-11T16:00"))) == "2027-02-15T08:30:00-06:00"
    assert due(policy, "attention", at("2027-02-11T16:00")) == "2027-02-16T15:00:00-06:00"
    assert policy.business_hours_between(at("2027-02-11T14:00"), at("2027-02-15T09:30")) == 2.0


@pytest.mark.parametrize("hours", ["18:00-09:00", "9-18", "09:00"])
def test_bad_business_hours_are_refused(hours):
    with pytest.raises(ValueError, match="business hours"):
        SlaPolicy.from_options(business_hours=hours)


def test_business_hours_across_a_weekend():
    policy = SlaPolicy()
    # Friday 12 Feb 16:30-18:00 (1.5 h) + Monday 15 Feb 09:00-10:15 (1.25 h).
    assert policy.business_hours_between(at("2027-02-12T16:30"), at("2027-02-15T10:15")) == 2.75
    # The same instants as a UTC controller stores them.
    assert policy.business_hours_between("2027-02-12T22:30:00+00:00", "2027-02-15T16:15:00+00:00") == 2.75


# --- policy and clock status -----------------------------------------------------------------------------------
def test_policy_defaults_and_per_service_override():
    default = SlaPolicy()
    # Friday 30 Jan 2026 10:00: (Mon 2 Feb Constitution day) 1 Tue 3, 2 Wed 4, 3 Thu 5, 4 Fri 6, 5 Mon 9.
    assert due(default, "first_contact", at("2026-01-30T10:00")) == "2026-02-09T18:00:00-06:00"
    assert due(default, "attention", at("2026-12-24T12:00"), "sat") == "2026-12-28T18:00:00-06:00"
    custom = SlaPolicy.from_options({"sat": {"attention": 2}}, ["2026-12-28"], providers=LAB)
    assert due(custom, "attention", at("2026-12-24T12:00"), "sat") == "2026-12-30T18:00:00-06:00"
    assert due(custom, "attention", at("2026-12-24T12:00"), "renapo") == "2026-12-29T18:00:00-06:00"


@pytest.mark.parametrize("days, message", [
    ({"imss": {"attention": 1}}, "unknown provider 'imss'; the registry .procedure_providers. has renapo, sat"),
    ({"sat": {"lunch": 1}}, "SLA days for sat: 'lunch'"),
    ({"sat": {"attention": -1}}, "SLA days for sat: 'attention'"),
    ({"sat": {"attention": True}}, "SLA days for sat: 'attention'"),
])
def test_policy_rejects_bad_settings(days, message):
    with pytest.raises(ValueError, match=message):
        SlaPolicy.from_options(days, providers=LAB)


def test_overrides_need_the_registry_and_a_policy_without_it_computes_no_due_moment():
    with pytest.raises(ValueError, match="need the provider registry"):
        SlaPolicy.from_options({"sat": {"attention": 2}})
    with pytest.raises(ValueError, match="built without the provider registry"):
        SlaPolicy().due("renapo", "attention", at("2027-02-10T10:00"))
    with pytest.raises(ValueError, match="unknown provider 'imss'; the registry .procedure_providers. has renapo, sat"):
        SlaPolicy.from_options(providers=LAB).due("imss", "attention", at("2027-02-10T10:00"))


def test_a_third_provider_defined_in_inventory_has_its_own_days():
    """INE (tests/providers.py): first contact 3 business days, attention 2, from its registry entry alone."""
    policy = SlaPolicy.from_options(providers=lab_providers(**THIRD_PROVIDER))
    assert policy.days["ine"] == {"first_contact": 3, "attention": 2} and policy.days["renapo"]["first_contact"] == 5
    # Friday 18 Dec 2026 17:00 (within hours): Mon 21, Tue 22, Wed 23 -> first contact Wed 23 18:00; attention
    # Mon 21, Tue 22 -> Tue 22 18:00.
    assert iso(policy.due("ine", "first_contact", at("2026-12-18T17:00"))) == "2026-12-23T18:00:00-06:00"
    assert iso(policy.due("ine", "attention", at("2026-12-18T17:00"))) == "2026-12-22T18:00:00-06:00"
    # Wednesday 23 Dec 2026 10:00: Thu 24, (Fri 25 Christmas), Mon 28, Tue 29 -> first contact Tue 29 18:00.
    assert iso(policy.due("ine", "first_contact", at("2026-12-23T10:00"))) == "2026-12-29T18:00:00-06:00"
    # A module override wins over the registry for that provider only.
    override = SlaPolicy.from_options({"ine": {"attention": 0}}, providers=lab_providers(**THIRD_PROVIDER))
    assert override.days["ine"] == {"first_contact": 3, "attention": 0}
    assert iso(override.due("ine", "attention", at("2026-12-18T17:00"))) == "2026-12-18T18:00:00-06:00"


# Received Monday 1 Feb 2027 10:00 (Constitution day): starts Tue 2 at 09:00; 1 Wed 3, 2 Thu 4, 3 Fri 5, 4 Mon 8,
# 5 Tue 9 -> due Tuesday 9 Feb 18:00. One business day = 9 business hours.
@pytest.mark.parametrize("now, met_at, expected, left", [
    ("2027-02-02T11:00", None, ON_TIME, 52.0),       # Tue 7 h + Wed, Thu, Fri, Mon 36 h + Tue 9 h
    ("2027-02-08T17:59", None, ON_TIME, 9.02),       # Monday 1 min + Tuesday 9 h
    ("2027-02-08T18:00", None, DUE_SOON, 9.0),       # one business day left
    ("2027-02-06T12:00", None, ON_TIME, 18.0),       # Saturday: Monday and Tuesday left
    ("2027-02-09T18:00", None, DUE_SOON, 0.0),       # due this very moment
    ("2027-02-09T18:01", None, BREACHED, 0.0),
    ("2027-03-01T00:00", "2027-02-09T17:00", ON_TIME, None),   # met in time stays on time
    ("2027-02-05T09:00", "2027-02-09T18:30", BREACHED, None),  # met late
])
def test_clock_status_at_frozen_now(now, met_at, expected, left):
    policy = SlaPolicy(providers=None).with_providers(LAB)
    deadline = policy.due("renapo", "first_contact", at("2027-02-01T10:00"))
    status = policy.clock(deadline, at(now), met_at and iso(at(met_at)))
    assert status["status"] == expected and status["business_hours_left"] == left
    assert status["due"] == "2027-02-09T18:00:00-06:00"


def test_clock_status_reads_utc_instants():
    # 2027-02-10T00:01Z is Tuesday 9 Feb 18:01 in Mexico City: one minute late.
    assert SlaPolicy().clock("2027-02-09T18:00:00-06:00", "2027-02-10T00:01:00Z")["status"] == BREACHED
    assert SlaPolicy().clock("2027-02-09T18:00:00-06:00", "2027-02-10T00:00:00Z")["status"] == DUE_SOON


def test_ticket_status_attention_not_started_and_breached():
    policy = SlaPolicy()
    ticket = {"first_contact_due": "2026-02-09T18:00:00-06:00", "first_contact_at": "2026-01-30T11:00:00-06:00",
              "attention_due": None, "attended_at": None}
    status = policy.ticket_status(ticket, at("2026-02-20T10:00"))
    assert status["attention"]["status"] is None and status["breached"] is False
    assert status["first_contact"]["status"] == ON_TIME
    ticket["attention_due"] = "2026-02-10T18:00:00-06:00"
    status = policy.ticket_status(ticket, at("2026-02-20T10:00"))
    assert status["attention"]["status"] == BREACHED and status["breached"] is True


# --- reopen window, stopped clocks, module options ------------------------------------------------------------
@pytest.mark.parametrize("closed, days, deadline", [
    # Fri 2026-12-18 17:00 + 10 business days: Dec 21-24 (4), Christmas, Dec 28-31 (8), New Year, Jan 4, 5 (10)
    ("2026-12-18T17:00:00-06:00", 10, "2027-01-05T18:00:00-06:00"),
    # closed Sunday 2027-02-07 23:00: counted from Monday 8 (the next opening): 9..12 (4), 15 (5)
    ("2027-02-07T23:00:00-06:00", 5, "2027-02-15T18:00:00-06:00"),
    # 0 days: close of business of the day it closed
    ("2026-12-18T17:00:00-06:00", 0, "2026-12-18T18:00:00-06:00"),
])
def test_reopen_deadline(closed, days, deadline):
    assert iso(SlaPolicy.from_options(reopen_business_days=days).reopen_deadline(closed)) == deadline


@pytest.mark.parametrize("bad", [-1, "10", True, 1.5])
def test_reopen_window_must_be_whole_days(bad):
    with pytest.raises(ValueError, match="reopen window"):
        SlaPolicy.from_options(reopen_business_days=bad)


def test_clock_of_a_cancelled_ticket_stops_at_the_cancel():
    policy = SlaPolicy()
    ticket = {"state": "cancelled", "closed_at": "2026-12-22T10:00:00-06:00",
              "first_contact_due": "2026-12-28T18:00:00-06:00", "first_contact_at": None,
              "attention_due": None, "attended_at": None}
    status = policy.ticket_status(ticket, datetime(2027, 2, 1, 12, 0, tzinfo=CDMX))
    assert status["first_contact"] == {"due": "2026-12-28T18:00:00-06:00", "met_at": None, "status": None,
                                       "business_hours_left": None, "stopped_at": "2026-12-22T10:00:00-06:00"}
    assert status["breached"] is False
    late = dict(ticket, closed_at="2026-12-29T10:00:00-06:00")  # cancelled after its term: the breach stands
    assert policy.ticket_status(late, datetime(2027, 2, 1, tzinfo=CDMX))["first_contact"]["status"] == BREACHED


def test_met_moment_is_shown_in_local_time():
    status = SlaPolicy().clock("2026-12-28T18:00:00-06:00", datetime(2027, 1, 1, tzinfo=UTC),
                               "2026-12-28T20:00:00+00:00")
    assert status["met_at"] == "2026-12-28T14:00:00-06:00" and status["status"] == ON_TIME


def test_policy_from_module_options(monkeypatch):
    policy = sla.policy_from_params({"timezone": "America/Cancun", "non_working_days": {"2027": []},
                                     "business_hours": "08:00-15:00", "semana_santa": {"2027": "false"},
                                     "sla_days": None})
    assert str(sla.procedure_zone()) == "America/Cancun"
    assert (policy.opens.hour, policy.closes.hour) == (8, 15) and policy.dof_list_years == frozenset({2027})
    assert policy.is_business_day(date(2027, 3, 25))  # Holy Thursday, rule off for 2027
    sla.set_timezone(None)
    monkeypatch.setenv("PROCEDURE_TIMEZONE", "America/Tijuana")
    sla.policy_from_params({"non_working_days": []})
    assert str(sla.procedure_zone()) == "America/Tijuana"
    monkeypatch.delenv("PROCEDURE_TIMEZONE")
    assert str(sla.set_timezone(None)) == "America/Mexico_City"
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        sla.policy_from_params({"timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="semana_santa must be true or false"):
        sla.policy_from_params({"semana_santa": "quizá"})
