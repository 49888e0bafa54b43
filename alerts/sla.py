"""Service-level deadlines per event class, computed once when an alert fires.

Two presets ship:
- `standard-table-1`, the O&M standard (shared/seeds/000_*.txt §8.2, table 1): respond within 5 min, on site
  within 2 h, operation restored within 12 h (class I) or the fault cleared within 6 h (II) / 4 h (III);
- `bid-tiers`, the bid's graded response (003_*.txt §4.6): major faults (I) emergency plan at once and on site
  within 8 h; faults needing a visit (II) arrive within 4 h; minor faults (III) remote diagnosis within 1 h.

Clocks run on the contract's standby hours (7x24, 5x8, 5x10; §8.2.2) when they pause outside them, and stop
during planned maintenance of the device. Pre-warning, alarm and escalation times are derived here as well,
so the whole schedule of an alert is known (and shown) from the moment it fires.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from alerts.settings import (
    AlertsConfig,
    ClassDeadlines,
    MaintenanceWindowConfig,
    SlaPolicyConfig,
    StandbyConfig,
)

CLOCKS = ("ack", "onsite", "restore")
CLOCK_TITLES = {"ack": "acknowledge", "onsite": "on site", "restore": "restore"}
_HORIZON = timedelta(days=400)  # a clock that cannot run within a year is a configuration error


@dataclass(frozen=True)
class Deadlines:
    ack_due: datetime
    onsite_due: datetime
    restore_due: datetime
    warn_at: dict[str, datetime] = field(default_factory=dict)  # clock -> pre-warning time
    escalate_at: tuple[datetime, ...] = ()  # one per escalation level

    def due(self, clock: str) -> datetime:
        return {"ack": self.ack_due, "onsite": self.onsite_due, "restore": self.restore_due}[clock]


@dataclass(frozen=True)
class SlaPolicy:
    name: str
    acknowledge: dict[str, timedelta]
    on_site: dict[str, timedelta]
    restore: dict[str, timedelta]
    description: str = ""

    @classmethod
    def from_config(cls, cfg: SlaPolicyConfig) -> SlaPolicy:
        return cls(
            name=cfg.name,
            acknowledge={c: timedelta(seconds=d.acknowledge) for c, d in cfg.classes.items()},
            on_site={c: timedelta(seconds=d.on_site) for c, d in cfg.classes.items()},
            restore={c: timedelta(seconds=d.restore) for c, d in cfg.classes.items()},
            description=cfg.description,
        )

    def clock(self, clock: str, event_class: str) -> timedelta:
        return {"ack": self.acknowledge, "onsite": self.on_site, "restore": self.restore}[clock][event_class]

    def deadlines(self, event_class: str, raised_at: datetime) -> Deadlines:
        """Wall-clock deadlines (7x24, nothing paused)."""
        return SlaCalculator(self).deadlines(event_class, raised_at)


def _preset(name: str, description: str, rows: dict[str, tuple[float, float, float]]) -> SlaPolicy:
    cfg = SlaPolicyConfig(
        name=name,
        description=description,
        classes={c: ClassDeadlines(acknowledge=a, on_site=o, restore=r) for c, (a, o, r) in rows.items()},
    )
    return SlaPolicy.from_config(cfg)


_MIN, _H = 60.0, 3600.0
STANDARD_TABLE_1 = _preset(
    "standard-table-1",
    "O&M standard §8.2.1 (respond within 5 min) and table 1 (on site 2 h; restore 12 h / clear 6 h / 4 h)",
    {"I": (5 * _MIN, 2 * _H, 12 * _H), "II": (5 * _MIN, 2 * _H, 6 * _H), "III": (5 * _MIN, 2 * _H, 4 * _H)},
)
BID_TIERS = _preset(
    "bid-tiers",
    "Bid §4.6: major (I) plan at once, on site 8 h, restored 12 h; on-site faults (II) arrive 4 h, cleared 6 h; "
    "minor (III) remote diagnosis and plan within 1 h, arrive 4 h if needed, cleared 4 h",
    {"I": (5 * _MIN, 8 * _H, 12 * _H), "II": (5 * _MIN, 4 * _H, 6 * _H), "III": (1 * _H, 4 * _H, 4 * _H)},
)
PRESETS = {p.name: p for p in (STANDARD_TABLE_1, BID_TIERS)}


def policy_from_config(cfg: AlertsConfig) -> SlaPolicy:
    custom = {p.name: SlaPolicy.from_config(p) for p in cfg.sla.policies}
    return custom.get(cfg.sla.policy) or PRESETS[cfg.sla.policy]


# --- standby hours and pauses --------------------------------------------------------------------------
_WINDOW_HOURS = {"5x8": 8, "5x10": 10}


class ServiceHours:
    """When the SLA clock runs: always (7x24, or when it does not pause), else working days' hours."""

    def __init__(self, standby: StandbyConfig | None = None) -> None:
        self.cfg = standby or StandbyConfig()
        self.zone = ZoneInfo(self.cfg.timezone)
        self.always = self.cfg.window == "7x24" or not self.cfg.pause_outside
        self.holidays = frozenset(self.cfg.holidays)

    def segments(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Running periods from `start` on, in UTC, in order; ends at the horizon."""
        end = start + _HORIZON
        if self.always:
            yield start, end
            return
        hours = timedelta(hours=_WINDOW_HOURS[self.cfg.window])
        day = start.astimezone(self.zone).date()
        while True:
            opens = datetime.combine(day, self.cfg.start_time, self.zone).astimezone(UTC)
            if opens > end:
                return
            if self.is_working_day(day):
                closes = (datetime.combine(day, self.cfg.start_time, self.zone) + hours).astimezone(UTC)
                if closes > start:
                    yield max(opens, start), closes
            day += timedelta(days=1)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def in_hours(self, at: datetime) -> bool:
        if self.cfg.window == "7x24":
            return True
        local = at.astimezone(self.zone)
        opens = datetime.combine(local.date(), self.cfg.start_time, self.zone)
        return self.is_working_day(local.date()) and opens <= local < opens + timedelta(
            hours=_WINDOW_HOURS[self.cfg.window]
        )


Interval = tuple[datetime, datetime]


def _subtract(segment: Interval, pauses: Sequence[Interval]) -> Iterator[Interval]:
    a, b = segment
    for p0, p1 in pauses:  # sorted by start
        if p1 <= a or p0 >= b:
            continue
        if p0 > a:
            yield a, p0
        a = max(a, p1)
        if a >= b:
            return
    if a < b:
        yield a, b


def merge(intervals: Sequence[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class SlaCalculator:
    """Deadlines on the running clock: standby hours minus planned maintenance of the device."""

    def __init__(
        self,
        policy: SlaPolicy,
        hours: ServiceHours | None = None,
        prewarn_share: float = 0.8,
        escalation_after: Sequence[float] = (),
    ) -> None:
        self.policy = policy
        self.hours = hours or ServiceHours()
        self.prewarn_share = prewarn_share
        self.escalation_after = tuple(escalation_after)

    def add(self, start: datetime, amount: timedelta, pauses: Sequence[Interval] = ()) -> datetime:
        """The moment `amount` of running clock time has passed since `start`."""
        left = amount
        merged = merge(pauses)
        for seg in self.hours.segments(start):
            for a, b in _subtract(seg, merged):
                if b - a >= left:
                    return a + left
                left -= b - a
        raise ValueError(
            f"the SLA clock cannot run {amount} within {_HORIZON.days} days of {start.isoformat()}: "
            "check the standby hours, holidays and maintenance windows"
        )

    def running(self, start: datetime, end: datetime, pauses: Sequence[Interval] = ()) -> timedelta:
        """Running clock time between two moments (for KPIs and 'time left')."""
        total = timedelta()
        merged = merge(pauses)
        for seg in self.hours.segments(start):
            if seg[0] >= end:
                break
            for a, b in _subtract((seg[0], min(seg[1], end)), merged):
                total += b - a
        return total

    def deadlines(self, event_class: str, raised_at: datetime, pauses: Sequence[Interval] = ()) -> Deadlines:
        due = {c: self.add(raised_at, self.policy.clock(c, event_class), pauses) for c in CLOCKS}
        warn = {c: self.add(raised_at, self.policy.clock(c, event_class) * self.prewarn_share, pauses) for c in CLOCKS}
        escalate = tuple(self.add(raised_at, timedelta(seconds=s), pauses) for s in self.escalation_after)
        return Deadlines(due["ack"], due["onsite"], due["restore"], warn, escalate)


@dataclass(frozen=True)
class MaintenanceWindow:
    id: str
    start: datetime
    end: datetime
    devices: frozenset[str]
    sites: frozenset[str]
    reason: str = ""

    @classmethod
    def from_config(cls, w: MaintenanceWindowConfig) -> MaintenanceWindow:
        return cls(w.id, w.start, w.end, frozenset(w.devices), frozenset(w.sites), w.reason)

    def covers(self, device_id: str, site: str | None) -> bool:
        return device_id in self.devices or (site is not None and site in self.sites)


class MaintenancePlan:
    """Announced maintenance windows: suppress alerts inside them and pause the device's SLA clocks."""

    def __init__(self, windows: Sequence[MaintenanceWindow] = ()) -> None:
        self.windows = list(windows)

    def active(self, device_id: str, site: str | None, at: datetime) -> MaintenanceWindow | None:
        for w in self.windows:
            if w.start <= at < w.end and w.covers(device_id, site):
                return w
        return None

    def pauses(self, device_id: str, site: str | None) -> list[Interval]:
        return [(w.start, w.end) for w in self.windows if w.covers(device_id, site)]


def calculator_from_config(cfg: AlertsConfig) -> SlaCalculator:
    return SlaCalculator(
        policy_from_config(cfg),
        ServiceHours(cfg.sla.standby),
        cfg.sla.prewarn_share,
        [lvl.after for lvl in cfg.escalation],
    )
