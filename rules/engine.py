"""Vectorised rule evaluation over committed batches with Polars.

Rules are bound to devices once (rule x matching device x metric = a binding row). Each batch of
committed readings is joined with the bindings and reduced per binding with group_by: there is no
Python loop per device or reading. Only state changes (fire, clear) come back as Findings, and
those are few.

Threshold semantics: the condition must hold on every good-quality reading for `for` seconds
(measured on reading timestamps) before the rule fires; a firing rule clears when a reading is
back past the threshold by `hysteresis`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa

from rules.model import Finding, Rule, format_duration
from storage.batch import Quality

log = logging.getLogger(__name__)

_KEY = ["rule_id", "device_id", "metric"]

_STATE_SCHEMA = {
    "rule_id": pl.String,
    "device_id": pl.String,
    "metric": pl.String,
    "pending_since": pl.Int64,  # µs of the first reading of the current unbroken breach, or null
    "firing": pl.Boolean,
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    site: str | None
    kind: str
    tags: tuple[str, ...] = ()


class RuleEngine:
    def __init__(self, rules: Iterable[Rule], units: Mapping[str, str] | None = None) -> None:
        self.rules = {r.id: r for r in rules}
        self.units = dict(units or {})
        self._devices: dict[str, DeviceInfo] = {}
        self._bindings = pl.DataFrame()
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)
        self.evaluations = 0
        self.readings_evaluated = 0
        self.last_eval_seconds = 0.0

    # --- ledger ---------------------------------------------------------------------------------
    def set_devices(self, devices: Iterable[DeviceInfo]) -> None:
        for d in devices:
            self._devices[d.device_id] = d
        self._rebind()

    def _rebind(self) -> None:
        rows: list[dict[str, Any]] = []
        for rule in self.rules.values():
            sel = rule.applies_to
            for d in self._devices.values():
                if sel.kinds and d.kind not in sel.kinds:
                    continue
                if sel.sites and d.site not in sel.sites:
                    continue
                if sel.devices and d.device_id not in sel.devices:
                    continue
                if sel.tags and not set(sel.tags) <= set(d.tags):
                    continue
                for metric in rule.metric:
                    rows.append(
                        {
                            "rule_id": rule.id,
                            "device_id": d.device_id,
                            "metric": metric,
                            "site": d.site,
                            "above": rule.above is not None,
                            "threshold": rule.threshold,
                            "clear_level": rule.clear_level,
                            "for_us": int(rule.for_s * 1_000_000),
                        }
                    )
        self._bindings = pl.DataFrame(
            rows,
            schema={
                "rule_id": pl.String,
                "device_id": pl.String,
                "metric": pl.String,
                "site": pl.String,
                "above": pl.Boolean,
                "threshold": pl.Float64,
                "clear_level": pl.Float64,
                "for_us": pl.Int64,
            },
        )
        log.debug("rules bound: %d rule x device x metric bindings", self._bindings.height)

    @property
    def binding_count(self) -> int:
        return self._bindings.height

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, readings: pa.Table | pl.DataFrame) -> list[Finding]:
        """Evaluate one committed batch (columns ts, device_id, metric, value, quality)."""
        t0 = datetime.now(UTC)
        frame = readings if isinstance(readings, pl.DataFrame) else pl.from_arrow(readings)
        assert isinstance(frame, pl.DataFrame)
        bindings = self._bindings  # set_devices may swap it from another thread meanwhile
        if frame.height == 0 or bindings.height == 0:
            return []
        self.evaluations += 1
        self.readings_evaluated += frame.height
        hits = (
            frame.lazy()
            .filter(pl.col("quality") == int(Quality.GOOD))
            .select(
                pl.col("ts").dt.epoch("us").alias("ts_us"),
                "device_id",
                "metric",
                "value",
            )
            .join(bindings.lazy(), on=["device_id", "metric"], how="inner")
            .with_columns(
                breach=pl.when(pl.col("above"))
                .then(pl.col("value") > pl.col("threshold"))
                .otherwise(pl.col("value") < pl.col("threshold")),
                cleared=pl.when(pl.col("above"))
                .then(pl.col("value") < pl.col("clear_level"))
                .otherwise(pl.col("value") > pl.col("clear_level")),
            )
            .with_columns(last_ok_ts=pl.col("ts_us").filter(~pl.col("breach")).max().over(_KEY))
            .sort("ts_us")
            .group_by(_KEY)
            .agg(
                pl.col("ts_us").last().alias("last_ts"),
                pl.col("value").last().alias("last_value"),
                pl.col("cleared").last().alias("last_cleared"),
                pl.col("last_ok_ts").first(),
                pl.col("ts_us")
                .filter(pl.col("breach") & (pl.col("last_ok_ts").is_null() | (pl.col("ts_us") > pl.col("last_ok_ts"))))
                .min()
                .alias("first_breach_after_ok"),
                pl.col("site").first(),
                pl.col("threshold").first(),
                pl.col("for_us").first(),
            )
            .collect()
        )
        if hits.height == 0:
            return []
        merged = hits.join(self._state, on=_KEY, how="left").with_columns(
            pl.col("firing").fill_null(False),
        )
        merged = merged.with_columns(
            new_pending=pl.when(pl.col("last_ok_ts").is_null())
            .then(pl.coalesce("pending_since", "first_breach_after_ok"))
            .otherwise(pl.col("first_breach_after_ok"))
        ).with_columns(
            fire=(~pl.col("firing"))
            & pl.col("new_pending").is_not_null()
            & ((pl.col("last_ts") - pl.col("new_pending")) >= pl.col("for_us")),
            clear=pl.col("firing") & pl.col("last_cleared"),
        )
        merged = merged.with_columns(new_firing=(pl.col("firing") & ~pl.col("clear")) | pl.col("fire"))
        updated = merged.select(
            *_KEY,
            pl.col("new_pending").alias("pending_since"),
            pl.col("new_firing").alias("firing"),
        )
        self._state = pl.concat([self._state.join(updated, on=_KEY, how="anti"), updated], how="vertical_relaxed")
        changes = merged.filter(pl.col("fire") | pl.col("clear"))
        findings = [self._finding(row) for row in changes.iter_rows(named=True)]
        self.last_eval_seconds = (datetime.now(UTC) - t0).total_seconds()
        return findings

    def _finding(self, row: dict[str, Any]) -> Finding:
        rule = self.rules[row["rule_id"]]
        unit = self.units.get(row["metric"], "")
        value = float(row["last_value"])
        fields = {
            "device_id": row["device_id"],
            "site": row["site"] or "",
            "metric": row["metric"],
            "value": value,
            "threshold": rule.threshold,
            "unit": unit,
            "for": format_duration(rule.for_s),
            "title": rule.title,
        }
        try:
            message = rule.message.format(**fields)
        except (KeyError, ValueError, IndexError) as exc:
            message = (
                f"{rule.title}: {row['device_id']} {row['metric']} = {value:g} {unit} (message template error: {exc})"
            )
        return Finding(
            action="fire" if row["fire"] else "clear",
            rule_id=rule.id,
            title=rule.title,
            device_id=row["device_id"],
            site=row["site"],
            metric=row["metric"],
            value=value,
            threshold=rule.threshold,
            unit=unit,
            event_class=rule.event_class,
            message=message,
            runbook=rule.runbook,
            ts=_EPOCH + timedelta(microseconds=int(row["last_ts"])),
        )

    def firing(self) -> pl.DataFrame:
        return self._state.filter(pl.col("firing"))
