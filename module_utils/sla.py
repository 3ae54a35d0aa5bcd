"""Business-day SLA clocks of the procedure, on Mexico's clock.

Time zone. The procedure has one zone: America/Mexico_City unless `set_timezone(name)` (or, for a whole play, the
environment variable PROCEDURE_TIMEZONE) names another IANA zone; it is independent of the controller's system zone
(UTC on the controllers). `now_local()` is the current moment in that zone; `to_datetime()` reads a naive value as
procedure-local time and converts an aware one to the zone; `iso()` stores an instant with its UTC offset in the
zone. Dates (business day or not) are always the procedure zone's dates.

Calendar. A business day is a business weekday (Monday to Friday by default) that is not
- a federal day of rest (`holidays` MX: LFT art. 74, e.g. Jan 1, Constitution, Juárez, May 1, Sep 16, Revolution,
  Dec 25, the change of federal government every six years). Dec 24 and Dec 31 are *not* on it;
- Holy Thursday or Good Friday (Semana Santa), which the federal administration does not work in practice: a
  built-in rule, on by default and switchable per year (`semana_santa={2027: False}`);
- a DOF non-working day (the yearly "acuerdo de días inhábiles", suspensions), configured per year.
A year "has a DOF list" when any day of that year is configured or the year is named with an empty list; when the
current year has none, `SlaPolicy.warnings()` returns a Spanish warning that every SLA report must show.

Business hours are 09:00-18:00 local by default (`opens` inclusive, `closes` exclusive).

Clock rules (counted the way Mexican administrative terms are: from the business day after reception):
- The clock starts at the mail's arrival (the receiving server's time, passed by the caller) when it arrives within
  business hours of a business day; otherwise at the next business opening (Sunday 23:00 -> Monday 09:00; a weekday
  20:30 -> the next business day 09:00; before 09:00 on a business day -> that day at 09:00).
- The day the clock starts does not count, even when the mail arrived within its hours (the hours left that day
  are extra time): a term of N business days is due at CLOSE of business (18:00) of the N-th business day after
  the start day. N = 0 is due at close of the start day.
  Example: arrival Friday 2026-12-18 17:00 (within hours), first contact 5 business days: Mon 21, Tue 22, Wed 23,
  Thu 24, (Fri 25 Christmas), Mon 28 -> due Monday 2026-12-28 18:00 -06:00. Attention (1 day) -> Mon 21 18:00.
  Arrival Sunday 2027-02-07 23:00: starts Monday 02-08 09:00; 5 days after Monday -> Monday 2027-02-15 18:00.
- A clock is breached when it is met (or `now` is) after its due moment, due_soon when no more than
  `due_soon_business_days` business days' worth of business hours are left, else on_time.
"""
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ansible.module_utils.providers import CLOCKS, DEFAULT_SLA_DAYS, ProviderError, registry

try:  # a module without holidays fails with missing_required_lib("holidays"), not an import traceback
    import holidays
    from dateutil.easter import easter  # a dependency of holidays
except ImportError:
    import traceback
    HOLIDAYS_IMPORT_ERROR = traceback.format_exc()
else:
    HOLIDAYS_IMPORT_ERROR = None

ON_TIME, DUE_SOON, BREACHED = "on_time", "due_soon", "breached"
DEFAULT_TIMEZONE = "America/Mexico_City"
DEFAULT_OPENS, DEFAULT_CLOSES = time(9), time(18)
DEFAULT_WEEKDAYS = frozenset(range(5))  # Python weekdays: Monday = 0
# English and Spanish day names (Spanish also without accents); Python weekdays, Monday = 0.
WEEKDAY_NAMES = {**{name: n for n, name in enumerate("mon tue wed thu fri sat sun".split())},
                 "lun": 0, "mar": 1, "mie": 2, "mié": 2, "jue": 3, "vie": 4, "sab": 5, "sáb": 5, "dom": 6}

# One calendar object: `holidays` fills each year lazily on first lookup.
_MX = None if HOLIDAYS_IMPORT_ERROR else holidays.country_holidays("MX")


def _load_zone(name):
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as {DEFAULT_TIMEZONE!r} "
                         "(install the tzdata package when the system has no zoneinfo database)") from exc


_zone = None  # loaded on first use, so a bad PROCEDURE_TIMEZONE fails as a ValueError a module can report


def set_timezone(name=None):
    """Set the procedure's time zone for this process (IANA name; None: $PROCEDURE_TIMEZONE, else the default);
    returns the zone. Raises ValueError naming an unknown zone."""
    global _zone
    _zone = _load_zone(name or os.environ.get("PROCEDURE_TIMEZONE") or DEFAULT_TIMEZONE)
    return _zone


def procedure_zone():
    """The procedure's time zone (a ZoneInfo)."""
    return _zone or set_timezone()


def now_local():
    """The current moment, timezone-aware, in the procedure's zone (whatever the system zone is)."""
    return datetime.now(procedure_zone())


def to_datetime(value):
    """datetime, date or ISO 8601 string -> aware datetime in the procedure zone (naive values are procedure-local,
    a date is its midnight)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError(f"not a date or datetime: {value!r}")
    zone = procedure_zone()
    return value.astimezone(zone) if value.tzinfo else value.replace(tzinfo=zone)


def to_date(value):
    """The procedure-local date of a date, datetime or ISO string ('2026-04-02' or a full timestamp)."""
    if isinstance(value, datetime):
        return to_datetime(value).date()
    if isinstance(value, date):
        return value
    text = str(value)
    return date.fromisoformat(text) if len(text) == 10 else to_datetime(text).date()


def parse_days(values):
    """Extra non-working days (DOF days) as a frozenset of dates; accepts dates or 'YYYY-MM-DD'."""
    if isinstance(values, frozenset):
        return values
    return frozenset(to_date(v) for v in values or ())


def semana_santa(year):
    """(Holy Thursday, Good Friday) of `year`: the Semana Santa days the federal administration does not work."""
    sunday = easter(int(year))
    return sunday - timedelta(days=3), sunday - timedelta(days=2)


def _utc(moment):
    # Aware datetimes sharing one tzinfo subtract as wall clocks; UTC makes the difference the real elapsed time.
    return moment.astimezone(UTC)


def _parse_time(value, what):
    if isinstance(value, time):
        return value
    if isinstance(value, int) and 0 <= value <= 23:
        return time(value)
    try:
        return time.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"SLA business hours: {what} must be a time like '09:00', got {value!r}") from None


def parse_business_hours(value):
    """'09:00-18:00', ['09:00', '18:00'], (9, 18) or {'opens': .., 'closes': ..} -> (opens, closes) times."""
    if value is None:
        return DEFAULT_OPENS, DEFAULT_CLOSES
    if isinstance(value, dict):
        value = (value.get("opens"), value.get("closes"))
    elif isinstance(value, str):
        value = value.split("-")
    if len(value) != 2:
        raise ValueError(f"SLA business hours must be 'HH:MM-HH:MM', got {value!r}")
    opens, closes = _parse_time(value[0], "opening"), _parse_time(value[1], "closing")
    if not opens < closes:
        raise ValueError(f"SLA business hours: opening {opens:%H:%M} must be before closing {closes:%H:%M}")
    return opens, closes


def parse_weekdays(values):
    """Business weekdays as Python weekday numbers; accepts ISO numbers (1 = Monday .. 7) or names ('mon', 'lun')."""
    if values is None:
        return DEFAULT_WEEKDAYS
    days = set()
    for v in values:
        if isinstance(v, int) or str(v).isdigit():
            if not 1 <= int(v) <= 7:
                raise ValueError(f"SLA business weekday {v!r}: ISO numbers go from 1 (Monday) to 7 (Sunday)")
            days.add(int(v) - 1)
        elif str(v).strip().lower()[:3] in WEEKDAY_NAMES:
            days.add(WEEKDAY_NAMES[str(v).strip().lower()[:3]])
        else:
            raise ValueError(f"SLA business weekday {v!r}: use 1-7 (Monday = 1) or a name such as 'mon'")
    if not days:
        raise ValueError("SLA business weekdays: at least one weekday must be a business day")
    return frozenset(days)


def parse_dof_days(values):
    """DOF non-working days -> (days, years with a list). A list of dates gives the years it touches; a mapping
    {year: [dates]} also names years whose list is empty, and each date must fall in its year."""
    if not isinstance(values, dict):
        days = parse_days(values)
        return days, frozenset(d.year for d in days)
    days, years = set(), set()
    for key, listed in values.items():
        try:
            year = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"DOF non-working days: {key!r} is not a year") from None
        years.add(year)
        for day in parse_days(listed):
            if day.year != year:
                raise ValueError(f"DOF non-working days: {day} is listed under {year}")
            days.add(day)
    return frozenset(days), frozenset(years)


_TRUE, _FALSE = ("true", "yes", "on", "1", "sí", "si"), ("false", "no", "off", "0")


def _flag(value, what):
    """A bool from a bool or its usual spellings (a templated module option arrives as 'True')."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{what} must be true or false, got {value!r}")


def parse_semana_santa(value):
    """True / False for every year, or {year: bool} (unlisted years: True) -> (default, {year: bool})."""
    if isinstance(value, dict):
        years = {}
        for year, on in value.items():
            if not str(year).strip().isdigit():
                raise ValueError(f"semana_santa: {year!r} is not a year")
            years[int(year)] = _flag(on, f"semana_santa[{year}]")
        return True, years
    return _flag(True if value is None else value, "semana_santa"), {}


@dataclass(frozen=True)
class SlaPolicy:
    """Business days per provider and clock, the calendar (DOF days, Semana Santa, weekdays, business hours) and the
    `due_soon` window. The time zone is the procedure's (`set_timezone`).

    The days come from the provider registry (each provider's `sla_days`, providers.py), with module overrides on
    top; a policy built without a registry has the calendar only, and asking it for a due moment is refused (a
    clock needs its provider's days). `with_providers()` gives the same policy bound to a registry."""

    days: dict = field(default_factory=dict)  # {provider: {clock: business days}}
    non_working_days: frozenset = frozenset()
    due_soon_business_days: int = 1
    opens: time = DEFAULT_OPENS
    closes: time = DEFAULT_CLOSES
    weekdays: frozenset = DEFAULT_WEEKDAYS
    dof_years: frozenset = frozenset()  # years whose DOF list is configured, even when it is empty
    semana_santa: bool = True
    semana_santa_years: dict = field(default_factory=dict)  # per-year override of `semana_santa`
    reopen_business_days: int = 10  # a closed ticket may be reopened until close of business of this business day
    providers: object = field(default=None, compare=False)  # the providers.Registry the days come from

    @classmethod
    def from_options(cls, days=None, non_working_days=(), due_soon_business_days=1, business_hours=None,
                     business_weekdays=None, semana_santa=True, reopen_business_days=10, providers=None):
        """Build from module options: `providers` is the registry (procedure_providers) whose `sla_days` give each
        provider's days; `days` overrides them per provider, e.g. {'<provider>': {'attention': 2}};
        `non_working_days` is a list of dates or {year: [dates]}; `business_hours` '09:00-18:00';
        `business_weekdays` ISO numbers or names; `semana_santa` a bool or {year: bool}; `reopen_business_days`
        the window in which a closed ticket may be reopened. Raises ValueError (ProviderError for the registry)."""
        known = registry(providers) if providers is not None else None
        merged = provider_days(known)
        for service, clocks in (days or {}).items():
            if known is None:
                raise ValueError(f"SLA days for {service!r} need the provider registry (providers) they override")
            known.get(service)  # ProviderError naming the registry's providers
            for clock, value in (clocks or {}).items():
                if clock not in CLOCKS or isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"SLA days for {service}: {clock!r} must be one of {', '.join(CLOCKS)} "
                                     f"with a whole number of days >= 0, got {value!r}")
                merged[service][clock] = value
        dof_days, dof_years = parse_dof_days(non_working_days)
        opens, closes = parse_business_hours(business_hours)
        rule, rule_years = parse_semana_santa(semana_santa)
        if isinstance(reopen_business_days, bool) or not isinstance(reopen_business_days, int) \
                or reopen_business_days < 0:
            raise ValueError("reopen window must be a whole number of business days >= 0, "
                             f"got {reopen_business_days!r}")
        if isinstance(due_soon_business_days, bool) or int(due_soon_business_days) < 0:
            raise ValueError(f"due-soon window must be a whole number of business days >= 0, "
                             f"got {due_soon_business_days!r}")
        return cls(merged, dof_days, int(due_soon_business_days), opens, closes, parse_weekdays(business_weekdays),
                   dof_years, rule, rule_years, reopen_business_days, known)

    def with_providers(self, providers):
        """This policy bound to a registry: its providers' days, this policy's overrides kept. A policy already
        bound keeps its own registry."""
        if self.providers is not None:
            return self
        known = registry(providers)
        days = provider_days(known)
        for service, clocks in self.days.items():
            days.setdefault(service, dict(DEFAULT_SLA_DAYS)).update(clocks)
        return replace(self, days=days, providers=known)

    def days_for(self, service):
        """{clock: business days} of a provider; ValueError when the policy has no registry or lacks the provider."""
        if service in self.days:
            return self.days[service]
        if self.providers is None:
            raise ValueError(f"no SLA days for provider {service!r}: the SLA policy was built without the provider "
                             "registry (procedure_providers)")
        self.providers.get(service)  # ProviderError naming the registry's providers
        raise ProviderError(f"no SLA days for provider {service!r}")

    # --- calendar -------------------------------------------------------------------------------------------
    @property
    def dof_list_years(self):
        """Years with a configured DOF list: named ones plus those of every configured day."""
        return self.dof_years | {d.year for d in self.non_working_days}

    def semana_santa_days(self, year):
        """Holy Thursday and Good Friday of `year` when the rule applies to it, else ()."""
        return semana_santa(year) if self.semana_santa_years.get(year, self.semana_santa) else ()

    def is_business_day(self, day):
        day = to_date(day)
        return (day.weekday() in self.weekdays and day not in _MX and day not in self.non_working_days
                and day not in self.semana_santa_days(day.year))

    def next_business_day(self, day, step=1):
        day = to_date(day) + timedelta(days=step)
        while not self.is_business_day(day):
            day += timedelta(days=step)
        return day

    def opening(self, day):
        return datetime.combine(to_date(day), self.opens, procedure_zone())

    def closing(self, day):
        return datetime.combine(to_date(day), self.closes, procedure_zone())

    def in_business_hours(self, moment):
        local = to_datetime(moment)
        return self.is_business_day(local.date()) and self.opens <= local.time() < self.closes

    def clock_start(self, arrival):
        """When a clock started by `arrival` starts: the arrival within business hours, else the next opening."""
        local = to_datetime(arrival)
        if self.in_business_hours(local):
            return local
        day = local.date()
        if self.is_business_day(day) and local.time() < self.opens:
            return self.opening(day)
        return self.opening(self.next_business_day(day))

    def due_after(self, arrival, n):
        """Close of business of the n-th business day after the day the clock starts (see the module docstring)."""
        day = self.clock_start(arrival).date()
        for _business_day in range(n):
            day = self.next_business_day(day)
        return self.closing(day)

    def business_hours_between(self, start, end):
        """Hours of business time (business hours of business days, procedure zone) in [start, end); 0 when
        end <= start. Unrounded."""
        start, end = to_datetime(start), to_datetime(end)
        total, day = timedelta(), start.date()
        while day <= end.date():
            if self.is_business_day(day):
                lo, hi = max(_utc(start), _utc(self.opening(day))), min(_utc(end), _utc(self.closing(day)))
                total += max(hi - lo, timedelta())
            day += timedelta(days=1)
        return total.total_seconds() / 3600

    def business_days_between(self, start, end):
        """Business days d with start < d <= end, on procedure-local dates; negative when end is before start."""
        first, last = to_date(start), to_date(end)
        if last < first:
            return -self.business_days_between(end, start)  # pylint: disable=arguments-out-of-order  # on purpose
        return sum(self.is_business_day(first + timedelta(days=i)) for i in range(1, (last - first).days + 1))

    @property
    def business_day_hours(self):
        return (datetime.combine(date.min, self.closes) - datetime.combine(date.min, self.opens)).total_seconds() / 3600

    # --- clocks ---------------------------------------------------------------------------------------------
    def due(self, service, clock, start):
        """Due moment of `clock` for a request of `service` whose clock is started by `start` (the arrival)."""
        return self.due_after(start, self.days_for(service)[clock])

    def clock(self, due, now, met_at=None):
        """Status of one clock: None before it starts, else on_time / due_soon / breached at `now`, with the
        business hours left until the due moment (None once met)."""
        met_at = iso(to_datetime(met_at)) if met_at is not None else None
        if due is None:
            return {"due": None, "met_at": met_at, "status": None, "business_hours_left": None}
        due_at, now = to_datetime(due), to_datetime(now)
        left = None
        if met_at is not None:
            status = BREACHED if to_datetime(met_at) > due_at else ON_TIME
        elif now > due_at:
            status, left = BREACHED, 0.0
        else:
            left = round(self.business_hours_between(now, due_at), 2)
            status = DUE_SOON if left <= self.due_soon_business_days * self.business_day_hours else ON_TIME
        return {"due": iso(due_at), "met_at": met_at, "status": status, "business_hours_left": left}

    def ticket_status(self, ticket, now):
        """SLA status of a ticket dict (as the ticket store returns it) at `now`, every moment in local time.

        A clock still open when the ticket was cancelled or marked duplicate stopped then (`stopped_at`): it is
        `breached` if it was already late, else None (no clock to keep)."""
        stopped = ticket.get("closed_at") if ticket.get("state") in ("cancelled", "duplicate") else None
        result = {}
        for clock, met in (("first_contact", "first_contact_at"), ("attention", "attended_at")):
            due, met_at = ticket.get(f"{clock}_due"), ticket.get(met)
            status = self.clock(due, stopped or now, met_at)
            status["stopped_at"] = None
            if stopped and met_at is None and due is not None:
                status["stopped_at"] = iso(to_datetime(stopped))
                status["business_hours_left"] = None
                if status["status"] != BREACHED:
                    status["status"] = None
            result[clock] = status
        result["breached"] = any(result[c]["status"] == BREACHED for c in CLOCKS)
        return result

    def reopen_deadline(self, closed_at):
        """Until when a ticket closed at `closed_at` may be reopened: close of business of the
        `reopen_business_days`-th business day after the day it closed (counted like an SLA term)."""
        return self.due_after(closed_at, self.reopen_business_days)

    def warnings(self, now=None):
        """What every SLA report must show (Spanish): the current year has no DOF list of non-working days."""
        year = (to_datetime(now) if now is not None else now_local()).year
        if year in self.dof_list_years:
            return []
        counted = ("fines de semana, días de descanso obligatorio federales y jueves y viernes santos"
                   if self.semana_santa_days(year) else "fines de semana y días de descanso obligatorio federales")
        return [f"No hay lista de días inhábiles del DOF para {year}: los plazos de SLA solo descuentan {counted}. "
                f"Registre los días inhábiles que publique el DOF para {year} (una lista vacía si no publica "
                "ninguno)."]


def provider_days(known):
    """{provider: {clock: business days}} from a registry (each provider's sla_days); {} without one."""
    return {p.name: dict(p.sla_days) for p in known} if known is not None else {}


def is_business_day(day, extra=()):
    """Business day on the default calendar plus the `extra` non-working days."""
    return SlaPolicy(non_working_days=parse_days(extra)).is_business_day(day)


def add_business_days(start, n, extra=()):
    """The moment n business days after `start` (before it when n < 0), same local time of day, same type.
    Plain day arithmetic: SLA due moments are `SlaPolicy.due` (close of business)."""
    policy = SlaPolicy(non_working_days=parse_days(extra))
    current = start if not isinstance(start, datetime) else to_datetime(start)
    day = to_date(current)
    for _business_day in range(abs(n)):
        day = policy.next_business_day(day, 1 if n >= 0 else -1)
    if isinstance(current, datetime):
        return datetime.combine(day, current.time(), procedure_zone())
    return day


def business_days_between(start, end, extra=()):
    """Business days d with start < d <= end, counted on procedure-local dates; negative when end is before start."""
    return SlaPolicy(non_working_days=parse_days(extra)).business_days_between(start, end)


def iso(moment):
    """Stored form of a moment: ISO 8601 to the second, in the procedure zone, with its UTC offset."""
    if isinstance(moment, datetime):
        moment = to_datetime(moment)
    return moment.isoformat(timespec="seconds")


# The clock options every module that computes SLA clocks takes (an argument spec fragment; each module documents
# them), and the policy they describe.
MODULE_OPTIONS = {
    "timezone": {"type": "str"},
    "non_working_days": {"type": "raw", "default": []},
    "business_hours": {"type": "str", "default": "09:00-18:00"},
    "semana_santa": {"type": "raw", "default": True},
    "sla_days": {"type": "dict"},
    "providers": {"type": "dict", "required": True},
}


def policy_from_params(params, **extra):
    """Set the procedure zone from `params['timezone']` (None: $PROCEDURE_TIMEZONE, else America/Mexico_City) and
    build the SlaPolicy the MODULE_OPTIONS describe (`extra`: other from_options arguments). Raises ValueError."""
    set_timezone(params.get("timezone"))
    days = params.get("non_working_days")
    if isinstance(days, str):  # a templated empty list or a single date
        days = [d for d in (x.strip() for x in days.strip("[]").split(",")) if d.strip("'\"")]
        days = [d.strip("'\"") for d in days]
    return SlaPolicy.from_options(params.get("sla_days"), days or (), business_hours=params.get("business_hours"),
                                  semana_santa=params.get("semana_santa", True), providers=params.get("providers"),
                                  **extra)
