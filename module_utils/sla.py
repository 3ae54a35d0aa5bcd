"""Business-day SLA clocks of the procedure: Mexican federal holidays, weekends and DOF suspension days.

Times are whatever the caller passes (`now` is always explicit); a naive datetime is read as local time.
A due moment keeps the time of day of its start: received Friday 10:00 + 1 business day = Monday 10:00.
"""
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import holidays

SERVICES = ("renapo", "sat")
CLOCKS = ("first_contact", "attention")
# procedimiento-renapo.md, "Tiempo de atención": first contact 5 business days; attention 1 (RENAPO and SAT).
DEFAULT_DAYS = {service: {"first_contact": 5, "attention": 1} for service in SERVICES}
ON_TIME, DUE_SOON, BREACHED = "on_time", "due_soon", "breached"

# One calendar object: `holidays` fills each year lazily on first lookup.
_MX = holidays.country_holidays("MX")


def now_local():
    """The current moment, timezone-aware, in the controller's local time."""
    return datetime.now().astimezone()


def to_datetime(value):
    """datetime, date or ISO 8601 string -> timezone-aware datetime (naive values are local time)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError(f"not a date or datetime: {value!r}")
    return value if value.tzinfo else value.astimezone()


def to_date(value):
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return datetime.fromisoformat(str(value)).date()


def parse_days(values):
    """Extra non-working days (DOF suspension days) as a frozenset of dates; accepts dates or 'YYYY-MM-DD'."""
    if isinstance(values, frozenset):
        return values
    return frozenset(to_date(v) for v in values or ())


def is_business_day(day, extra=()):
    day = to_date(day)
    return day.weekday() < 5 and day not in _MX and day not in parse_days(extra)


def add_business_days(start, n, extra=()):
    """The moment n business days after `start` (before it when n < 0), same time of day, same type."""
    extra = parse_days(extra)
    step, left, current = (1 if n >= 0 else -1), abs(n), start
    while left:
        current += timedelta(days=step)
        if is_business_day(current, extra):
            left -= 1
    return current


def business_days_between(start, end, extra=()):
    """Business days d with start < d <= end, counted on dates; negative when end is before start."""
    first, last = to_date(start), to_date(end)
    if last < first:
        return -business_days_between(end, start, extra)
    extra = parse_days(extra)
    return sum(is_business_day(first + timedelta(days=i), extra) for i in range(1, (last - first).days + 1))


@dataclass(frozen=True)
class SlaPolicy:
    """Business days per service and clock, the extra non-working days and the `due_soon` window."""

    days: dict = field(default_factory=lambda: {s: dict(c) for s, c in DEFAULT_DAYS.items()})
    non_working_days: frozenset = frozenset()
    due_soon_business_days: int = 1

    @classmethod
    def from_options(cls, days=None, non_working_days=(), due_soon_business_days=1):
        """Build from module options: `days` overrides DEFAULT_DAYS per service, e.g. {'sat': {'attention': 2}}."""
        merged = {s: dict(c) for s, c in DEFAULT_DAYS.items()}
        for service, clocks in (days or {}).items():
            if service not in SERVICES:
                raise ValueError(f"unknown service {service!r} in SLA days; services are {', '.join(SERVICES)}")
            for clock, value in (clocks or {}).items():
                if clock not in CLOCKS or not isinstance(value, int) or value < 0:
                    raise ValueError(f"SLA days for {service}: {clock!r} must be one of {', '.join(CLOCKS)} "
                                     f"with a whole number of days >= 0, got {value!r}")
                merged[service][clock] = value
        return cls(merged, parse_days(non_working_days), int(due_soon_business_days))

    def due(self, service, clock, start):
        return add_business_days(to_datetime(start), self.days[service][clock], self.non_working_days)

    def clock(self, due, now, met_at=None):
        """Status of one clock: None before it starts, else on_time / due_soon / breached at `now`."""
        if due is None:
            return {"due": None, "met_at": met_at, "status": None}
        due_at = to_datetime(due)
        if met_at is not None:
            status = BREACHED if to_datetime(met_at) > due_at else ON_TIME
        elif to_datetime(now) > due_at:
            status = BREACHED
        elif due_at <= add_business_days(to_datetime(now), self.due_soon_business_days, self.non_working_days):
            status = DUE_SOON
        else:
            status = ON_TIME
        return {"due": iso(due_at), "met_at": met_at, "status": status}

    def ticket_status(self, ticket, now):
        """SLA status of a ticket dict (as the ticket store returns it) at `now`."""
        result = {
            "first_contact": self.clock(ticket.get("first_contact_due"), now, ticket.get("first_contact_at")),
            "attention": self.clock(ticket.get("attention_due"), now, ticket.get("attended_at")),
        }
        result["breached"] = any(result[c]["status"] == BREACHED for c in CLOCKS)
        return result


def iso(moment):
    """Stored form of a moment: ISO 8601 to the second, with its UTC offset."""
    return moment.isoformat(timespec="seconds")
