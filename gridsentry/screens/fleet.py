"""The screens' view of the running service: fleet exposition for /metrics and figures for the wall."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gridsentry.screens import exposition
from gridsentry.screens.alerts import EVENT_CLASSES, KPI_SQL, OPEN_ALERTS_SCHEMA, OPEN_ALERTS_SQL
from gridsentry.screens.exposition import DEVICE_SCHEMA, DEVICE_STATES, FleetState
from gridsentry.screens.latest import LatestValues
from gridsentry.screens.naming import ReadingFamily, reading_families
from gridsentry.screens.settings import ScreensConfig

if TYPE_CHECKING:
    from gridsentry.service import Service

log = logging.getLogger("gridsentry.screens")

#: Charging power: AC chargers report power_kw, DC chargers one power per gun.
CHARGING_METRICS = ("power_kw", "gun1_power_kw", "gun2_power_kw")
PV_METRIC = "ac_power_kw"
TRANSFORMER_LOAD_METRIC = "load_kva"
TRANSFORMER_FACTOR_METRIC = "load_factor"
HOT_SPOT_METRIC = "hot_spot_temp_c"
_ALERTS_CACHE_S = 1.0
_KPI_CACHE_S = 5.0


class ScreensView:
    def __init__(self, service: Service, cfg: ScreensConfig) -> None:
        self._service = service
        self.cfg = cfg
        self.latest = LatestValues()
        self.families: dict[str, ReadingFamily] = reading_families(
            (m.name, m.unit, m.description) for m in service.catalogue.values()
        )
        self.series_served = 0
        self.series_held = 0
        self.last_render_seconds = 0.0
        self.render_failures = 0
        self._alerts_lock = threading.Lock()
        self._alerts: tuple[float, pl.DataFrame] | None = None
        self._kpis: tuple[float, list[tuple[object, ...]]] | None = None
        self._devices: tuple[int, pl.DataFrame] | None = None
        self._devices_version = 0
        self._render_lock = threading.Lock()
        self._layout_cache: dict[str, exposition.SeriesLayout] = {}
        self._rendered: tuple[int, int, str] | None = None  # (state version, second, text)

    # --- inputs ------------------------------------------------------------------------------------------
    def devices(self) -> pl.DataFrame:
        """The ledger plus devices first seen in data (kind 'unknown'); rebuilt only when a device appears."""
        known_count = len(self._service.known_devices)
        if self._devices is not None and self._devices[0] == known_count:
            return self._devices[1]
        configured = {d.id: d for d in self._service.cfg.devices}
        known = dict(self._service.known_devices)
        rows: dict[str, list[Any]] = {k: [] for k in DEVICE_SCHEMA}
        for dev_id in sorted(set(configured) | set(known)):
            d = configured.get(dev_id)
            info = known.get(dev_id)
            rows["device_id"].append(dev_id)
            rows["site"].append(d.site if d else (info.site if info else None))
            rows["kind"].append(d.kind if d else (info.kind if info else "unknown"))
            rows["expected_interval_s"].append(d.expected_interval_s if d else None)
            rows["rated_kw"].append(d.rated_kw if d else None)
        frame = pl.DataFrame(rows, schema=DEVICE_SCHEMA)
        self._devices = (known_count, frame)
        self._devices_version += 1
        return frame

    def open_alerts_detail(self, max_age_s: float = _ALERTS_CACHE_S) -> pl.DataFrame:
        """Open alerts with their deadlines; scrapes share one read per second, the wall asks for a fresh one."""
        with self._alerts_lock:
            now = time.monotonic()
            if self._alerts is not None and now - self._alerts[0] < max_age_s:
                return self._alerts[1]
            con = self._service.writer.reader()
            try:
                cur = con.execute(OPEN_ALERTS_SQL)
                cols = [d[0] for d in cur.description or []]
                rows = cur.fetchall()
            finally:
                con.close()
            frame = pl.DataFrame({c: [r[i] for r in rows] for i, c in enumerate(cols)}, schema=OPEN_ALERTS_SCHEMA)
            self._alerts = (now, frame)
            return frame

    def alert_kpis(self) -> list[tuple[object, ...]]:
        """The standard's KPIs per event class (gridsentry.screens.alerts.KPI_SQL), read at most every 5 s."""
        with self._alerts_lock:
            now = time.monotonic()
            if self._kpis is not None and now - self._kpis[0] < _KPI_CACHE_S:
                return self._kpis[1]
            con = self._service.writer.reader()
            try:
                rows = [tuple(r) for r in con.execute(KPI_SQL).fetchall()]
            finally:
                con.close()
            self._kpis = (now, rows)
            return rows

    def state(self, alerts_max_age_s: float = _ALERTS_CACHE_S) -> FleetState:
        try:
            detail = self.open_alerts_detail(alerts_max_age_s)
            open_alerts = detail.group_by("device_id", "event_class").agg(pl.len().cast(pl.Int64).alias("n"))
        except Exception as exc:  # the fleet families still render without alert states
            log.warning("open alerts are left out of the fleet state: %s", exc)
            open_alerts = pl.DataFrame(schema={"device_id": pl.String, "event_class": pl.String, "n": pl.Int64})
        return FleetState(
            latest=self.latest.snapshot(),
            devices=self.devices(),
            open_alerts=open_alerts,
            families=self.families,
            now=time.time(),
            reading_max_age_s=self.cfg.reading_max_age_s,
            offline_after_intervals=self.cfg.offline_after_intervals,
            devices_version=self._devices_version,
        )

    # --- /metrics --------------------------------------------------------------------------------------------
    def render_fleet(self) -> str:
        """The fleet families as text; scrapes within the same second and state version share one render."""
        with self._render_lock:
            key = (self.latest.version, int(time.time()))
            if self._rendered is not None and self._rendered[:2] == key:
                return self._rendered[2]
            t0 = time.perf_counter()
            state = self.state()
            text = exposition.render_fleet(state, self._layout_cache)
            self.last_render_seconds = time.perf_counter() - t0
            self.series_held = state.latest.height
            self.series_served = text.count("\n") - 2 * text.count("# TYPE ")
            self._rendered = (*key, text)
            return text

    # --- the wall ----------------------------------------------------------------------------------------------
    def wall_fleet(self) -> dict[str, Any]:
        """Device tiles by state, counts per site and the key power figures, for the wall screen."""
        # Fresh alerts: the page shows the alert rows it read just before, and the counts must not lag them.
        state = self.state(alerts_max_age_s=0.0)
        devices = exposition.device_table(state)
        worst = (
            state.open_alerts.with_columns(
                pl.col("event_class").replace_strict({"I": 1, "II": 2, "III": 3}, default=9).alias("rank")
            )
            .group_by("device_id")
            .agg(pl.col("rank").min())
        )
        tiles = devices.join(worst, on="device_id", how="left").sort("site", "device_id", nulls_last=True)
        by_state = dict.fromkeys(DEVICE_STATES, 0)
        by_state.update(dict(devices.group_by("state").len().iter_rows()))
        sites: dict[str, dict[str, Any]] = {}
        names = {s.id: s.name for s in self._service.cfg.sites}
        for row in tiles.iter_rows(named=True):  # one row per device: the wall shows each as a tile
            site = row["site"] or ""
            entry = sites.setdefault(
                site, {"site": site, "name": names.get(site) or site, "devices": 0, **dict.fromkeys(DEVICE_STATES, 0)}
            )
            entry["devices"] += 1
            entry[row["state"]] += 1
        fresh = state.latest.filter(pl.col("ts").dt.epoch("us") >= int((state.now - state.reading_max_age_s) * 1e6))
        fresh = fresh.join(state.devices.select("device_id", "kind"), on="device_id", how="left")

        def total(metrics: tuple[str, ...], kinds: tuple[str, ...] | None = None) -> float | None:
            rows = fresh.filter(pl.col("metric").is_in(list(metrics)))
            if kinds is not None:
                rows = rows.filter(pl.col("kind").is_in(list(kinds)))
            return None if rows.height == 0 else round(float(rows["value"].sum()), 1)

        def peak(metric: str) -> float | None:
            rows = fresh.filter(pl.col("metric") == metric)
            return None if rows.height == 0 else round(float(rows["value"].max()), 2)  # type: ignore[arg-type]

        return {
            "now": datetime.fromtimestamp(state.now, UTC).isoformat(),
            "devices": {"total": devices.height, "by_state": by_state},
            "sites": list(sites.values()),
            "tiles": [
                {
                    "device_id": r["device_id"],
                    "site": r["site"],
                    "kind": r["kind"],
                    "state": r["state"],
                    "worst_class": {1: "I", 2: "II", 3: "III"}.get(r["rank"]) if r["rank"] else None,
                    "last_seen_age_s": None if r["age_s"] is None else round(r["age_s"], 1),
                }
                for r in tiles.iter_rows(named=True)
            ],
            "power": {
                "pv_generation_kw": total((PV_METRIC,), ("pv_inverter",)),
                "charging_kw": total(CHARGING_METRICS, ("charger_ac", "charger_dc")),
                "transformer_load_kva": total((TRANSFORMER_LOAD_METRIC,)),
                "transformer_load_factor_max": peak(TRANSFORMER_FACTOR_METRIC),
                "hot_spot_temp_c_max": peak(HOT_SPOT_METRIC),
            },
            "alert_counts": alert_counts(state.open_alerts),
        }


def alert_counts(open_alerts: pl.DataFrame) -> dict[str, int]:
    """Open alerts per event class, from the same snapshot as the tiles (so the two always agree)."""
    counts = dict.fromkeys(EVENT_CLASSES, 0)
    for cls, n in open_alerts.group_by("event_class").agg(pl.col("n").sum()).iter_rows():
        counts[str(cls)] = int(n)
    return counts


class FleetCollector(Collector):
    """The fleet families through prometheus-client (the slow path: benchmark baseline and cross-check)."""

    def __init__(self, view: ScreensView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        yield from exposition.families(self.view.state())
