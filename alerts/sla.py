"""Service-level deadlines per event class, computed when an alert is raised.

Default preset: the O&M standard's table 1 (shared/seeds/000_*.txt §8): respond within 5 minutes,
on site within 2 hours, operation restored within 12 h for class I, fault cleared within 6 h
(class II) or 4 h (class III). Policies, standby windows and escalation grow from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Deadlines:
    ack_due: datetime
    onsite_due: datetime
    restore_due: datetime


@dataclass(frozen=True)
class SlaPolicy:
    name: str
    acknowledge: timedelta
    on_site: timedelta
    restore: dict[str, timedelta]

    def deadlines(self, event_class: str, raised_at: datetime) -> Deadlines:
        return Deadlines(
            ack_due=raised_at + self.acknowledge,
            onsite_due=raised_at + self.on_site,
            restore_due=raised_at + self.restore[event_class],
        )


STANDARD_TABLE_1 = SlaPolicy(
    name="standard-table-1",
    acknowledge=timedelta(minutes=5),
    on_site=timedelta(hours=2),
    restore={"I": timedelta(hours=12), "II": timedelta(hours=6), "III": timedelta(hours=4)},
)
