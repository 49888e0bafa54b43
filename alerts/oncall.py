"""Who is paged: rotas with a weekly (or any) rotation, a hand-over time and overrides.

A rota counts shifts from its first hand-over (the `handover` weekday and time on or after `since`, in the
standby time zone); overrides (holiday cover, swaps) win over the rotation while they last, the last listed
first. Escalation levels name a rota each, so `paged(at)` answers "who gets the page at level k now".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from alerts.settings import WEEKDAY_INDEX, AlertsConfig, PersonConfig, RotaConfig


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    phone: str | None
    contacts: tuple[str, ...]  # apprise URLs, tried in order

    @classmethod
    def from_config(cls, p: PersonConfig) -> Person:
        return cls(p.id, p.name, p.phone, tuple(c.get_secret_value() for c in p.contacts))


@dataclass(frozen=True)
class Shift:
    rota: str
    person: str
    since: datetime
    until: datetime
    override: bool


class Rota:
    def __init__(self, cfg: RotaConfig, zone: ZoneInfo) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.zone = zone
        day_name, hhmm = cfg.handover.split()
        hour, minute = (int(x) for x in hhmm.split(":"))
        first = cfg.since + timedelta(days=(WEEKDAY_INDEX[day_name] - cfg.since.weekday()) % 7)
        self.anchor = datetime(first.year, first.month, first.day, hour, minute)  # local wall time
        self.length = timedelta(seconds=cfg.rotate_every)

    def shift(self, at: datetime) -> Shift:
        for o in reversed(self.cfg.overrides):
            if o.start <= at < o.end:
                return Shift(self.name, o.person, o.start, o.end, override=True)
        local = at.astimezone(self.zone).replace(tzinfo=None)
        n = (local - self.anchor) // self.length
        start = self.anchor + n * self.length
        person = self.cfg.people[n % len(self.cfg.people)]
        since = start.replace(tzinfo=self.zone).astimezone(UTC)
        until = (start + self.length).replace(tzinfo=self.zone).astimezone(UTC)
        # An override starting within this shift cuts it short.
        for o in self.cfg.overrides:
            if at < o.start < until:
                until = o.start
        return Shift(self.name, person, since, until, override=False)


@dataclass(frozen=True)
class Page:
    level: int
    level_name: str
    shift: Shift
    person: Person


class OnCall:
    def __init__(self, cfg: AlertsConfig) -> None:
        zone = ZoneInfo(cfg.sla.standby.timezone)
        self.people = {p.id: Person.from_config(p) for p in cfg.oncall.people}
        self.rotas = {r.name: Rota(r, zone) for r in cfg.oncall.rotas}
        self.levels: Sequence[tuple[str, str]] = [(lvl.name, lvl.rota) for lvl in cfg.escalation]

    def paged(self, at: datetime) -> list[Page]:
        """For each escalation level, who is paged at `at`."""
        out = []
        for i, (name, rota) in enumerate(self.levels):
            shift = self.rotas[rota].shift(at)
            out.append(Page(i, name, shift, self.people[shift.person]))
        return out

    def person_at_level(self, level: int, at: datetime) -> Person | None:
        if level >= len(self.levels):
            return None
        shift = self.rotas[self.levels[level][1]].shift(at)
        return self.people[shift.person]


def duty_line(oncall: OnCall, afters: Sequence[float], at: datetime, zone: ZoneInfo) -> str:
    """One line for a banner: who is paged first, until when, and who next if nobody answers."""
    pages = oncall.paged(at)
    if not pages:
        return "nobody (no alerts.escalation configured): only webhooks are notified"
    first = pages[0]
    phone = f", {first.person.phone}" if first.person.phone else ""
    until = first.shift.until.astimezone(zone).strftime("%a %m-%d %H:%M")
    nxt = oncall.rotas[first.shift.rota].shift(first.shift.until).person
    then = f", then {oncall.people[nxt].name}" if nxt != first.person.id else ""
    line = f"{first.person.name} ({first.person.id}{phone}) until {until}{then}"
    climb = [f"{p.person.name} after {after / 60:.0f} min" for p, after in zip(pages[1:], afters[1:], strict=False)]
    return line + (f"; unacknowledged: {', '.join(climb)}" if climb else "")
