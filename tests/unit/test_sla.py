"""Deadline arithmetic for every class and preset, across standby hours and maintenance windows (no sleeping)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from alerts.oncall import OnCall
from alerts.settings import AlertsConfig, StandbyConfig
from alerts.sla import BID_TIERS, PRESETS, STANDARD_TABLE_1, ServiceHours, SlaCalculator, policy_from_config

SH = ZoneInfo("Asia/Shanghai")
H = timedelta(hours=1)
MIN = timedelta(minutes=1)


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=SH)


# 2026-11-23 is a Monday.
MON_10 = local(2026, 11, 23, 10)


@pytest.mark.parametrize(
    ("policy", "cls", "ack", "onsite", "restore"),
    [
        (STANDARD_TABLE_1, "I", 5 * MIN, 2 * H, 12 * H),
        (STANDARD_TABLE_1, "II", 5 * MIN, 2 * H, 6 * H),
        (STANDARD_TABLE_1, "III", 5 * MIN, 2 * H, 4 * H),
        (BID_TIERS, "I", 5 * MIN, 8 * H, 12 * H),
        (BID_TIERS, "II", 5 * MIN, 4 * H, 6 * H),
        (BID_TIERS, "III", 1 * H, 4 * H, 4 * H),
    ],
)
def test_round_the_clock_deadlines_for_every_class_and_preset(policy, cls, ack, onsite, restore) -> None:
    fired = local(2026, 11, 28, 23, 50)  # a Saturday night: 7x24 does not care
    d = SlaCalculator(policy).deadlines(cls, fired)
    assert (d.ack_due - fired, d.onsite_due - fired, d.restore_due - fired) == (ack, onsite, restore)
    assert d.warn_at["restore"] - fired == restore * 0.8


@pytest.mark.parametrize("cls", ["I", "II", "III"])
def test_5x8_pauses_overnight_and_over_the_weekend(cls: str) -> None:
    calc = SlaCalculator(STANDARD_TABLE_1, ServiceHours(StandbyConfig(window="5x8", start="08:30")))
    friday_1600 = local(2026, 11, 27, 16)
    d = calc.deadlines(cls, friday_1600)
    # 1.5 h left on Friday (until 16:30 + ... the day is 08:30-16:30), the rest from Monday 08:30.
    assert d.ack_due == local(2026, 11, 27, 16, 5)
    assert d.onsite_due == local(2026, 11, 30, 8, 30) + (2 * H - 30 * MIN)
    restore = STANDARD_TABLE_1.restore[cls]
    remaining = restore - 30 * MIN
    expected = local(2026, 11, 30, 8, 30)
    while remaining > 8 * H:
        remaining -= 8 * H
        expected += timedelta(days=1)
    assert d.restore_due == expected + remaining


def test_an_alert_outside_standby_hours_starts_its_clock_at_the_next_opening() -> None:
    calc = SlaCalculator(STANDARD_TABLE_1, ServiceHours(StandbyConfig(window="5x10", start="08:00")))
    saturday = local(2026, 11, 28, 3)
    assert calc.deadlines("III", saturday).ack_due == local(2026, 11, 30, 8, 5)


def test_holidays_and_the_no_pause_option() -> None:
    holiday = ServiceHours(StandbyConfig(window="5x8", holidays=[date(2026, 11, 30)]))
    calc = SlaCalculator(STANDARD_TABLE_1, holiday)
    assert calc.deadlines("I", local(2026, 11, 28, 12)).ack_due == local(2026, 12, 1, 8, 35)
    running = SlaCalculator(STANDARD_TABLE_1, ServiceHours(StandbyConfig(window="5x8", pause_outside=False)))
    assert running.deadlines("I", local(2026, 11, 28, 12)).ack_due == local(2026, 11, 28, 12, 5)


def test_maintenance_windows_pause_the_clock_of_their_devices() -> None:
    calc = SlaCalculator(STANDARD_TABLE_1)
    fired = MON_10
    pause = [(local(2026, 11, 23, 11), local(2026, 11, 23, 14))]  # 3 h of planned work
    d = calc.deadlines("III", fired, pause)
    assert d.ack_due == fired + 5 * MIN  # before the window
    # 10:00 + 2 h would be 12:00, inside the window: 1 h runs before it and 1 h after 14:00.
    assert d.onsite_due == local(2026, 11, 23, 15)
    assert d.restore_due == local(2026, 11, 23, 17)
    # Overlapping windows are merged, and standby hours and maintenance combine.
    both = SlaCalculator(STANDARD_TABLE_1, ServiceHours(StandbyConfig(window="5x8", start="08:30")))
    pauses = [(local(2026, 11, 23, 15), local(2026, 11, 24, 10)), (local(2026, 11, 23, 16), local(2026, 11, 23, 17))]
    # Monday 10:00 +4 h: 10-15 runs 4 h? yes: due 14:00 before the window.
    assert both.deadlines("III", MON_10, pauses).restore_due == local(2026, 11, 23, 14)
    # Class II (6 h): 10-15 = 5 h, then from Tuesday 10:00 (window end) 1 h.
    assert both.deadlines("II", MON_10, pauses).restore_due == local(2026, 11, 24, 11)


def test_running_time_between_two_moments_skips_paused_time() -> None:
    calc = SlaCalculator(STANDARD_TABLE_1, ServiceHours(StandbyConfig(window="5x8", start="08:30")))
    assert calc.running(local(2026, 11, 27, 16), local(2026, 11, 30, 9, 30)) == 90 * MIN


def test_escalation_times_follow_the_clock() -> None:
    calc = SlaCalculator(STANDARD_TABLE_1, escalation_after=[0, 600, 1800])
    d = calc.deadlines("I", MON_10)
    assert [t - MON_10 for t in d.escalate_at] == [timedelta(0), 10 * MIN, 30 * MIN]


def test_custom_policy_and_bad_references_are_clear_errors() -> None:
    cfg = AlertsConfig.model_validate(
        {
            "sla": {
                "policy": "ours",
                "policies": [
                    {
                        "name": "ours",
                        "classes": {
                            c: {"acknowledge": "10m", "on_site": "3h", "restore": "1d"} for c in ("I", "II", "III")
                        },
                    }
                ],
            }
        }
    )
    p = policy_from_config(cfg)
    assert p.name == "ours" and p.restore["II"] == timedelta(days=1)
    with pytest.raises(ValidationError, match="neither a preset"):
        AlertsConfig.model_validate({"sla": {"policy": "gold"}})
    with pytest.raises(ValidationError, match="no deadlines for class II, III"):
        AlertsConfig.model_validate(
            {"sla": {"policies": [{"name": "x", "classes": {"I": {"acknowledge": 1, "on_site": 1, "restore": 1}}}]}}
        )
    assert set(PRESETS) == {"standard-table-1", "bid-tiers"}


def test_maintenance_announced_too_late_is_refused() -> None:
    window = {
        "id": "CHG-118",
        "start": "2026-12-01T09:00:00+08:00",
        "end": "2026-12-01T12:00:00+08:00",
        "devices": ["TX01"],
    }
    with pytest.raises(ValidationError, match=r"CHG-118.*announced only 1\.0 days ahead.*needs 3\.0 days"):
        AlertsConfig.model_validate({"maintenance": [{**window, "announced_at": "2026-11-30T09:00:00+08:00"}]})
    ok = AlertsConfig.model_validate({"maintenance": [{**window, "announced_at": "2026-11-27T09:00:00+08:00"}]})
    assert ok.maintenance[0].devices == ["TX01"]
    short = AlertsConfig.model_validate(
        {"maintenance_notice": "12h", "maintenance": [{**window, "announced_at": "2026-11-30T09:00:00+08:00"}]}
    )
    assert len(short.maintenance) == 1


def rota_config(**extra) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "oncall": {
                "people": [
                    {"id": "li.wei", "name": "Li Wei"},
                    {"id": "zhang.min", "name": "Zhang Min"},
                    {"id": "chen.jie", "name": "Chen Jie"},
                    {"id": "boss", "name": "Manager Wu"},
                ],
                "rotas": [
                    {
                        "name": "engineers",
                        "people": ["li.wei", "zhang.min"],
                        "handover": "mon 09:00",
                        "since": "2026-11-02",
                        "overrides": [
                            {
                                "person": "chen.jie",
                                "start": "2026-11-25T18:00:00+08:00",
                                "end": "2026-11-26T09:00:00+08:00",
                            }
                        ],
                    },
                    {"name": "managers", "people": ["boss"]},
                ],
            },
            "escalation": [
                {"name": "on-call engineer", "rota": "engineers", "after": 0},
                {"name": "manager", "rota": "managers", "after": "30m"},
            ],
            **extra,
        }
    )


def test_weekly_rotation_hand_over_and_overrides() -> None:
    oncall = OnCall(rota_config())
    # Anchor Mon 2026-11-02 09:00: li.wei, then zhang.min from 11-09, li.wei from 11-16, zhang.min from 11-23.
    assert oncall.person_at_level(0, local(2026, 11, 23, 8, 59)).id == "li.wei"
    page = oncall.paged(local(2026, 11, 23, 9, 0))
    assert [(p.level_name, p.person.id) for p in page] == [("on-call engineer", "zhang.min"), ("manager", "boss")]
    assert page[0].shift.until == local(2026, 11, 25, 18)  # cut short by the override
    assert oncall.person_at_level(0, local(2026, 11, 25, 20)).id == "chen.jie"
    assert oncall.person_at_level(0, local(2026, 11, 26, 9)).id == "zhang.min"
    assert oncall.person_at_level(0, local(2026, 10, 30, 12)).id == "zhang.min"  # before the anchor
    assert oncall.person_at_level(5, MON_10) is None


def test_rota_errors_name_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match="not a hand-over time"):
        AlertsConfig.model_validate({"oncall": {"rotas": [{"name": "x", "people": ["a"], "handover": "monday"}]}})
    with pytest.raises(ValidationError, match=r"names people not in oncall\.people: ghost"):
        AlertsConfig.model_validate({"oncall": {"rotas": [{"name": "x", "people": ["ghost"]}]}})
    with pytest.raises(ValidationError, match="pages rota 'nope'"):
        AlertsConfig.model_validate({"escalation": [{"name": "x", "rota": "nope", "after": 0}]})


def test_yaml_reads_an_unquoted_time_as_base_60() -> None:
    assert StandbyConfig.model_validate({"start": 600}).start == "10:00"


def test_config_file_errors_name_the_line(tmp_path) -> None:
    from gridsentry.config import ConfigError, load_config

    f = tmp_path / "gridsentry.yaml"
    f.write_text(
        "alerts:\n"
        "  maintenance:\n"
        "    - id: CHG-9\n"
        "      start: 2026-12-01T09:00:00+08:00\n"
        "      end: 2026-12-01T12:00:00+08:00\n"
        "      announced_at: 2026-11-30T20:00:00+08:00\n"
        "      devices: [TX01]\n"
        "  escalation:\n"
        "    - {name: first, rota: engineers, after: 5 minutes}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(f)
    text = str(err.value)
    assert "line 9: alerts.escalation[0].after" in text and "write e.g. 30s, 5m" in text
    f.write_text(
        f.read_text()
        .replace("    - {name: first, rota: engineers, after: 5 minutes}\n", "  - []\n")
        .replace("  escalation:\n  - []\n", "")
    )
    with pytest.raises(ConfigError) as err:
        load_config(f)
    text = str(err.value)
    assert "line 2: alerts.maintenance" in text, text
    assert "'CHG-9'" in text and "announced only 13.0 h ahead" in text and "needs 3.0 days" in text
