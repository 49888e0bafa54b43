"""Vectorised rule evaluation over committed batches with Polars.

Rules are bound to devices once (rule x matching device x metric = a binding row, with the rule's
parameters after overrides as columns). Each tick:

1. the committed readings of the tick are checked against threshold rules reading by reading;
2. they are folded into an in-memory bucket store (per device and metric: fixed-width buckets
   with count, sum, min, max) that windowed kinds (rate, trend, stuck, deviation, expression)
   read; the store keeps the longest window any rule needs;
3. every device's last reading time feeds the offline and data-gap kinds;
4. one state machine turns observations into fire / clear findings: the condition must hold for
   `for` seconds and `repeat` evaluations; a firing rule clears when its clear condition holds.

No step loops over devices or readings in Python. A kind that raises is retried rule by rule; the
rule that fails is disabled and reported as a finding about GridSentry itself.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa

from rules import kinds, windows
from rules.model import TELEMETRY, Finding, Override, Rule, expression_metrics, format_duration
from rules.sun import is_daylight
from storage.batch import Quality

log = logging.getLogger(__name__)

_KEY = ["rule_id", "device_id", "metric"]

STATE_SCHEMA: dict[str, pl.DataType] = {
    "rule_id": pl.String(),
    "device_id": pl.String(),
    "metric": pl.String(),
    "pending_since": pl.Int64(),  # µs of the first observation of the current unbroken breach, or null
    "breaches": pl.Int64(),  # consecutive breaching observations
    "firing": pl.Boolean(),
    "fired_at": pl.Int64(),  # µs, while firing
}

_BUCKET_SCHEMA: dict[str, pl.DataType] = {
    "device_id": pl.String(),
    "metric": pl.String(),
    "b": pl.Int64(),
    "n": pl.UInt32(),
    "s": pl.Float64(),
    "lo": pl.Float64(),
    "hi": pl.Float64(),
    "toff": pl.Float64(),
    "last_ts": pl.Int64(),
}

_BINDING_SCHEMA: dict[str, pl.DataType] = {
    "rule_id": pl.String(),
    "variant": pl.String(),
    "kind": pl.String(),
    "device_id": pl.String(),
    "metric": pl.String(),
    "site": pl.String(),
    "dkind": pl.String(),
    "model": pl.String(),
    "parent": pl.String(),
    "rated_kw": pl.Float64(),
    "interval_s": pl.Float64(),
    "above": pl.Float64(),
    "below": pl.Float64(),
    "hysteresis": pl.Float64(),
    "repeat": pl.Int64(),
    "for_us": pl.Int64(),
    "rise_per_min": pl.Float64(),
    "fall_per_min": pl.Float64(),
    "limit": pl.Float64(),
    "rising": pl.Boolean(),
    "horizon_s": pl.Float64(),
    "floor": pl.Float64(),
    "noise_factor": pl.Float64(),
    "window_s": pl.Float64(),
    "tau_s": pl.Float64(),
    "min_points": pl.Int64(),
    "tolerance": pl.Float64(),
    "missed_intervals": pl.Float64(),
    "min_silence_s": pl.Float64(),
    "ratio_below": pl.Float64(),
    "ratio_above": pl.Float64(),
    "min_z": pl.Float64(),
    "min_peers": pl.Int64(),
    "min_peer_median": pl.Float64(),
    "normalise": pl.Boolean(),
    "daylight_only": pl.Boolean(),
    "has_when": pl.Boolean(),
    "sentinels": pl.List(pl.Float64()),
    "wrap_at": pl.Float64(),
    "event_kind": pl.String(),
    "codes": pl.List(pl.String()),
    "clear_codes": pl.List(pl.String()),
    "sessions": pl.Int64(),
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SELF_DEVICE = "gridsentry"
RULE_FAILED = "gridsentry.rule_failed"
_WINDOWED = ("rate", "trend", "stuck", "deviation", "expression")

_DEVIATION = -1  # the pseudo-shard that judges deviation rules across all shards

# (kind, its bindings, bindings -> lazy observations)
_Plan = tuple[str, pl.DataFrame, Callable[[pl.DataFrame], pl.LazyFrame]]


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    site: str | None
    kind: str
    tags: tuple[str, ...] = ()
    rated_kw: float | None = None
    interval_s: float = 10.0
    parent: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class SiteInfo:
    site_id: str
    latitude: float | None = None
    longitude: float | None = None


def _matches(rule_selector: Any, d: DeviceInfo) -> bool:
    sel = rule_selector
    if sel.kinds and d.kind not in sel.kinds:
        return False
    if sel.sites and d.site not in sel.sites:
        return False
    if sel.devices and d.device_id not in sel.devices:
        return False
    return not (sel.tags and not set(sel.tags) <= set(d.tags))


def apply_overrides(rule: Rule, overrides: list[Override]) -> Rule:
    """The rule with `overrides` applied in order (later wins), validated again as a whole."""
    if not overrides:
        return rule
    data = rule.model_dump(by_alias=True)
    if rule.kind == "expression" or rule.kind in ("offline", "data_gap", "event"):
        data.pop("metric", None)
    for o in overrides:
        data.update(o.set)
    return Rule.model_validate(data)


def to_us(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


class RuleEngine:
    def __init__(
        self,
        rules: Iterable[Rule],
        units: Mapping[str, str] | None = None,
        *,
        overrides: Iterable[Override] = (),
        bucket_s: float = 30.0,
        max_window_s: float = 7 * 86400.0,
        shards: int = 8,
    ) -> None:
        self.rules = {r.id: r for r in rules}
        self.overrides = list(overrides)
        self.units = dict(units or {})
        self.bucket_us = int(bucket_s * 1_000_000)
        # Windowed kinds are judged once per bucket; with ticks shorter than a bucket the devices are
        # split into shards and one shard is judged per tick, so no tick carries the whole fleet.
        self.shards = max(1, shards)
        self.max_window_s = max_window_s
        self._devices: dict[str, DeviceInfo] = {}
        self._sites: dict[str, SiteInfo] = {}
        self._variants: dict[str, Rule] = {}
        self._compiled: dict[str, tuple[pl.Expr, pl.Expr | None]] = {}
        self._when_names: dict[str, list[str]] = {}
        # The last good reading of each counter rule's (device, metric): what the next one is checked against.
        self._counter_last = pl.DataFrame(
            schema={"ts_us": pl.Int64(), "device_id": pl.String(), "metric": pl.String(), "value": pl.Float64()}
        )
        self._bindings = pl.DataFrame(schema=_BINDING_SCHEMA)
        self._by_kind: dict[str, pl.DataFrame] = {}
        self._window_metrics: set[str] = set()
        self._window_us = 0
        self._state = pl.DataFrame(schema=STATE_SCHEMA)
        self._buckets = pl.DataFrame(schema=_BUCKET_SCHEMA)
        self._last_seen = pl.DataFrame(schema={"device_id": pl.String(), "last_ts": pl.Int64()})
        self._first_seen = pl.DataFrame(schema={"device_id": pl.String(), "first_ts": pl.Int64()})
        self._now_us: int | None = None
        self._prev_now: int | None = None
        self.shard_passes = 0
        self._stat_keys = pl.DataFrame()
        self._min_tau_s = 0.0
        self._retention = pl.DataFrame()
        self._key_params = pl.DataFrame()
        self._shard_windows = [windows.WindowSums() for _ in range(self.shards)]
        self._deviation_windows = windows.WindowSums()
        self._shard_kinds: dict[tuple[str, int], pl.DataFrame] = {}
        self._shard_keys: dict[int, pl.DataFrame] = {}
        self._deviation_keys = pl.DataFrame()
        self._stuck = pl.DataFrame(schema=windows.STUCK_SCHEMA)
        self._passes = 0
        self.failed_rules: dict[str, str] = {}
        self.late_buckets_amended = 0
        # The latest charging-session endings per device (for session_endings rules, E12).
        self._endings = pl.DataFrame(schema={"device_id": pl.String(), "ts_us": pl.Int64(), "reason": pl.String()})
        self.evaluations = 0
        self.readings_evaluated = 0
        self.last_eval_seconds = 0.0
        self.state_changed = False
        self._rebind()

    # --- ledger ---------------------------------------------------------------------------------
    def set_devices(self, devices: Iterable[DeviceInfo]) -> None:
        for d in devices:
            self._devices[d.device_id] = d
        self._rebind()

    def set_sites(self, sites: Iterable[SiteInfo]) -> None:
        for s in sites:
            self._sites[s.site_id] = s

    def _variant(self, rule: Rule, device: DeviceInfo) -> tuple[str, Rule]:
        matching = [
            (o.applies_to.specificity(), i, o)
            for i, o in enumerate(self.overrides)
            if rule.id in o.rules and _matches(o.applies_to, device)
        ]
        if not matching:
            return rule.id, rule
        matching.sort(key=lambda t: (t[0], t[1]))
        key = rule.id + "#" + ",".join(str(i) for _, i, _ in matching)
        if key not in self._variants:
            try:
                self._variants[key] = apply_overrides(rule, [o for _, _, o in matching])
            except ValueError as exc:
                log.error("override for rule %s on %s ignored: %s", rule.id, device.device_id, exc)
                self._variants[key] = rule
        return key, self._variants[key]

    def _rebind(self) -> None:
        rows: list[dict[str, Any]] = []
        for base in self.rules.values():
            for d in self._devices.values():
                if not _matches(base.applies_to, d):
                    continue
                variant, rule = self._variant(base, d)
                if not rule.enabled:
                    continue
                self._variants.setdefault(variant, rule)
                params = {
                    "rule_id": base.id,
                    "variant": variant,
                    "kind": rule.kind,
                    "device_id": d.device_id,
                    "site": d.site,
                    "dkind": d.kind,
                    "model": d.model or "",
                    "parent": d.parent,
                    "rated_kw": d.rated_kw,
                    "interval_s": d.interval_s,
                    "above": rule.above,
                    "below": rule.below,
                    "hysteresis": rule.hysteresis,
                    "repeat": rule.repeat,
                    "for_us": int(rule.for_s * 1_000_000),
                    "rise_per_min": rule.rise_per_min,
                    "fall_per_min": rule.fall_per_min,
                    "limit": rule.limit,
                    "rising": rule.direction == "rising",
                    "horizon_s": rule.horizon_s,
                    "floor": rule.floor,
                    "noise_factor": rule.noise_factor,
                    "window_s": rule.window_s if rule.window_s is not None else 300.0,
                    "tau_s": (rule.time_constant_s or 0.0) if rule.fit == "exponential" else 0.0,
                    "min_points": rule.min_points,
                    "tolerance": rule.tolerance,
                    "missed_intervals": rule.missed_intervals,
                    "min_silence_s": rule.min_silence_s,
                    "ratio_below": rule.ratio_below,
                    "ratio_above": rule.ratio_above,
                    "min_z": rule.min_z,
                    "min_peers": rule.min_peers,
                    "min_peer_median": rule.min_peer_median,
                    "normalise": rule.normalise == "rated_power",
                    "daylight_only": rule.daylight_only,
                    "has_when": rule.when is not None,
                    "sentinels": rule.sentinels,
                    "wrap_at": rule.wrap_at,
                    "event_kind": rule.event_kind,
                    "codes": rule.codes,
                    "clear_codes": rule.clear_codes,
                    "sessions": rule.sessions,
                }
                for metric in rule.output_metrics:
                    rows.append({**params, "metric": metric})
        bindings = pl.DataFrame(rows, schema=_BINDING_SCHEMA)
        self._by_kind = (
            {str(k): frame for (k,), frame in bindings.partition_by("kind", as_dict=True).items()}
            if bindings.height
            else {}
        )
        needed: set[str] = set()
        window_s = 0.0
        for rule in self._variants.values():
            if rule.kind in _WINDOWED and rule.id in self.rules:
                needed.update(rule.input_metrics)
                window_s = max(window_s, rule.window_s or 300.0)
        self._window_metrics = needed
        self._window_us = int(min(window_s, self.max_window_s) * 1_000_000) + self.bucket_us
        self._stat_keys = self._build_stat_keys(bindings)
        taus = bindings.filter(pl.col("tau_s") > 0)["tau_s"]
        self._min_tau_s = float(taus.min()) if taus.len() else 0.0  # type: ignore[arg-type]
        self._retention = self._stat_keys.group_by("metric").agg(
            keep_us=(pl.col("window_s").max().clip(upper_bound=self.max_window_s) * 1e6).cast(pl.Int64)
        )
        self._key_params = bindings.select(*_KEY, "variant", "site", "for_us", "repeat").unique(_KEY)
        # Event rules' keys per connector, added to _key_params as connectors appear (see _key_connectors).
        self._event_keys = pl.DataFrame(schema={k: pl.String() for k in _KEY})
        self._counter_keys = bindings.filter(pl.col("kind") == "counter").select("device_id", "metric").unique()
        self._event_rule_ids = bindings.filter(pl.col("kind") == "event")["rule_id"].unique().to_list()
        # The window sums are rebuilt from the bucket store at the next pass of each shard.
        self._shard_windows = [windows.WindowSums() for _ in range(self.shards)]
        self._deviation_windows = windows.WindowSums()
        shard = self._shard_expr()
        self._shard_kinds = {
            (str(kind), int(k)): frame
            for (kind, k), frame in bindings.filter(pl.col("kind").is_in(["rate", "trend", "stuck", "expression"]))
            .with_columns(shard=shard)
            .partition_by("kind", "shard", as_dict=True, include_key=False)
            .items()
        }
        self._shard_keys = {
            int(k): frame
            for (k,), frame in self._stat_keys.filter(~pl.col("always"))
            .with_columns(shard=shard)
            .partition_by("shard", as_dict=True, include_key=False)
            .items()
        }
        self._deviation_keys = self._stat_keys.filter(pl.col("always")).select(windows.KEY)
        for key, rule in self._variants.items():
            if rule.kind == "stuck" and rule.when and key not in self._compiled:
                self._compiled[key] = (pl.sql_expr(rule.when), None)
                self._when_names[key] = expression_metrics(rule.when)
            if rule.kind == "expression" and key not in self._compiled:
                assert rule.expression is not None
                self._compiled[key] = (
                    pl.sql_expr(rule.expression),
                    pl.sql_expr(rule.when) if rule.when else None,
                )
        self._bindings = bindings
        log.debug("rules bound: %d rule x device x metric bindings", bindings.height)

    def _build_stat_keys(self, bindings: pl.DataFrame) -> pl.DataFrame:
        """Distinct (device, metric, window) the windowed kinds need; `always` marks deviation keys,
        judged every time because peers are compared with each other."""
        parts = [
            bindings.filter(pl.col("kind").is_in(["rate", "trend", "deviation"])).select(
                "device_id", "metric", "window_s", "tau_s", always=pl.col("kind") == "deviation"
            )
        ]
        for (variant,), group in (
            bindings.filter((pl.col("kind") == "expression") | ((pl.col("kind") == "stuck") & pl.col("has_when")))
            .partition_by("variant", as_dict=True)
            .items()
        ):
            rule = self._variants[str(variant)]
            names = rule.input_metrics if rule.kind == "expression" else expression_metrics(rule.when or "")
            inputs = pl.DataFrame({"metric": names}, schema={"metric": pl.String()})
            parts.append(
                group.select("device_id")
                .unique()
                .join(inputs, how="cross")
                .with_columns(window_s=pl.lit(rule.window_s or 300.0), tau_s=pl.lit(0.0), always=pl.lit(False))
            )
        return (
            pl.concat(parts, how="vertical_relaxed")
            .group_by("device_id", "metric", "window_s", "tau_s")
            .agg(pl.col("always").any())
        )

    @property
    def binding_count(self) -> int:
        return self._bindings.height

    def window_spans(self) -> dict[str, float]:
        """Seconds of history each metric's windows need (what a restart refills)."""
        if self._retention.height == 0:
            return {}
        return {str(m): int(k) / 1e6 for m, k in self._retention.iter_rows()}

    @property
    def window_metrics(self) -> set[str]:
        return set(self._window_metrics)

    @property
    def window_seconds(self) -> float:
        return self._window_us / 1e6

    # --- windows --------------------------------------------------------------------------------
    def _good(self, readings: pa.Table | pl.DataFrame) -> pl.DataFrame:
        frame = readings if isinstance(readings, pl.DataFrame) else pl.from_arrow(readings)
        assert isinstance(frame, pl.DataFrame)
        if frame.height == 0:
            return pl.DataFrame(
                schema={"ts_us": pl.Int64(), "device_id": pl.String(), "metric": pl.String(), "value": pl.Float64()}
            )
        return (
            frame.lazy()
            .filter((pl.col("quality") == int(Quality.GOOD)) & pl.col("value").is_finite())
            .select(
                pl.col("ts").dt.epoch("us").alias("ts_us"),
                "device_id",
                "metric",
                pl.col("value").cast(pl.Float64),
            )
            .collect()
        )

    def _check_invalid(self, frame: pl.DataFrame) -> pl.DataFrame | None:
        """Every reading of the tick (any quality) against the `invalid` rules bound to its device and
        metric, once: what the invalid kind judges and what the other kinds must not see."""
        invalid = self._by_kind.get("invalid")
        if invalid is None or frame.height == 0:
            return None
        return kinds.check_invalid(
            frame.lazy().select(
                pl.col("ts").dt.epoch("us").alias("ts_us"),
                "device_id",
                "metric",
                pl.col("value").cast(pl.Float64),
                pl.col("quality").cast(pl.Int64),
            ),
            invalid.lazy(),
            int(Quality.OUT_OF_RANGE),
        ).collect()

    def _note_first_seen(self, seen: pl.DataFrame) -> None:
        """The earliest data of each device: expression rules judge a device only once its data
        covers their window (a day's mean needs a day)."""
        self._first_seen = (
            pl.concat([self._first_seen, seen.select("device_id", "first_ts")])
            .group_by("device_id")
            .agg(pl.col("first_ts").min())
        )

    def _fold(self, good: pl.DataFrame, all_readings: pl.DataFrame | None = None) -> None:
        """Add readings to the bucket store and the last-seen table."""
        seen_src = all_readings if all_readings is not None else good
        if seen_src.height:
            seen = seen_src.group_by("device_id").agg(last_ts=pl.col("ts_us").max(), first_ts=pl.col("ts_us").min())
            self._last_seen = (
                pl.concat([self._last_seen, seen.select("device_id", "last_ts")])
                .group_by("device_id")
                .agg(pl.col("last_ts").max())
            )
            self._note_first_seen(seen.select("device_id", "first_ts"))
        if not self._window_metrics or good.height == 0:
            return
        bucket = self.bucket_us
        fresh = (
            good.lazy()
            .filter(pl.col("metric").is_in(list(self._window_metrics)))
            .with_columns(b=(pl.col("ts_us") // bucket) * bucket)
            .group_by("device_id", "metric", "b")
            .agg(
                n=pl.len().cast(pl.UInt32),
                s=pl.col("value").sum(),
                lo=pl.col("value").min(),
                hi=pl.col("value").max(),
                toff=((pl.col("ts_us") - pl.col("b")).cast(pl.Float64) / 1e6).sum(),
                last_ts=pl.col("ts_us").max(),
            )
            .collect()
        )
        # Buckets before the newest window edge may already be counted in window sums: late data.
        edges = [w.edge for w in (*self._shard_windows, self._deviation_windows) if w.edge is not None]
        late = fresh.filter(pl.col("b") < max(edges)).select("device_id", "metric", "b") if edges else fresh.clear()
        before = self._buckets.join(late, on=["device_id", "metric", "b"], how="semi") if late.height else None
        self._merge_buckets(fresh)
        if before is not None:
            after = self._buckets.join(late, on=["device_id", "metric", "b"], how="semi")
            shard_of = self._shard_expr()
            for k, w in enumerate(self._shard_windows):
                keys = self._shard_keys.get(k)
                if keys is not None:
                    w.amend(before.filter(shard_of == k), after.filter(shard_of == k), keys.lazy())
            if self._deviation_keys.height:
                self._deviation_windows.amend(before, after, self._deviation_keys.lazy())
            self.late_buckets_amended += late.height

    def _merge_buckets(self, fresh: pl.DataFrame) -> None:
        """Merge new bucket rows into the time-sorted store; rows of an existing bucket combine."""
        if fresh.height == 0:
            return
        oldest_fresh = fresh["b"].min()
        assert isinstance(oldest_fresh, int)
        # Only buckets at or after the oldest fresh one can collide; the rest stay untouched.
        old = self._buckets.filter(pl.col("b") < oldest_fresh)
        overlap = (
            pl.concat([self._buckets.filter(pl.col("b") >= oldest_fresh), fresh])
            .group_by("device_id", "metric", "b")
            .agg(
                pl.col("n").sum(),
                pl.col("s").sum(),
                pl.col("lo").min(),
                pl.col("hi").max(),
                pl.col("toff").sum(),
                pl.col("last_ts").max(),
            )
        )
        self._buckets = pl.concat([old, overlap.select(list(_BUCKET_SCHEMA)).sort("b")])
        if self._buckets.n_chunks() > 64:
            self._buckets = self._buckets.rechunk()

    def _shard_expr(self) -> pl.Expr:
        return (pl.col("device_id").hash(seed=7) % self.shards).cast(pl.Int64)

    def _cut(self, b_us: int) -> int:
        """Index of the first bucket at or after `b_us` in the time-sorted store."""
        return int(self._buckets["b"].search_sorted(b_us, side="left"))

    def _between(self, lo_us: int, hi_us: int) -> pl.DataFrame:
        start = self._cut(lo_us)
        return self._buckets.slice(start, max(0, self._cut(hi_us) - start))

    def _trim(self, edge_us: int) -> None:
        """Keep per metric only the buckets its longest window needs (and the open bucket)."""
        keep = dict(zip(self._retention["metric"].to_list(), self._retention["keep_us"].to_list(), strict=True))
        self._buckets = self._buckets.filter(
            pl.col("b") >= edge_us - pl.col("metric").replace_strict(keep, default=0, return_dtype=pl.Int64)
        ).rechunk()

    def prime(self, readings: pa.Table | pl.DataFrame) -> None:
        """Fill the windows from stored history (at start-up) without judging anything."""
        good = self._good(readings)
        self._fold(good)
        if good.height:
            latest = good["ts_us"].max()
            assert isinstance(latest, int)
            self._now_us = max(self._now_us or latest, latest)

    def prime_buckets(self, rollups: pl.DataFrame, width_s: float) -> None:
        """Fill the windows from stored rollups (`rollup_1m`, `rollup_1h`: columns device_id, metric,
        bucket (start, UTC), count, sum, min, max, last_ts) without judging anything. A rollup row
        becomes one bucket of its own width; its readings' mean time is taken as its middle."""
        if rollups.height == 0 or not self._window_metrics:
            return
        rows = (
            rollups.lazy()
            .filter(pl.col("metric").is_in(list(self._window_metrics)) & (pl.col("count") > 0))
            .select(
                "device_id",
                "metric",
                b=pl.col("bucket").dt.epoch("us"),
                n=pl.col("count").cast(pl.UInt32),
                s=pl.col("sum").cast(pl.Float64),
                lo=pl.col("min").cast(pl.Float64),
                hi=pl.col("max").cast(pl.Float64),
                toff=pl.col("count").cast(pl.Float64) * (width_s / 2),
                last_ts=pl.col("last_ts").dt.epoch("us"),
            )
            .collect()
        )
        self._merge_buckets(rows.select(list(_BUCKET_SCHEMA)).sort("b"))
        self._note_first_seen(rows.group_by("device_id").agg(first_ts=pl.col("b").min()))
        if rows.height:
            latest = rows["last_ts"].max()
            assert isinstance(latest, int)
            self._now_us = max(self._now_us or latest, latest)

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self,
        readings: pa.Table | pl.DataFrame,
        now: datetime | None = None,
        events: pa.Table | pl.DataFrame | None = None,
    ) -> list[Finding]:
        """Evaluate one tick: the committed readings since the last tick (columns ts, device_id,
        metric, value, quality), the device events committed with them (ts, device_id, kind, code, text;
        for event rules) and the windows. `now` is the clock offline rules measure silence
        against; without it, the newest reading time seen (replays and backtests)."""
        t0 = time.perf_counter()
        frame = readings if isinstance(readings, pl.DataFrame) else pl.from_arrow(readings)
        assert isinstance(frame, pl.DataFrame)
        good = self._good(frame)
        checked = self._check_invalid(frame)
        if checked is not None and good.height:
            # Sentinels and values outside a G3 rule's limits are that rule's business, never the others'.
            rejected = checked.filter(pl.col("rejected")).select("ts_us", "device_id", "metric").unique()
            if rejected.height:
                good = good.join(rejected, on=["ts_us", "device_id", "metric"], how="anti")
        if frame.height:
            newest = frame.select(pl.col("ts").dt.epoch("us").max()).item()
            newest_us = int(newest) if newest is not None else None
        else:
            newest_us = None
        if now is not None:
            now_us = to_us(now)
        elif newest_us is not None:
            now_us = max(self._now_us or newest_us, newest_us)
        elif self._now_us is not None:
            now_us = self._now_us
        else:
            return []
        first = self._now_us is None
        self._now_us = now_us
        self.evaluations += 1
        self.readings_evaluated += frame.height
        if first:
            self._seed_last_seen(now_us)
        daylight = self._daylight(now_us).lazy()
        findings: list[Finding] = []
        plans: list[_Plan] = []

        def sun(b: pl.DataFrame) -> pl.LazyFrame:
            return b.lazy().join(daylight, on="site", how="left").with_columns(pl.col("daylight").fill_null(True))

        threshold = self._by_kind.get("threshold")
        if threshold is not None and good.height:
            good_lazy = good.lazy()
            plans.append(("threshold", threshold, lambda b: kinds.threshold(good_lazy, sun(b))))
        invalid = self._by_kind.get("invalid")
        if invalid is not None and checked is not None:
            watched = self._state.lazy().select(_KEY)
            plans.append(("invalid", invalid, lambda b: kinds.invalid(checked.lazy(), b.lazy(), watched)))
        event_bindings = self._by_kind.get("event")
        if event_bindings is not None and events is not None and len(events):
            event_frame = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
            assert isinstance(event_frame, pl.DataFrame)
            event_lazy = event_frame.lazy().select(
                pl.col("ts").dt.epoch("us").alias("ts_us"), "device_id", "kind", "code", "text"
            )
            plans.append(("event", event_bindings, lambda b: kinds.event(event_lazy, b.lazy())))
        ending_bindings = self._by_kind.get("session_endings")
        if ending_bindings is not None and events is not None and len(events):
            touched = self._note_endings(events, ending_bindings)
            if touched.height:
                endings, touched_lazy = self._endings.lazy(), touched.lazy()
                plans.append(
                    (
                        "session_endings",
                        ending_bindings,
                        lambda b: kinds.session_endings(endings, touched_lazy, b.lazy(), now_us),
                    )
                )
        counter = self._by_kind.get("counter")
        counted: pl.DataFrame | None = None
        if counter is not None and good.height:
            counted = good.join(self._counter_keys, on=["device_id", "metric"], how="semi")
            # Only the series in this batch: the previous reading of each, not the whole table.
            series = counted.select("device_id", "metric").unique()
            last = self._counter_last.join(series, on=["device_id", "metric"], how="semi")
            fresh_counts, last_counts = counted.lazy(), last.lazy()
            plans.append(("counter", counter, lambda b: kinds.counter(fresh_counts, last_counts, b.lazy())))
        gap = self._by_kind.get("data_gap")
        all_times = frame.select(pl.col("ts").dt.epoch("us").alias("ts_us"), "device_id") if frame.height else None
        if gap is not None and all_times is not None:
            # Judged against the last-seen times before this batch is folded in.
            seen_before = self._last_seen.lazy()
            times = all_times.lazy()
            plans.append(("data_gap", gap, lambda b: kinds.data_gap(times, seen_before, b.lazy(), now_us)))
            observations = self._run(plans, findings)
            plans = []
        else:
            observations = []
        self._fold(good, all_times)
        off = self._by_kind.get("offline")
        if off is not None:
            seen = self._last_seen.lazy()
            plans.append(("offline", off, lambda b: kinds.offline(seen, b.lazy(), now_us)))
        # Windowed kinds judge once per bucket: their inputs change at bucket resolution. Short ticks
        # take one due shard each; a step of a bucket or more (replays, catching up) takes them all.
        edge = (now_us // self.bucket_us) * self.bucket_us
        # Longest-waiting shards first; enough per tick that every shard is judged once per bucket.
        # Deviation rules (peers across shards) come last, on a tick of their own when ticks are short.
        due = sorted(
            (k for k, w in enumerate(self._shard_windows) if w.edge != edge),
            key=lambda k: self._shard_windows[k].edge or -1,
        )
        deviation_due = self._deviation_windows.edge != edge
        step = now_us - self._prev_now if self._prev_now is not None else self.bucket_us
        self._prev_now = now_us
        if step >= self.bucket_us or step <= 0:
            todo = due + ([_DEVIATION] if deviation_due else [])
        elif due:
            todo = due[: math.ceil(self.shards * step / self.bucket_us)]
        else:
            todo = [_DEVIATION] if deviation_due else []
        if todo:
            plans += self._windowed(now_us, edge, todo, sun)
        observations += self._run(plans, findings)
        if counted is not None and counted.height:
            newest = counted.sort("ts_us").group_by("device_id", "metric").last().select(self._counter_last.columns)
            kept = self._counter_last.join(newest, on=["device_id", "metric"], how="anti")
            # A late reading older than the one kept does not replace it.
            older = self._counter_last.join(newest, on=["device_id", "metric"], how="inner", suffix="_new").filter(
                pl.col("ts_us") > pl.col("ts_us_new")
            )
            newest = newest.join(older.select("device_id", "metric"), on=["device_id", "metric"], how="anti")
            self._counter_last = pl.concat([kept, older.select(self._counter_last.columns), newest])
        obs = [o for o in observations if o.height]
        if event_bindings is not None and obs:
            self._key_connectors(pl.concat(obs, how="vertical"), event_bindings)
        if obs:
            findings += self._advance(pl.concat(obs, how="vertical"))
        self.last_eval_seconds = time.perf_counter() - t0
        return findings

    def _windowed(
        self, now_us: int, edge: int, shards: list[int], sun: Callable[[pl.DataFrame], pl.LazyFrame]
    ) -> list[_Plan]:
        plans: list[_Plan] = []
        shard_of = self._shard_expr()
        for k in shards:
            if k == _DEVIATION:
                plans += self._deviation(now_us, edge, sun)
                self.shard_passes += 1
                self._passes += 1
                if self._passes % 10 == 1:
                    self._trim(edge)  # a pass over the whole store: not needed every bucket
                continue
            w = self._shard_windows[k]
            prev = w.edge

            def between(lo: int, hi: int, k: int = k) -> pl.DataFrame:
                return self._between(lo, hi).filter(shard_of == k)

            keys = self._shard_keys.get(k)
            if keys is not None and (prev is None or w.origin is None or self._origin_stale(w, edge)):
                w.rebuild(self._buckets.filter(shard_of == k), keys.lazy(), edge)
            elif keys is not None and prev is not None and edge > prev:
                w.advance(between(prev, edge), keys.lazy(), edge)
            else:
                w.edge, w.origin = edge, w.origin if w.origin is not None else edge
            self.shard_passes += 1
            assert w.origin is not None
            stats = windows.relative_to_now(w.sums.lazy(), w.origin, now_us).collect().lazy()
            stuck_bindings = self._shard_kinds.get(("stuck", k))
            if stuck_bindings is not None:
                self._stuck = windows.update_stuck(self._stuck, between, stuck_bindings.lazy(), prev, edge)
                stuck_state = self._stuck.lazy()
                gate = self._when_gate(stats, stuck_bindings)
                plans.append(
                    ("stuck", stuck_bindings, lambda bb, st=stuck_state, g=gate: kinds.stuck(st, bb.lazy(), edge, g))  # type: ignore[misc]
                )
            for name, fn in (("rate", kinds.rate), ("trend", kinds.trend)):
                b = self._shard_kinds.get((name, k))
                if b is not None:
                    plans.append((name, b, lambda bb, fn=fn, st=stats: fn(st, sun(bb), now_us)))  # type: ignore[misc]
            expr_bindings = self._shard_kinds.get(("expression", k))
            if expr_bindings is not None:
                for (variant,), group in expr_bindings.partition_by("variant", as_dict=True).items():
                    rule = self._variants[str(variant)]
                    expr, when = self._compiled[str(variant)]

                    def plan(
                        bb: pl.DataFrame,
                        expr: pl.Expr = expr,
                        when: pl.Expr | None = when,
                        rule: Rule = rule,
                        st: pl.LazyFrame = stats,
                    ) -> pl.LazyFrame:
                        window_s = rule.window_s or 300.0
                        # Judged once the device's data covers the window (less one bucket of slack).
                        covered = self._first_seen.lazy().filter(
                            pl.col("first_ts") <= now_us - int(window_s * 1e6) + self.bucket_us
                        )
                        return kinds.expression(
                            st,
                            sun(bb).join(covered, on="device_id", how="semi"),
                            now_us,
                            expr,
                            when,
                            rule.input_metrics,
                            window_s,
                        )

                    plans.append(("expression", group, plan))
        return plans

    def _note_endings(self, events: pa.Table | pl.DataFrame, bindings: pl.DataFrame) -> pl.DataFrame:
        """Add the tick's charging-session endings (session events with code stop; the stop reason in
        the text's JSON, as the collector stores `detail`) to each device's latest endings; returns
        the devices that had one."""
        frame = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
        assert isinstance(frame, pl.DataFrame)
        stops = (
            frame.lazy()
            .filter((pl.col("kind") == "session") & (pl.col("code") == "stop"))
            .join(bindings.select("device_id").unique().lazy(), on="device_id", how="semi")
            .select(
                "device_id",
                ts_us=pl.col("ts").dt.epoch("us"),
                reason=pl.col("text").str.json_path_match("$.reason"),
            )
            .collect()
        )
        if stops.height == 0:
            return stops.select("device_id")
        keep = int(bindings["sessions"].max() or 20)  # type: ignore[arg-type]
        self._endings = (
            pl.concat([self._endings, stops]).sort("ts_us").group_by("device_id", maintain_order=True).tail(keep)
        )
        return stops.select("device_id").unique()

    def _key_connectors(self, obs: pl.DataFrame, event_bindings: pl.DataFrame) -> None:
        """Event rules are bound per device but keyed per connector (the event text): give each new
        (rule, device, connector) the parameters of its device's binding."""
        event_obs = obs.filter(pl.col("rule_id").is_in(self._event_rule_ids))
        if event_obs.height == 0:
            return
        keys = event_obs.select(_KEY).unique().join(self._event_keys, on=_KEY, how="anti")
        if keys.height == 0:
            return
        self._event_keys = pl.concat([self._event_keys, keys])
        params = event_bindings.select("rule_id", "device_id", "variant", "site", "for_us", "repeat").unique(
            ["rule_id", "device_id"]
        )
        new = keys.join(params, on=["rule_id", "device_id"], how="inner").select(self._key_params.columns)
        self._key_params = pl.concat([self._key_params, new], how="vertical_relaxed")

    def _when_gate(self, stats: pl.LazyFrame, bindings: pl.DataFrame) -> pl.LazyFrame | None:
        """(variant, device_id, ok): each conditional rule's `when` on its devices' window means."""
        gated = bindings.filter(pl.col("has_when"))
        if gated.height == 0:
            return None
        parts: list[pl.LazyFrame] = []
        for (variant,), group in gated.partition_by("variant", as_dict=True).items():
            rule = self._variants[str(variant)]
            condition, _ = self._compiled[str(variant)]
            names = self._when_names[str(variant)]
            means = stats.filter(pl.col("metric").is_in(names) & (pl.col("window_s") == rule.window_s)).select(
                "device_id", "metric", "mean"
            )
            wide = (
                means.group_by("device_id")
                .agg([pl.col("mean").filter(pl.col("metric") == m).first().alias(m) for m in names])
                .drop_nulls(names)
            )
            devices = group.select("device_id").unique().lazy()
            parts.append(
                wide.join(devices, on="device_id", how="semi").select(
                    "device_id", variant=pl.lit(str(variant)), ok=condition.cast(pl.Boolean).fill_null(False)
                )
            )
        return pl.concat(parts)

    def _origin_stale(self, w: windows.WindowSums, edge_us: int) -> bool:
        """Exponential-fit sums weigh a bucket by exp(-(t - origin) / tau): expired buckets outweigh
        the window's by exp(age / tau), so their rounding error grows with it. Rebuilding from the
        bucket store once the origin is 20 time constants old keeps that error below 1e-7."""
        if w.origin is None or not self._min_tau_s:
            return False
        return (edge_us - w.origin) / 1e6 > 20 * self._min_tau_s

    def _deviation(self, now_us: int, edge: int, sun: Callable[[pl.DataFrame], pl.LazyFrame]) -> list[_Plan]:
        """Peers are compared with each other, so deviation rules judge all devices at once, when
        the last shard of a bucket is done. Their window sums are kept apart from the shards'."""
        bindings = self._by_kind.get("deviation")
        w = self._deviation_windows
        if bindings is None or self._deviation_keys.height == 0:
            w.edge = edge
            return []
        prev = w.edge
        keys = self._deviation_keys.lazy()
        if self._origin_stale(w, edge):
            prev = None
        if prev is None or w.origin is None:
            w.rebuild(self._buckets, keys, edge)
        elif edge > prev:
            w.advance(self._between(prev, edge), keys, edge)
        assert w.origin is not None
        stats = windows.relative_to_now(w.sums.lazy(), w.origin, now_us).collect().lazy()
        return [("deviation", bindings, lambda bb: kinds.deviation(stats, sun(bb), now_us))]

    def _run(self, plans: list[_Plan], findings: list[Finding]) -> list[pl.DataFrame]:
        """Collect every kind's plan in one go (Polars runs them in parallel); if that raises,
        fall back kind by kind and rule by rule, disabling only the rule(s) at fault."""
        if not plans:
            return []
        try:
            return pl.collect_all([run(b) for _, b, run in plans])
        except Exception:
            log.warning("rule evaluation failed; retrying kind by kind and rule by rule to isolate the fault")
        out: list[pl.DataFrame] = []
        for kind, bindings, run in plans:
            try:
                out.append(run(bindings).collect())
                continue
            except Exception:
                log.warning("evaluating %s rules failed; retrying rule by rule", kind)
            for (rule_id,), group in bindings.partition_by("rule_id", as_dict=True).items():
                try:
                    out.append(run(group).collect())
                except Exception as exc:
                    findings.append(self._disable(str(rule_id), exc))
        return out

    def _disable(self, rule_id: str, exc: Exception) -> Finding:
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("rule %s failed during evaluation and is disabled until the packs are reloaded: %s", rule_id, text)
        self.failed_rules[rule_id] = text
        rule = self.rules.pop(rule_id, None)
        self._rebind()
        title = rule.title if rule else rule_id
        return Finding(
            action="fire",
            rule_id=RULE_FAILED,
            title="GridSentry rule disabled after an evaluation error",
            device_id=SELF_DEVICE,
            site=None,
            metric=rule_id,
            value=float(len(self.failed_rules)),
            threshold=0.0,
            unit="",
            event_class="II",
            message=f"Rule {rule_id} ({title}) failed and is disabled; its devices are not watched by it until "
            f"the pack is fixed and reloaded. Error: {text}",
            runbook="Run `gridsentry rules check` and `gridsentry rules test` on the pack, fix the rule, restart or reload.",
            ts=from_us(self._now_us or 0),
            rule_kind="self",
        )

    def _seed_last_seen(self, now_us: int) -> None:
        """Devices that never reported count as silent since the engine started watching."""
        known = pl.DataFrame({"device_id": list(self._devices)}, schema={"device_id": pl.String()})
        missing = known.join(self._last_seen, on="device_id", how="anti").with_columns(last_ts=pl.lit(now_us, pl.Int64))
        self._last_seen = pl.concat([self._last_seen, missing])

    def _daylight(self, now_us: int) -> pl.DataFrame:
        when = from_us(now_us)
        sites = {d.site for d in self._devices.values() if d.site is not None}
        flags = []
        for site in sorted(sites):  # a handful of sites, not devices
            info = self._sites.get(site)
            if info is None or info.latitude is None or info.longitude is None:
                flags.append(True)  # no coordinates: the peers' median filter still applies
            else:
                flags.append(is_daylight(info.latitude, info.longitude, when))
        return pl.DataFrame(
            {"site": sorted(sites), "daylight": flags}, schema={"site": pl.String(), "daylight": pl.Boolean()}
        )

    # --- state machine --------------------------------------------------------------------------
    def _advance(self, obs: pl.DataFrame) -> list[Finding]:
        extras = [
            "seconds_to_limit",
            "slope_per_s",
            "peer_median",
            "ratio",
            "z",
            "caused_by",
            "asymptote",
            "previous",
            "code",
        ]
        # Most observations are healthy readings of keys with no state: they change nothing.
        relevant = obs.filter(pl.col("breach")).select(_KEY).unique()
        if self._state.height:
            relevant = pl.concat([relevant, self._state.select(_KEY)]).unique()
        if relevant.height == 0:
            return []
        obs = obs.join(relevant, on=_KEY, how="semi")
        per_key = (
            obs.lazy()
            .with_columns(last_ok_ts=pl.col("ts_us").filter(~pl.col("breach")).max().over(_KEY))
            .with_columns(
                after_ok=pl.col("breach") & (pl.col("last_ok_ts").is_null() | (pl.col("ts_us") > pl.col("last_ok_ts")))
            )
            .sort("ts_us")
            .group_by(_KEY)
            .agg(
                pl.col("ts_us").last().alias("last_ts"),
                pl.col("value").last().alias("last_value"),
                pl.col("breach").last().alias("last_breach"),
                pl.col("cleared").last().alias("last_cleared"),
                pl.col("last_ok_ts").first(),
                pl.col("ts_us").filter(pl.col("after_ok")).min().alias("first_breach_after_ok"),
                pl.col("after_ok").sum().cast(pl.Int64).alias("new_breaches"),
                *[pl.col(c).last() for c in extras],
            )
            .join(self._key_params.lazy(), on=_KEY, how="inner")
            .join(self._state.lazy(), on=_KEY, how="left")
            .with_columns(pl.col("firing").fill_null(False), pl.col("breaches").fill_null(0))
            .with_columns(
                new_pending=pl.when(pl.col("last_ok_ts").is_null())
                .then(pl.coalesce("pending_since", "first_breach_after_ok"))
                .otherwise(pl.col("first_breach_after_ok")),
                new_count=pl.when(pl.col("last_ok_ts").is_null())
                .then(pl.col("breaches") + pl.col("new_breaches"))
                .otherwise(pl.col("new_breaches")),
            )
            .with_columns(
                fire=(~pl.col("firing"))
                & pl.col("new_pending").is_not_null()
                & ((pl.col("last_ts") - pl.col("new_pending")) >= pl.col("for_us"))
                & (pl.col("new_count") >= pl.col("repeat")),
                clear=pl.col("firing") & pl.col("last_cleared") & ~pl.col("last_breach"),
            )
            .with_columns(new_firing=(pl.col("firing") & ~pl.col("clear")) | pl.col("fire"))
            .with_columns(
                new_fired_at=pl.when(pl.col("fire"))
                .then(pl.col("last_ts"))
                .when(pl.col("new_firing"))
                .then(pl.col("fired_at"))
                .otherwise(None)
            )
            .collect()
        )
        updated = per_key.select(
            *_KEY,
            pl.col("new_pending").alias("pending_since"),
            pl.col("new_count").alias("breaches"),
            pl.col("new_firing").alias("firing"),
            pl.col("new_fired_at").alias("fired_at"),
        ).filter(pl.col("firing") | pl.col("pending_since").is_not_null())
        before = self._state.height
        kept = self._state.join(per_key.select(_KEY), on=_KEY, how="anti")
        self._state = pl.concat([kept, updated], how="vertical_relaxed")
        changes = per_key.filter(pl.col("fire") | pl.col("clear"))
        if changes.height or self._state.height != before or updated.height:
            self.state_changed = True
        return [self._finding(row) for row in changes.iter_rows(named=True)]

    def _finding(self, row: dict[str, Any]) -> Finding:
        rule = self._variants.get(row["variant"]) or self.rules[row["rule_id"]]
        metric = row["metric"]
        unit = rule.unit or self.units.get(metric, "")
        if rule.kind in ("offline", "data_gap"):
            unit = "s"
        value = float(row["last_value"]) if row["last_value"] is not None else float("nan")
        seconds = row["seconds_to_limit"]
        forecast = None
        if rule.kind == "trend" and seconds is not None:
            lim = f"{rule.limit:g} {unit}".strip()
            if not math.isfinite(seconds):
                forecast = f"no longer heading for {lim}"
                seconds = None
            elif seconds <= 0:
                forecast = f"has reached {lim}"
            else:
                forecast = f"reaches {lim} in about {format_duration(seconds)}"
        ratio = row["ratio"]
        slope = row["slope_per_s"]
        fields = {
            "device_id": row["device_id"],
            "site": row["site"] or "",
            "metric": metric if metric != TELEMETRY else "telemetry",
            "value": value,
            "threshold": rule.threshold,
            "unit": unit,
            "for": format_duration(rule.for_s),
            "title": rule.title,
            "forecast": forecast or "",
            "slope_per_h": (slope or 0.0) * 3600,
            "slope_per_min": (slope or 0.0) * 60,
            "peer_median": row["peer_median"] if row["peer_median"] is not None else float("nan"),
            "ratio": ratio if ratio is not None else float("nan"),
            "ratio_pct": abs(1 - ratio) * 100 if ratio is not None else float("nan"),
            "z": row["z"] if row["z"] is not None else float("nan"),
            "silence": format_duration(value) if rule.kind in ("offline", "data_gap") and value == value else "",
            "parent": row["caused_by"] or "",
            "asymptote": row["asymptote"] if row["asymptote"] is not None else float("nan"),
            "previous": row["previous"] if row["previous"] is not None else float("nan"),
            "code": row["code"] or "",
            "connector": metric,
        }
        try:
            message = rule.message.format(**fields)
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            message = f"{rule.title}: {row['device_id']} {metric} = {value:g} {unit} (message template error: {exc})"
        caused_by = row["caused_by"]
        if caused_by and row["fire"]:
            message += f" (its parent {caused_by} is offline too: probably the cause)"
        return Finding(
            action="fire" if row["fire"] else "clear",
            rule_id=rule.id,
            title=rule.title,
            device_id=row["device_id"],
            site=row["site"],
            metric=metric,
            value=value,
            threshold=rule.threshold,
            unit=unit,
            event_class=rule.event_class,
            message=message,
            runbook=rule.runbook,
            ts=from_us(row["last_ts"]),
            seconds_to_limit=float(seconds) if rule.kind == "trend" and seconds is not None else None,
            forecast=forecast,
            caused_by=caused_by,
            rule_kind=rule.kind,
        )

    # --- state persistence ----------------------------------------------------------------------
    def firing(self) -> pl.DataFrame:
        return self._state.filter(pl.col("firing"))

    def export_state(self) -> pa.Table:
        """Pending and firing rule state, to persist so a restart neither re-pages nor forgets."""
        self.state_changed = False
        return self._state.to_arrow()

    def import_state(self, state: pa.Table | pl.DataFrame) -> None:
        frame = state if isinstance(state, pl.DataFrame) else pl.from_arrow(state)
        assert isinstance(frame, pl.DataFrame)
        self._state = frame.select([pl.col(n).cast(t) for n, t in STATE_SCHEMA.items()])
