"""GridSentry's Grafana dashboards, built with grafana-foundation-sdk and written to dashboards/json/.

    python -m dashboards.generate            # write the JSON files (make dashboards)
    python -m dashboards.generate --check    # exit 1 if the committed files differ from the code

Every query uses the metric names of gridsentry/exporter.py and gridsentry/screens/, or the recording
rules in deploy/prometheus-rules.yml; tests/integration/test_dashboards.py sends each of them to a real
Prometheus scraping a running fleet and requires data back.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import bargauge, dashboard, gauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT_DIR = Path(__file__).resolve().parent / "json"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioning/datasources/prometheus.yaml
SITE = 'site=~"$site"'
DEVICE = 'site=~"$site", device=~"$device"'
CLASS_COLOURS = {"I": "red", "II": "orange", "III": "yellow"}


@dataclass(frozen=True)
class Q:
    """One panel query: PromQL, legend, and whether it is an instant (table/stat) query."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


def _target(q: Q, ref: str) -> prometheus.Dataquery:
    t = prometheus.Dataquery().expr(q.expr).ref_id(ref).datasource(DATASOURCE)
    if q.legend:
        t = t.legend_format(q.legend)
    if q.table:
        t = t.format(PromQueryFormat.TABLE)
    return t.instant() if q.instant else t.range()


PanelT = TypeVar("PanelT", stat.Panel, timeseries.Panel, table.Panel, bargauge.Panel, gauge.Panel)


def _targets(panel: PanelT, queries: Sequence[Q]) -> PanelT:
    for i, q in enumerate(queries):
        panel = panel.with_target(_target(q, chr(ord("A") + i)))
    return panel


def _thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def stat_panel(
    title: str,
    queries: Sequence[Q],
    unit: str = "none",
    *,
    w: int = 4,
    h: int = 5,
    colour: str = "text",
    thresholds: dashboard.ThresholdsConfig | None = None,
    decimals: int | None = None,
    description: str = "",
    mappings: list[Any] | None = None,
) -> stat.Panel:
    p = (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(w)
        .height(h)
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.BACKGROUND if thresholds else common.BigValueColorMode.VALUE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(thresholds or _thresholds((None, colour)))
    )
    if decimals is not None:
        p = p.decimals(decimals)
    if description:
        p = p.description(description)
    if mappings:
        p = p.mappings(mappings)
    return _targets(p, queries)


def ts_panel(
    title: str, queries: Sequence[Q], unit: str, *, w: int = 12, h: int = 8, description: str = "", stack: bool = False
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(w)
        .height(h)
        .fill_opacity(15)
        .line_width(2)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
    )
    if stack:
        p = p.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    if description:
        p = p.description(description)
    return _targets(p, queries)


def table_panel(
    title: str, queries: Sequence[Q], *, w: int = 12, h: int = 8, description: str = "", unit: str = "none"
) -> table.Panel:
    p = table.Panel().title(title).datasource(DATASOURCE).span(w).height(h).unit(unit)
    if description:
        p = p.description(description)
    return _targets(p, queries)


def bar_panel(
    title: str,
    queries: Sequence[Q],
    unit: str,
    *,
    w: int = 12,
    h: int = 8,
    max_value: float | None = None,
    thresholds: dashboard.ThresholdsConfig | None = None,
    description: str = "",
) -> bargauge.Panel:
    p = (
        bargauge.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(w)
        .height(h)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if max_value is not None:
        p = p.max(max_value)
    if thresholds is not None:
        p = p.thresholds(thresholds)
    if description:
        p = p.description(description)
    return _targets(p, queries)


def gauge_panel(
    title: str,
    queries: Sequence[Q],
    unit: str,
    *,
    w: int = 6,
    h: int = 8,
    max_value: float,
    thresholds: dashboard.ThresholdsConfig,
    description: str = "",
) -> gauge.Panel:
    p = (
        gauge.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(w)
        .height(h)
        .min(0)
        .max(max_value)
        .thresholds(thresholds)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if description:
        p = p.description(description)
    return _targets(p, queries)


def variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": query, "refId": f"{name}-values", "qryType": 1})
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def base(
    uid: str, title: str, description: str, *, refresh: str = "30s", time_from: str = "now-6h", kinds: str | None = None
) -> dashboard.Dashboard:
    d = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["gridsentry"])
        .timezone("browser")
        .refresh(refresh)
        .time(time_from, "now")
        .readonly()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(variable("site", "站点 Site", "label_values(gridsentry_device_up, site)"))
    )
    device_source = f'gridsentry_device_up{{{SITE}, kind=~"{kinds}"}}' if kinds else f"gridsentry_device_up{{{SITE}}}"
    d = d.with_variable(variable("device", "设备 Device", f"label_values({device_source}, device)"))
    return d.link(
        dashboard.DashboardLink("GridSentry")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(["gridsentry"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )


STATE_TILE_MAPPINGS = [
    dm.ValueMap(
        options={
            "0": dm.ValueMappingResult(text="未上报 never seen", color="#3d4650", index=0),
            "1": dm.ValueMappingResult(text="在线 online", color="green", index=1),
            "2": dm.ValueMappingResult(text="离线 offline", color="#6b7785", index=2),
            "3": dm.ValueMappingResult(text="告警 alarm", color="red", index=3),
        }
    )
]

DEVICE_STATE_CODE = (
    "max by (site, device) ("
    f'(gridsentry_device_state{{{DEVICE}, state="never_seen"}} == 1) * 0'
    f' or (gridsentry_device_state{{{DEVICE}, state="online"}} == 1) * 1'
    f' or (gridsentry_device_state{{{DEVICE}, state="offline"}} == 1) * 2'
    f' or (gridsentry_device_state{{{DEVICE}, state="alarm"}} == 1) * 3)'
)


def wall() -> dashboard.Dashboard:
    d = base(
        "gridsentry-wall",
        "GridSentry · 监控大屏 Fleet wall screen",
        "The duty operator's wall: open alerts by class with SLA countdowns, devices by state, power flows.",
        refresh="10s",
        time_from="now-6h",
    )
    for cls in ("I", "II", "III"):
        d = d.with_panel(
            stat_panel(
                f"{'Ⅰ' * (cls == 'I') or 'Ⅱ' * (cls == 'II') or 'Ⅲ'}类告警 Class {cls} open",
                [Q(f'sum(gridsentry_alerts_open{{event_class="{cls}"}})', instant=True)],
                thresholds=_thresholds((None, "green"), (1, CLASS_COLOURS[cls])),
                w=3,
                description=f"Open (firing or acknowledged) class {cls} alerts.",
            )
        )
    d = d.with_panel(
        stat_panel(
            "SLA 超时 breached",
            [Q("sum(gridsentry_alerts_sla_breached)", instant=True)],
            thresholds=_thresholds((None, "green"), (1, "red")),
            w=3,
            description="Open alerts past their respond (5 min) or restore (12/6/4 h) deadline.",
        )
    )
    for state, colour, zh in (("online", "green", "在线"), ("alarm", "red", "告警"), ("offline", "#6b7785", "离线")):
        d = d.with_panel(
            stat_panel(
                f"{zh} {state}",
                [Q(f'sum(gridsentry_device_state{{{SITE}, state="{state}"}})', instant=True)],
                colour=colour,
                w=2,
            )
        )
    d = d.with_panel(
        stat_panel(
            "光伏 PV",
            [Q(f"sum(site:gridsentry_pv_generation_watts:sum{{{SITE}}})", instant=True)],
            "watt",
            w=2,
            decimals=1,
            colour="yellow",
        )
    )
    d = d.with_panel(
        stat_panel(
            "充电 Charging",
            [Q(f"sum(site:gridsentry_charging_power_watts:sum{{{SITE}}})", instant=True)],
            "watt",
            w=2,
            decimals=1,
            colour="blue",
        )
    )
    d = d.with_row(dashboard.Row("告警与设备 Alerts and devices"))
    d = d.with_panel(
        table_panel(
            "SLA 倒计时 Countdown to deadlines",
            [Q(f"gridsentry_alert_deadline_timestamp_seconds{{{SITE}}} - time()", instant=True, table=True)],
            w=12,
            h=10,
            unit="s",
            description="Seconds left before each open alert's deadline (respond, on site, restore); negative = overdue.",
        )
    )
    d = d.with_panel(
        stat_panel(
            "设备状态 Devices by state",
            [Q(DEVICE_STATE_CODE, legend="{{device}}", instant=True)],
            w=12,
            h=10,
            thresholds=_thresholds((None, "#3d4650"), (1, "green"), (2, "#6b7785"), (3, "red")),
            mappings=STATE_TILE_MAPPINGS,
            description="One tile per device: alarm (open alert), offline (silent for 3 intervals), online, never seen.",
        )
    )
    d = d.with_row(dashboard.Row("功率 Power flows"))
    d = d.with_panel(
        ts_panel(
            "功率 Power: PV generation, charging, transformer load",
            [
                Q(f"sum(site:gridsentry_pv_generation_watts:sum{{{SITE}}})", "光伏 PV generation"),
                Q(f"sum(site:gridsentry_charging_power_watts:sum{{{SITE}}})", "充电 Charging"),
                Q(f"sum(site:gridsentry_transformer_load_volt_amperes:sum{{{SITE}}})", "变压器 Transformer load (VA)"),
            ],
            "watt",
            w=16,
        )
    )
    return d.with_panel(
        bar_panel(
            "告警 by site and class",
            [
                Q(
                    f"sum by (site, event_class) (gridsentry_device_open_alerts{{{SITE}}}) or sum by (site) (gridsentry_device_up{{{SITE}}}) * 0",
                    "{{site}} {{event_class}}",
                    instant=True,
                )
            ],
            "none",
            w=8,
            description="Open alerts per site and event class (0 where a site has none).",
        )
    )


def charger() -> dashboard.Dashboard:
    d = base(
        "gridsentry-charger",
        "GridSentry · 充电桩 Chargers (DC and AC)",
        "DC gun power, temperatures, voltage, current and state of charge; AC pile power and connector temperature.",
        kinds="charger_.*",
    )
    dev = DEVICE
    d = d.with_row(dashboard.Row("直流桩 DC chargers"))
    d = d.with_panel(
        ts_panel(
            "枪功率 Gun power", [Q(f"gridsentry_reading_gun_power_watts{{{dev}}}", "{{device}} gun {{gun}}")], "watt"
        )
    )
    d = d.with_panel(
        ts_panel(
            "枪温度 Gun temperature",
            [Q(f"gridsentry_reading_gun_temp_celsius{{{dev}}}", "{{device}} gun {{gun}}")],
            "celsius",
            description="Pin temperature (max of DC+/DC-); rules warn above 80 °C and alarm above 90 °C.",
        )
    )
    d = d.with_panel(
        ts_panel(
            "枪电压 Gun voltage",
            [Q(f"gridsentry_reading_gun_voltage_volts{{{dev}}}", "{{device}} gun {{gun}}")],
            "volt",
            w=8,
        )
    )
    d = d.with_panel(
        ts_panel(
            "枪电流 Gun current",
            [Q(f"gridsentry_reading_gun_current_amperes{{{dev}}}", "{{device}} gun {{gun}}")],
            "amp",
            w=8,
        )
    )
    d = d.with_panel(
        ts_panel("SoC", [Q(f"gridsentry_reading_gun_soc_ratio{{{dev}}}", "{{device}} gun {{gun}}")], "percentunit", w=8)
    )
    d = d.with_panel(
        ts_panel(
            "模块与机柜温度 Module and cabinet temperature",
            [
                Q(f"gridsentry_reading_module_temp_celsius{{{dev}}}", "{{device}} module"),
                Q(f"gridsentry_reading_cabinet_temp_celsius{{{dev}}}", "{{device}} cabinet"),
            ],
            "celsius",
        )
    )
    d = d.with_panel(
        ts_panel("输入功率 AC input power", [Q(f"gridsentry_reading_input_power_watts{{{dev}}}", "{{device}}")], "watt")
    )
    d = d.with_row(dashboard.Row("交流桩 AC chargers"))
    d = d.with_panel(
        ts_panel(
            "功率 Power", [Q(f'gridsentry_reading_power_watts{{{dev}, kind="charger_ac"}}', "{{device}}")], "watt", w=8
        )
    )
    d = d.with_panel(
        ts_panel(
            "枪头温度 Connector temperature",
            [Q(f"gridsentry_reading_connector_temp_celsius{{{dev}}}", "{{device}}")],
            "celsius",
            w=8,
        )
    )
    return d.with_panel(
        ts_panel(
            "电流 Current",
            [Q(f'gridsentry_reading_current_amperes{{{dev}, kind="charger_ac"}}', "{{device}}")],
            "amp",
            w=8,
        )
    )


def pv() -> dashboard.Dashboard:
    d = base(
        "gridsentry-pv",
        "GridSentry · 光伏电站 PV plant",
        "Inverter output, efficiency, and each string against its peers on the same inverter.",
        kinds="pv_inverter",
    )
    dev = DEVICE
    d = d.with_panel(
        stat_panel(
            "光伏发电 PV generation now",
            [Q(f"sum(site:gridsentry_pv_generation_watts:sum{{{SITE}}})", instant=True)],
            "watt",
            w=6,
            decimals=1,
            colour="yellow",
        )
    )
    d = d.with_panel(
        stat_panel(
            "辐照度 Irradiance",
            [Q(f"max(gridsentry_reading_irradiance_watts_per_square_meter{{{SITE}}})", instant=True)],
            "Wm2",
            w=6,
        )
    )
    d = d.with_panel(
        bar_panel(
            "逆变器效率 Inverter efficiency (AC/DC)",
            [Q(f"device:gridsentry_inverter_efficiency:ratio{{{dev}}}", "{{device}}", instant=True)],
            "percentunit",
            w=12,
            h=5,
            max_value=1,
            thresholds=_thresholds((None, "red"), (0.9, "orange"), (0.95, "green")),
            description="AC output over DC input while the DC side carries more than 100 W.",
        )
    )
    d = d.with_panel(
        ts_panel(
            "交流功率 AC power per inverter", [Q(f"gridsentry_reading_ac_power_watts{{{dev}}}", "{{device}}")], "watt"
        )
    )
    d = d.with_panel(
        ts_panel(
            "组串电流 String current vs peers",
            [
                Q(f"gridsentry_reading_string_current_amperes{{{dev}}}", "{{device}} string {{string}}"),
                Q(
                    f"quantile by (device) (0.5, gridsentry_reading_string_current_amperes{{{dev}}})",
                    "{{device}} median",
                ),
            ],
            "amp",
        )
    )
    d = d.with_panel(
        bar_panel(
            "组串偏差 String deviation from the inverter's median",
            [
                Q(
                    f"gridsentry_reading_string_current_amperes{{{dev}}} / on (device) group_left () "
                    f"clamp_min(quantile by (device) (0.5, gridsentry_reading_string_current_amperes{{{dev}}}), 0.1) - 1",
                    "{{device}} string {{string}}",
                    instant=True,
                )
            ],
            "percentunit",
            w=12,
            thresholds=_thresholds((None, "red"), (-0.2, "orange"), (-0.1, "green")),
            description="A string 20 % below its neighbours points at soiling, shading or a failed bypass diode.",
        )
    )
    return d.with_panel(
        ts_panel(
            "温度 Heat sink and ambient",
            [
                Q(f"gridsentry_reading_heatsink_temp_celsius{{{dev}}}", "{{device}} heat sink"),
                Q(f"gridsentry_reading_ambient_temp_celsius{{{dev}}}", "{{device}} ambient"),
            ],
            "celsius",
        )
    )


def transformer() -> dashboard.Dashboard:
    d = base(
        "gridsentry-transformer",
        "GridSentry · 箱变 Box transformers",
        "Load factor, top-oil and hot-spot temperature (IEC 60076-7) and where they are heading.",
        kinds="box_transformer",
    )
    dev = DEVICE
    d = d.with_panel(
        gauge_panel(
            "负载率 Load factor",
            [Q(f"gridsentry_reading_load_factor_ratio{{{dev}}}", "{{device}}", instant=True)],
            "percentunit",
            max_value=1.5,
            thresholds=_thresholds((None, "green"), (0.8, "orange"), (1.0, "red")),
        )
    )
    d = d.with_panel(
        gauge_panel(
            "热点温度 Hot spot",
            [Q(f"gridsentry_reading_hot_spot_temp_celsius{{{dev}}}", "{{device}}", instant=True)],
            "celsius",
            max_value=160,
            thresholds=_thresholds((None, "green"), (98, "orange"), (120, "red")),
            description="Winding hot-spot temperature; 98 °C is the normal-ageing reference of IEC 60076-7.",
        )
    )
    d = d.with_panel(
        ts_panel("负载 Apparent load", [Q(f"gridsentry_reading_load_volt_amperes{{{dev}}}", "{{device}}")], "voltamp")
    )
    d = d.with_panel(
        ts_panel(
            "油温与热点 Top oil and hot spot, with a 3 h forecast",
            [
                Q(f"gridsentry_reading_top_oil_temp_celsius{{{dev}}}", "{{device}} top oil"),
                Q(f"gridsentry_reading_hot_spot_temp_celsius{{{dev}}}", "{{device}} hot spot"),
                Q(
                    f"predict_linear(gridsentry_reading_hot_spot_temp_celsius{{{dev}}}[30m], 3 * 3600)",
                    "{{device}} hot spot in 3 h (linear)",
                ),
            ],
            "celsius",
            description="The forecast extends the last 30 minutes' trend 3 hours ahead (PromQL predict_linear).",
        )
    )
    d = d.with_panel(
        ts_panel("低压电压 LV voltage", [Q(f"gridsentry_reading_lv_voltage_volts{{{dev}}}", "{{device}}")], "volt")
    )
    return d.with_panel(
        ts_panel("低压电流 LV current", [Q(f"gridsentry_reading_lv_current_amperes{{{dev}}}", "{{device}}")], "amp")
    )


def alerts_sla() -> dashboard.Dashboard:
    d = base(
        "gridsentry-alerts",
        "GridSentry · 告警与服务水平 Alerts and SLA",
        "Open alerts by event class, deadlines of the O&M standard (respond 5 min, on site 2 h, restore 12/6/4 h) and breaches.",
        refresh="30s",
    )
    for cls in ("I", "II", "III"):
        d = d.with_panel(
            stat_panel(
                f"Class {cls} open",
                [Q(f'sum(gridsentry_alerts_open{{event_class="{cls}"}})', instant=True)],
                thresholds=_thresholds((None, "green"), (1, CLASS_COLOURS[cls])),
                w=4,
            )
        )
    d = d.with_panel(
        stat_panel(
            "未响应 Unacknowledged",
            [Q("sum(gridsentry_alerts_unacknowledged)", instant=True)],
            thresholds=_thresholds((None, "green"), (1, "orange")),
            w=4,
        )
    )
    d = d.with_panel(
        stat_panel(
            "响应及时率 Respond-in-time share (open alerts)",
            [
                Q(
                    '1 - sum(gridsentry_alerts_sla_breached{deadline="ack"}) / clamp_min(sum(gridsentry_alerts_open), 1)',
                    instant=True,
                )
            ],
            "percentunit",
            w=4,
            thresholds=_thresholds((None, "red"), (0.9, "orange"), (0.99, "green")),
            description="Share of open alerts acknowledged within 5 minutes (or still inside them). The monthly KPI "
            "over all alerts is in the monthly report.",
        )
    )
    d = d.with_panel(
        stat_panel(
            "恢复超时 Restore overdue",
            [Q('sum(gridsentry_alerts_sla_breached{deadline="restore"})', instant=True)],
            thresholds=_thresholds((None, "green"), (1, "red")),
            w=4,
        )
    )
    d = d.with_panel(
        table_panel(
            "SLA 倒计时 Deadlines of open alerts",
            [Q("gridsentry_alert_deadline_timestamp_seconds - time()", instant=True, table=True)],
            w=24,
            h=9,
            unit="s",
            description="Seconds left per alert and deadline; negative = overdue.",
        )
    )
    d = d.with_panel(
        ts_panel(
            "未关闭告警 Open alerts by class",
            [Q("sum by (event_class) (gridsentry_alerts_open)", "Class {{event_class}}")],
            "none",
            stack=True,
        )
    )
    d = d.with_panel(
        ts_panel(
            "SLA 超时 Breaches by class and deadline",
            [
                Q(
                    "sum by (event_class, deadline) (gridsentry_alerts_sla_breached)",
                    "Class {{event_class}} {{deadline}}",
                )
            ],
            "none",
        )
    )
    d = d.with_row(dashboard.Row("考核指标 KPIs of the O&M standard, last 30 days"))
    kpi = "gridsentry_alerts_kpi"
    d = d.with_panel(
        bar_panel(
            "服务响应及时率 Response timeliness rate",
            [Q(f"{kpi}_response_timeliness_ratio", "Class {{event_class}}", instant=True)],
            "percentunit",
            w=6,
            max_value=1,
            thresholds=_thresholds((None, "red"), (0.9, "orange"), (0.98, "green")),
            description="Alerts acknowledged within 5 minutes / alerts whose 5 minutes are over or that were acknowledged.",
        )
    )
    d = d.with_panel(
        bar_panel(
            "事件解决率 Resolution rate",
            [Q(f"{kpi}_resolution_ratio", "Class {{event_class}}", instant=True)],
            "percentunit",
            w=6,
            max_value=1,
            thresholds=_thresholds((None, "red"), (0.85, "green")),
            description="Resolved or closed / raised; the standard recommends 85-100 %.",
        )
    )
    d = d.with_panel(
        bar_panel(
            "MTTA 平均响应时间",
            [Q(f"{kpi}_mean_time_to_acknowledge_seconds", "Class {{event_class}}", instant=True)],
            "s",
            w=6,
            thresholds=_thresholds((None, "green"), (300, "red")),
            description="Mean time from raised to acknowledged; the standard asks for a response within 5 minutes.",
        )
    )
    d = d.with_panel(
        bar_panel(
            "MTTR 平均修复时间",
            [Q(f"{kpi}_mean_time_to_resolve_seconds", "Class {{event_class}}", instant=True)],
            "s",
            w=6,
            description="Mean time from raised to resolved or closed (restore within 12 h class I, 6 h II, 4 h III).",
        )
    )
    return d.with_panel(
        ts_panel(
            "告警产生与恢复 Raised and resolved per hour",
            [
                Q("sum(increase(gridsentry_alerts_raised_total[1h]))", "raised"),
                Q("sum(increase(gridsentry_alerts_resolved_total[1h]))", "resolved"),
            ],
            "none",
            w=24,
        )
    )


def pipeline() -> dashboard.Dashboard:
    d = (
        dashboard.Dashboard("GridSentry · 系统健康 Pipeline health")
        .uid("gridsentry-pipeline")
        .description(
            "GridSentry's own health: ingest, rejects, queue, commit and rule latency, broker links, scrape cost."
        )
        .tags(["gridsentry"])
        .timezone("browser")
        .refresh("30s")
        .time("now-3h", "now")
        .readonly()
        .link(
            dashboard.DashboardLink("GridSentry")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["gridsentry"])
            .as_dropdown(True)
            .keep_time(True)
        )
    )
    rate = "$__rate_interval"
    d = d.with_panel(
        stat_panel(
            "入库速率 Ingest",
            [Q("sum(gridsentry:ingest_readings:rate1m)", instant=True)],
            "reqps",
            w=4,
            description="Readings committed per second (1 min rate).",
        )
    )
    d = d.with_panel(
        stat_panel(
            "写队列 Write queue",
            [Q("max(gridsentry_storage_write_queue_depth)", instant=True)],
            w=4,
            thresholds=_thresholds((None, "green"), (100, "orange"), (1000, "red")),
        )
    )
    d = d.with_panel(
        stat_panel("MQTT 连接 Brokers connected", [Q("sum(gridsentry_mqtt_connected)", instant=True)], w=4)
    )
    d = d.with_panel(
        stat_panel("未确认 Pending messages", [Q("sum(gridsentry_ingest_pending_messages)", instant=True)], w=4)
    )
    d = d.with_panel(
        stat_panel(
            "离线设备 Devices offline",
            [Q("sum(gridsentry_device_up == bool 0)", instant=True)],
            w=4,
            thresholds=_thresholds((None, "green"), (1, "orange")),
        )
    )
    d = d.with_panel(
        stat_panel("运行时间 Uptime", [Q("time() - max(gridsentry_start_time_seconds)", instant=True)], "s", w=4)
    )
    d = d.with_panel(
        ts_panel(
            "入库 Readings committed per second",
            [Q(f"sum by (source) (rate(gridsentry_ingest_readings_total[{rate}]))", "{{source}}")],
            "reqps",
        )
    )
    d = d.with_panel(
        ts_panel(
            "拒收 Rejected messages per second, by reason",
            [Q(f"sum by (reason) (rate(gridsentry_ingest_rejected_total[{rate}]))", "{{reason}}")],
            "reqps",
        )
    )
    d = d.with_panel(
        ts_panel(
            "提交延迟 Commit latency",
            [
                Q(
                    f"histogram_quantile(0.5, sum by (le) (rate(gridsentry_storage_commit_seconds_bucket[{rate}])))",
                    "p50",
                ),
                Q(
                    f"histogram_quantile(0.99, sum by (le) (rate(gridsentry_storage_commit_seconds_bucket[{rate}])))",
                    "p99",
                ),
            ],
            "s",
        )
    )
    d = d.with_panel(
        ts_panel(
            "规则计算 Rule evaluation time",
            [
                Q(
                    f"histogram_quantile(0.99, sum by (le) (rate(gridsentry_rules_evaluation_seconds_bucket[{rate}])))",
                    "p99",
                ),
                Q("gridsentry_rules_last_evaluation_seconds", "last"),
            ],
            "s",
        )
    )
    d = d.with_panel(
        ts_panel(
            "MQTT 链路 Broker links",
            [
                Q(f"sum by (broker) (rate(gridsentry_mqtt_messages_received_total[{rate}]))", "{{broker}} received/s"),
                Q(
                    f"sum by (broker) (rate(gridsentry_mqtt_connection_failures_total[{rate}]))",
                    "{{broker}} failures/s",
                ),
            ],
            "reqps",
        )
    )
    d = d.with_panel(
        ts_panel(
            "Modbus 链路 Modbus links",
            [
                Q("sum(gridsentry_modbus_device_up) or vector(0)", "devices answering"),
                Q("count(gridsentry_modbus_device_up == 0) or vector(0)", "devices not answering"),
                Q(f"sum by (kind) (rate(gridsentry_modbus_errors_total[{rate}])) or vector(0)", "errors/s {{kind}}"),
            ],
            "none",
            description="Polled Modbus devices answering or not, and request errors by kind (timeout, connection, exception_NN, decode).",
        )
    )
    d = d.with_panel(
        ts_panel(
            "通知 Notifications",
            [
                Q(f"sum(rate(gridsentry_notifications_sent_total[{rate}])) or vector(0)", "delivered/s"),
                Q(
                    f"sum(rate(gridsentry_notifications_attempt_failures_total[{rate}])) or vector(0)",
                    "failed attempts/s",
                ),
                Q("sum(gridsentry_notifications_pending) or vector(0)", "waiting in the outbox"),
            ],
            "none",
            description="Alert notifications delivered, failed attempts (retried with backoff) and the outbox backlog.",
        )
    )
    d = d.with_panel(
        ts_panel(
            "抓取代价 Scrape cost",
            [
                Q("gridsentry_scrape_fleet_render_seconds", "fleet render (s)"),
                Q('scrape_duration_seconds{job=~"gridsentry.*"}', "scrape duration (s)"),
            ],
            "s",
            description="Time GridSentry spends rendering the fleet families, and Prometheus' whole scrape.",
        )
    )
    return d.with_panel(
        ts_panel(
            "序列 Series",
            [
                Q("gridsentry_scrape_fleet_series", "fleet series served"),
                Q("gridsentry_latest_series", "device x metric held"),
            ],
            "none",
            w=24,
        )
    )


DASHBOARDS = {
    "wall": wall,
    "charger": charger,
    "pv": pv,
    "transformer": transformer,
    "alerts": alerts_sla,
    "pipeline": pipeline,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for name, build in DASHBOARDS.items():
        data = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build().build()))
        # Stable ids in layout order, so links to a panel (viewPanel=N) survive regeneration.
        panel_id = 0
        for panel in data["panels"]:
            for p in [panel, *panel.get("panels", [])]:
                panel_id += 1
                p["id"] = panel_id
        text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True)
        out[f"gridsentry-{name}.json"] = text + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write GridSentry's Grafana dashboards to dashboards/json/.")
    p.add_argument("--check", action="store_true", help="only compare with the committed files; exit 1 if stale")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default dashboards/json)")
    args = p.parse_args(argv)
    files = render_all()
    stale = [
        n
        for n, text in files.items()
        if not (args.out / n).exists() or (args.out / n).read_text(encoding="utf-8") != text
    ]
    extra = sorted(f.name for f in args.out.glob("*.json") if f.name not in files) if args.out.exists() else []
    if args.check:
        for n in stale:
            print(f"{args.out / n} is not what the code generates: run `make dashboards` and commit", file=sys.stderr)
        for n in extra:
            print(f"{args.out / n} is not generated by dashboards/generate.py: remove it", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, text in files.items():
        (args.out / n).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} dashboards to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
