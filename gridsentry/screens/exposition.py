"""Prometheus text exposition of the fleet, rendered column-wise by Polars.

prometheus-client formats every sample in Python (about 7-10 µs per series, holding the GIL:
shared/performance.md §5), so 100,000 device series would stall ingest for a second per scrape. The
fleet families are therefore rendered here as whole columns (label escaping, value formatting, line
assembly) and appended to prometheus-client's output for GridSentry's own, low-cardinality health
families. `families()` yields the same series as prometheus-client metric families, for the baseline
in bench/metrics.py and for tests that compare both paths sample by sample.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import polars as pl
from prometheus_client.core import GaugeMetricFamily, Metric

from gridsentry.screens.naming import UNCATALOGUED_FAMILY, ReadingFamily

DEVICE_STATES = ("alarm", "offline", "online", "never_seen")


@dataclass(frozen=True)
class FamilyDoc:
    """One family as documented in docs/metrics.md."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...]


DEVICE_FAMILIES = (
    FamilyDoc(
        "gridsentry_device_last_seen_timestamp_seconds",
        "gauge",
        "Time of the newest committed reading of the device (Unix time)",
        ("site", "kind", "device"),
    ),
    FamilyDoc(
        "gridsentry_device_last_seen_age_seconds",
        "gauge",
        "Seconds since the newest committed reading of the device, at scrape time",
        ("site", "kind", "device"),
    ),
    FamilyDoc(
        "gridsentry_device_up",
        "gauge",
        "1 when the device reported within offline_after_intervals x its expected interval, else 0",
        ("site", "kind", "device"),
    ),
    FamilyDoc(
        "gridsentry_device_state",
        "gauge",
        "1 for the device's current state: alarm (an open alert), offline, online or never_seen",
        ("site", "kind", "device", "state"),
    ),
    FamilyDoc(
        "gridsentry_device_open_alerts",
        "gauge",
        "Open alerts (firing or acknowledged) on the device, by event class",
        ("site", "kind", "device", "event_class"),
    ),
    FamilyDoc(
        "gridsentry_device_rated_power_watts",
        "gauge",
        "Rated power from the device ledger (apparent power in volt-amperes for transformers)",
        ("site", "kind", "device"),
    ),
)

UNCATALOGUED_DOC = FamilyDoc(
    UNCATALOGUED_FAMILY,
    "gauge",
    "Latest reading of a metric that is not in the catalogue, as received (no unit known)",
    ("site", "kind", "device", "metric"),
)

DEVICE_SCHEMA = pl.Schema(
    {
        "device_id": pl.String(),
        "site": pl.String(),
        "kind": pl.String(),
        "expected_interval_s": pl.Float64(),
        "rated_kw": pl.Float64(),
    }
)


def _esc(col: pl.Expr) -> pl.Expr:
    """Label-value escaping of the text format: backslash, double quote, line feed."""
    return (
        col.fill_null("")
        .str.replace_all("\\", "\\\\", literal=True)
        .str.replace_all('"', '\\"', literal=True)
        .str.replace_all("\n", "\\n", literal=True)
    )


def _value_text(col: pl.Expr) -> pl.Expr:
    # Polars prints 1e-7, 1e+22, NaN and inf: all accepted by Prometheus' float parser.
    return col.cast(pl.String)


def _labels(pairs: Sequence[tuple[str, pl.Expr]]) -> pl.Expr:
    parts: list[pl.Expr] = []
    for i, (name, expr) in enumerate(pairs):
        parts += [pl.lit(f'{"," if i else ""}{name}="'), _esc(expr), pl.lit('"')]
    return pl.concat_str(parts)


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _emit(out: list[str], name: str, help_text: str, body: str) -> None:
    if body:
        out.append(f"# HELP {name} {_help(help_text)}\n# TYPE {name} gauge\n{body}\n")


@dataclass
class FleetState:
    """Everything the fleet families are rendered from, taken at one instant."""

    latest: pl.DataFrame  # device_id, metric, ts, value, quality
    devices: pl.DataFrame  # DEVICE_SCHEMA: the ledger plus devices first seen in data
    open_alerts: pl.DataFrame  # device_id, event_class, n
    families: Mapping[str, ReadingFamily]
    now: float
    reading_max_age_s: float
    offline_after_intervals: float
    devices_version: int | None = None  # changes whenever `devices` does; None: the frame's identity stands in


def family_table(families: Iterable[ReadingFamily]) -> pl.DataFrame:
    """Per catalogue metric: the opening of its series lines (`name{`), its index label part and scale."""
    # Sorted by family, then index (gun 1 before gun 2): the row number is the metric's rank in the output.
    rows = sorted(families, key=lambda f: (f.family, int(f.index_value or 0), f.metric))
    return pl.DataFrame(
        {
            "rank": list(range(len(rows))),
            "metric": [f.metric for f in rows],
            "family": [f.family for f in rows],
            "scale": [f.scale for f in rows],
            "index_value": [f.index_value for f in rows],
            "index_part": [f',{f.index_label}="{f.index_value}"' if f.index_label else "" for f in rows],
        },
        schema={
            "rank": pl.UInt64(),
            "metric": pl.String(),
            "family": pl.String(),
            "scale": pl.Float64(),
            "index_value": pl.String(),
            "index_part": pl.String(),
        },
    )


def _readings(state: FleetState, devices: pl.DataFrame) -> pl.DataFrame:
    """Fresh readings joined with their device (labels, order) and family: one row per exported series."""
    cutoff = state.now - state.reading_max_age_s
    fams = family_table(state.families.values())
    return (
        state.latest.lazy()
        .filter(pl.col("ts").dt.epoch("us") >= int(cutoff * 1e6))
        .join(devices.lazy().select("device_id", "site", "kind", "labels", "order"), on="device_id", how="left")
        .join(fams.lazy(), on="metric", how="left")
        .with_columns(
            pl.col("family").is_null().alias("uncatalogued"),
            pl.col("family").fill_null(UNCATALOGUED_FAMILY),
            (pl.col("value") * pl.col("scale").fill_null(1.0)).alias("value"),
            # One integer to sort by (family, index, then site and device): far cheaper than four string keys.
            (pl.col("rank").fill_null(fams.height) * (1 << 32) + pl.col("order").fill_null(0).cast(pl.UInt64)).alias(
                "sort_key"
            ),
        )
        .collect()
    )


@dataclass(frozen=True)
class SeriesLayout:
    """Each series' text up to its value, in output order: rebuilt only when a series or a device appears.

    Valid while the latest-values frame keeps its rows (LatestValues never moves a key) and has the same height.
    """

    key: tuple[int, int]  # (rows of the latest-values frame, version of the devices frame)
    row: pl.Series  # row of the latest-values frame, in output order
    family: pl.Series
    prefix: pl.Series  # 'family{site="..",kind="..",device="..",gun="1"} '
    scale: pl.Series


def series_layout(state: FleetState, devices: pl.DataFrame) -> SeriesLayout:
    fams = family_table(state.families.values())
    uncatalogued = pl.col("family").is_null()
    frame = (
        state.latest.lazy()
        .select("device_id", "metric")
        .with_row_index("row")
        .join(devices.lazy().select("device_id", "labels", "order"), on="device_id", how="left")
        .join(fams.lazy(), on="metric", how="left")
        .with_columns(
            pl.when(uncatalogued)
            .then(pl.concat_str([pl.lit(',metric="'), _esc(pl.col("metric")), pl.lit('"')]))
            .otherwise(pl.col("index_part"))
            .alias("index_part"),
            pl.col("family").fill_null(UNCATALOGUED_FAMILY),
            pl.col("scale").fill_null(1.0),
            (pl.col("rank").fill_null(fams.height) * (1 << 32) + pl.col("order").fill_null(0).cast(pl.UInt64)).alias(
                "sort_key"
            ),
        )
        .sort("sort_key", "metric")
        .select(
            "row",
            "family",
            "scale",
            pl.concat_str([pl.col("family"), pl.lit("{"), pl.col("labels"), pl.col("index_part"), pl.lit("} ")]).alias(
                "prefix"
            ),
        )
        .collect()
    )
    return SeriesLayout(_layout_key(state), frame["row"], frame["family"], frame["prefix"], frame["scale"])


def _layout_key(state: FleetState) -> tuple[int, int]:
    version = state.devices_version if state.devices_version is not None else id(state.devices)
    return (state.latest.height, version)


def _reading_lines(state: FleetState, layout: SeriesLayout) -> pl.DataFrame:
    """family -> its lines, joined: the per-scrape work is the values, the age filter and the text."""
    cutoff_us = int((state.now - state.reading_max_age_s) * 1e6)
    return (
        pl.DataFrame(
            {
                "family": layout.family,
                "prefix": layout.prefix,
                "value": state.latest["value"].gather(layout.row) * layout.scale,
                "ts": state.latest["ts"].dt.epoch("us").gather(layout.row),
            }
        )
        .lazy()
        .filter(pl.col("ts") >= cutoff_us)
        .select("family", pl.concat_str([pl.col("prefix"), _value_text(pl.col("value"))]).alias("line"))
        .group_by("family", maintain_order=True)
        .agg(pl.col("line").str.join("\n"))
        .collect()
    )


def device_table(state: FleetState) -> pl.DataFrame:
    """One row per device with its label text, last-seen time, up flag, state and open alerts."""
    seen = state.latest.lazy().group_by("device_id").agg(pl.col("ts").max().dt.epoch("us").alias("seen_us"))
    alarms = state.open_alerts.lazy().group_by("device_id").agg(pl.col("n").sum().alias("alerts_open"))
    return (
        state.devices.lazy()
        .join(seen, on="device_id", how="full", coalesce=True)
        .join(alarms, on="device_id", how="left")
        .with_columns(
            pl.col("kind").fill_null("unknown"),
            (pl.col("seen_us") / 1e6).clip(upper_bound=state.now).alias("seen_s"),
            pl.col("expected_interval_s").fill_null(10.0),
        )
        .with_columns(
            (state.now - pl.col("seen_s")).alias("age_s"),
            (
                pl.col("seen_s").is_not_null()
                & ((state.now - pl.col("seen_s")) <= pl.col("expected_interval_s") * state.offline_after_intervals)
            ).alias("up"),
        )
        .with_columns(
            pl.when(pl.col("alerts_open").fill_null(0) > 0)
            .then(pl.lit("alarm"))
            .when(pl.col("seen_s").is_null())
            .then(pl.lit("never_seen"))
            .when(pl.col("up"))
            .then(pl.lit("online"))
            .otherwise(pl.lit("offline"))
            .alias("state")
        )
        .sort("site", "device_id", nulls_last=True)
        # Labels are escaped once per device, not once per series; `order` sorts series by site and device.
        .with_columns(_labels(_DEV_LABELS).alias("labels"), pl.int_range(pl.len(), dtype=pl.UInt32).alias("order"))
        .collect()
    )


_DEV_LABELS = (("site", pl.col("site")), ("kind", pl.col("kind")), ("device", pl.col("device_id")))


def render_fleet(state: FleetState, cache: dict[str, SeriesLayout] | None = None) -> str:
    """The fleet families in the Prometheus text format (version 0.0.4).

    `cache` (any dict kept by the caller between scrapes) holds the series layout, so a scrape whose series and
    devices did not change only formats values.
    """
    out: list[str] = []
    devices = device_table(state)
    layout = cache.get("layout") if cache is not None else None
    if layout is None or layout.key != _layout_key(state):
        layout = series_layout(state, devices)
        if cache is not None:
            cache["layout"] = layout
    help_of = {f.family: f.help for f in state.families.values()}
    help_of[UNCATALOGUED_FAMILY] = UNCATALOGUED_DOC.help
    for family, body in _reading_lines(state, layout).iter_rows():
        _emit(out, family, help_of.get(family, ""), body)
    if devices.height:
        out.extend(_device_families(devices, state))
    return "".join(out)


def _device_families(devices: pl.DataFrame, state: FleetState) -> Iterator[str]:
    docs = {d.name: d for d in DEVICE_FAMILIES}
    prefix = pl.col("labels")

    def family(name: str, frame: pl.DataFrame, value: pl.Expr, extra: pl.Expr | None = None) -> str:
        if frame.height == 0:
            return ""
        parts: list[pl.Expr] = [pl.lit(name + "{"), prefix]
        if extra is not None:
            parts.append(extra)
        parts += [pl.lit("} "), _value_text(value)]
        body = frame.select(pl.concat_str(parts).str.join("\n")).item()
        chunk: list[str] = []
        _emit(chunk, name, docs[name].help, body)
        return "".join(chunk)

    seen = devices.filter(pl.col("seen_s").is_not_null())
    yield family("gridsentry_device_last_seen_timestamp_seconds", seen, pl.col("seen_s"))
    yield family("gridsentry_device_last_seen_age_seconds", seen, pl.col("age_s"))
    yield family("gridsentry_device_up", devices, pl.col("up").cast(pl.Int8))
    one_hot = devices.join(pl.DataFrame({"one_state": list(DEVICE_STATES)}), how="cross").sort(
        "site", "device_id", "one_state", nulls_last=True
    )
    yield family(
        "gridsentry_device_state",
        one_hot,
        (pl.col("state") == pl.col("one_state")).cast(pl.Int8),
        pl.concat_str([pl.lit(',state="'), pl.col("one_state"), pl.lit('"')]),
    )
    per_class = (
        devices.select("device_id", "site", "kind", "labels")
        .join(state.open_alerts, on="device_id", how="inner")
        .sort("site", "device_id", "event_class", nulls_last=True)
    )
    yield family(
        "gridsentry_device_open_alerts",
        per_class,
        pl.col("n"),
        pl.concat_str([pl.lit(',event_class="'), _esc(pl.col("event_class")), pl.lit('"')]),
    )
    rated = devices.filter(pl.col("rated_kw").is_not_null())
    yield family("gridsentry_device_rated_power_watts", rated, pl.col("rated_kw") * 1000.0)


def families(state: FleetState) -> Iterator[Metric]:
    """The same series as prometheus-client families (slow path: a baseline and a cross-check)."""
    readings = _readings(state, device_table(state))
    by_family: dict[str, GaugeMetricFamily] = {}
    help_of = {f.family: f for f in state.families.values()}
    for row in readings.sort("sort_key", "metric").iter_rows(named=True):
        name = row["family"]
        fam = by_family.get(name)
        if fam is None:
            spec = help_of.get(name)
            labels = ["site", "kind", "device"]
            if row["uncatalogued"]:
                labels.append("metric")
            elif spec is not None and spec.index_label:
                labels.append(spec.index_label)
            fam = by_family[name] = GaugeMetricFamily(
                name, spec.help if spec and not row["uncatalogued"] else UNCATALOGUED_DOC.help, labels=labels
            )
        values = [row["site"] or "", row["kind"], row["device_id"]]
        if row["uncatalogued"]:
            values.append(row["metric"])
        elif row["index_value"] is not None:
            values.append(row["index_value"])
        fam.add_metric(values, row["value"])
    yield from by_family.values()


def now_s() -> float:
    return time.time()
