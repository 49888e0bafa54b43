"""The demo's duty roster: someone is always on call, engineers alternate weekly at Monday 09:00."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from alerts.demo_rota import demo_alerts
from alerts.oncall import OnCall, duty_line
from gridsentry.demo import demo_config

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_demo_config_pages_an_engineer_then_second_line_then_manager() -> None:
    cfg = demo_config(Path("/tmp/unused"), 0, 0)
    pages = OnCall(cfg.alerts).paged(datetime.now(UTC))
    assert [(p.level_name, p.shift.rota) for p in pages] == [
        ("on-call engineer", "engineers"),
        ("second line", "second-line"),
        ("manager", "managers"),
    ]
    assert pages[0].person.id in {"li.wei", "zhang.min"} and pages[0].person.phone
    assert [lvl.after for lvl in cfg.alerts.escalation] == [0, 600, 1800]


def test_engineers_hand_over_on_monday_at_nine_local_time() -> None:
    oncall = OnCall(demo_alerts(date(2026, 11, 23)))  # a Monday
    before = datetime(2026, 11, 30, 8, 59, tzinfo=SHANGHAI)
    after = before + timedelta(minutes=2)
    first, second = (oncall.paged(t)[0] for t in (before, after))
    assert {first.person.id, second.person.id} == {"li.wei", "zhang.min"}
    assert first.shift.until == datetime(2026, 11, 30, 9, 0, tzinfo=SHANGHAI) == second.shift.since
    assert oncall.paged(after + timedelta(days=7))[0].person.id == first.person.id
    line = duty_line(oncall, [0, 600, 1800], before, SHANGHAI)
    assert line.startswith(f"{first.person.name} ({first.person.id}, +86 138 0000 000")
    assert "until Mon 11-30 09:00, then " + second.person.name in line
    assert line.endswith("unacknowledged: Chen Jie (second line) after 10 min, Wu Gang (O&M manager) after 30 min")
