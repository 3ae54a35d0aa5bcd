"""Business-day SLA clocks against the real Mexican calendar (holidays MX) and DOF suspension days."""
from datetime import date, datetime, timedelta, timezone

import pytest
from ansible.module_utils.sla import (
    BREACHED,
    DUE_SOON,
    ON_TIME,
    SlaPolicy,
    add_business_days,
    business_days_between,
    is_business_day,
    to_datetime,
)

CDMX = timezone(timedelta(hours=-6))  # Mexico City, no DST since 2022


def at(text):
    return datetime.fromisoformat(text).replace(tzinfo=CDMX)


@pytest.mark.parametrize("day", ["2026-01-01", "2026-02-02", "2026-03-16", "2026-05-01", "2026-09-16",
                                 "2026-11-16", "2026-12-25"])
def test_mexican_holidays_are_not_business_days(day):
    assert not is_business_day(day)


@pytest.mark.parametrize("day, business", [
    ("2026-02-03", True),   # Tuesday after Constitution day
    ("2026-01-31", False),  # Saturday
    ("2026-02-01", False),  # Sunday
    ("2026-04-02", True),   # Holy Thursday is not a federal holiday ...
])
def test_business_day_table(day, business):
    assert is_business_day(day) is business


def test_extra_dof_day_is_not_a_business_day():
    assert not is_business_day("2026-04-02", extra=["2026-04-02"])  # ... unless the DOF suspends it


@pytest.mark.parametrize("start, n, expected", [
    ("2026-01-30T10:00", 5, "2026-02-09T10:00"),  # weekend + Constitution day (Feb 2) skipped
    ("2025-12-31T09:30", 1, "2026-01-02T09:30"),  # New Year's day
    ("2026-03-13T17:00", 1, "2026-03-17T17:00"),  # Friday before Juárez's day (Mar 16)
    ("2026-09-15T12:00", 1, "2026-09-17T12:00"),  # Independence day
    ("2026-11-13T12:00", 1, "2026-11-17T12:00"),  # Revolution day (Nov 16)
    ("2026-12-24T12:00", 1, "2026-12-28T12:00"),  # Christmas on Friday, then the weekend
    ("2026-02-04T08:00", 0, "2026-02-04T08:00"),
    ("2026-02-03T08:00", -1, "2026-01-30T08:00"),  # backwards over Feb 2 and the weekend
])
def test_add_business_days(start, n, expected):
    assert add_business_days(at(start), n) == at(expected)


def test_add_business_days_with_dof_suspension_days():
    assert add_business_days(at("2026-04-01T10:00"), 1) == at("2026-04-02T10:00")
    assert add_business_days(at("2026-04-01T10:00"), 1, extra=["2026-04-02", "2026-04-03"]) == at("2026-04-06T10:00")
    assert add_business_days(date(2026, 4, 1), 1, extra=[date(2026, 4, 2)]) == date(2026, 4, 3)


@pytest.mark.parametrize("start, end, expected", [
    ("2026-01-30", "2026-02-09", 5),
    ("2026-02-09", "2026-01-30", -5),
    ("2026-12-24", "2026-12-28", 1),
    ("2026-02-04", "2026-02-04", 0),
])
def test_business_days_between(start, end, expected):
    assert business_days_between(start, end) == expected


def test_policy_defaults_and_per_service_override():
    default = SlaPolicy()
    received = at("2026-01-30T10:00")
    assert default.due("renapo", "first_contact", received) == at("2026-02-09T10:00")
    assert default.due("sat", "attention", at("2026-12-24T12:00")) == at("2026-12-28T12:00")
    custom = SlaPolicy.from_options({"sat": {"attention": 2}}, ["2026-12-28"])
    assert custom.due("sat", "attention", at("2026-12-24T12:00")) == at("2026-12-30T12:00")
    assert custom.due("renapo", "attention", at("2026-12-24T12:00")) == at("2026-12-29T12:00")


@pytest.mark.parametrize("days", [{"imss": {"attention": 1}}, {"sat": {"lunch": 1}}, {"sat": {"attention": -1}}])
def test_policy_rejects_bad_settings(days):
    with pytest.raises(ValueError, match="SLA days|unknown service"):
        SlaPolicy.from_options(days)


@pytest.mark.parametrize("now, met_at, expected", [
    ("2026-01-30T11:00", None, ON_TIME),            # just received, 5 business days ahead
    ("2026-02-06T10:00", None, DUE_SOON),           # due the next business day (Monday 9th)
    ("2026-02-09T10:00", None, DUE_SOON),           # due this very moment
    ("2026-02-09T10:01", None, BREACHED),
    ("2026-03-01T00:00", "2026-02-05T09:00", ON_TIME),   # met in time stays on time
    ("2026-02-05T09:00", "2026-02-09T10:30", BREACHED),  # met late
])
def test_clock_status_at_frozen_now(now, met_at, expected):
    due = SlaPolicy().due("renapo", "first_contact", at("2026-01-30T10:00"))
    status = SlaPolicy().clock(due, at(now), met_at and at(met_at).isoformat())
    assert status["status"] == expected
    assert status["due"] == "2026-02-09T10:00:00-06:00"


def test_ticket_status_attention_not_started_and_breached():
    policy = SlaPolicy()
    ticket = {"first_contact_due": "2026-02-09T10:00:00-06:00", "first_contact_at": "2026-01-30T11:00:00-06:00",
              "attention_due": None, "attended_at": None}
    status = policy.ticket_status(ticket, at("2026-02-20T10:00"))
    assert status["attention"]["status"] is None and status["breached"] is False
    ticket["attention_due"] = "2026-02-10T10:00:00-06:00"
    status = policy.ticket_status(ticket, at("2026-02-20T10:00"))
    assert status["attention"]["status"] == BREACHED and status["breached"] is True


def test_to_datetime_accepts_strings_dates_and_naive_values():
    assert to_datetime("2026-02-09T10:00:00-06:00") == at("2026-02-09T10:00")
    assert to_datetime(date(2026, 2, 9)).tzinfo is not None
    assert to_datetime(datetime(2026, 2, 9, 10)).tzinfo is not None
    with pytest.raises(ValueError):
        to_datetime(42)
