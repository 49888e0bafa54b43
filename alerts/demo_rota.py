"""The demo's duty roster: two on-call engineers alternating weekly (hand-over Monday 09:00), a second line and
the O&M manager, escalating after 0, 10 and 30 minutes as the O&M standard's response clocks suggest.

The demo pages nobody outside the machine: the people have phone numbers for the duty desk but no contacts,
so the outbox only records that they were paged. Shifts count from the Monday three weeks before the demo's
day, so whoever is on this week changes every Monday like a real rota.
"""

from __future__ import annotations

from datetime import date, timedelta

from alerts.settings import AlertsConfig

DEMO_PEOPLE = (
    ("li.wei", "Li Wei", "+86 138 0000 0001"),
    ("zhang.min", "Zhang Min", "+86 138 0000 0002"),
    ("chen.jie", "Chen Jie (second line)", "+86 138 0000 0003"),
    ("wu.gang", "Wu Gang (O&M manager)", "+86 138 0000 0004"),
)


def demo_alerts(today: date) -> AlertsConfig:
    monday = today - timedelta(days=today.weekday() + 21)
    return AlertsConfig.model_validate(
        {
            "oncall": {
                "people": [{"id": i, "name": n, "phone": p} for i, n, p in DEMO_PEOPLE],
                "rotas": [
                    {
                        "name": "engineers",
                        "people": ["li.wei", "zhang.min"],
                        "rotate_every": "7d",
                        "handover": "mon 09:00",
                        "since": monday.isoformat(),
                    },
                    {"name": "second-line", "people": ["chen.jie"]},
                    {"name": "managers", "people": ["wu.gang"]},
                ],
            },
            "escalation": [
                {"name": "on-call engineer", "rota": "engineers", "after": "0m"},
                {"name": "second line", "rota": "second-line", "after": "10m"},
                {"name": "manager", "rota": "managers", "after": "30m"},
            ],
        }
    )
