"""Sliding-window statistics kept incrementally, so a tick costs what arrived, not the window.

Per (device, metric, window length) the engine keeps running sums over the closed buckets inside
the window: bucket count k, and weighted by each bucket's reading count n: Σn, Σnx, Σny, Σnx², Σnxy,
Σny² (x = bucket mean time, y = bucket mean value) for the least-squares line of trend and rate
rules (weighted least squares on bucket means is the fit over the readings themselves, so a day
refilled from hourly rollups weighs what its readings weigh, not one bucket per hour), and the same
Σn, Σny give window means (deviation, expression). k counts the buckets (the points of the fit). Each windowed pass adds the buckets that closed since the last pass and subtracts
those that slid out of the window: O(new + expired buckets), independent of the window length.
Each bucket's contribution is kept until it expires, so expiring needs no look-up; everything is
rebuilt from the bucket store after a rebind or start-up.

x is measured in seconds from a per-engine origin so the sums stay well conditioned; statistics
handed to the kinds are shifted to "seconds before now", where the fitted value is the intercept.

Stuck-value rules need the minimum and maximum over the window, which cannot be subtracted, so
they keep their own state instead: the band [lo, hi] the value has stayed in and since when.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

KEY = ["device_id", "metric", "window_s", "tau_s"]
SUMS = ["k", "sx", "sy", "sxx", "sxy", "syy", "vn", "vs", "sw", "sww", "swy"]
SUMS_SCHEMA: dict[str, pl.DataType] = {
    "device_id": pl.String(),
    "metric": pl.String(),
    "window_s": pl.Float64(),
    "tau_s": pl.Float64(),
    **{c: pl.Float64() for c in SUMS},
}
STUCK_SCHEMA: dict[str, pl.DataType] = {
    "rule_id": pl.String(),
    "device_id": pl.String(),
    "metric": pl.String(),
    "lo": pl.Float64(),
    "hi": pl.Float64(),
    "since": pl.Int64(),
    "updated": pl.Int64(),
}


def _contributions(frame: pl.LazyFrame, origin_us: int) -> pl.LazyFrame:
    """Each bucket's share of its series' window sums, and when it leaves the window."""
    x = (pl.col("b") - origin_us).cast(pl.Float64) / 1e6 + pl.col("toff") / pl.col("n")
    y = pl.col("s") / pl.col("n")
    # Exponential fits (tau_s > 0) regress on w = exp(-x / tau); 0 for straight-line keys.
    w = pl.when(pl.col("tau_s") > 0).then((-x / pl.col("tau_s")).exp()).otherwise(0.0)
    n = pl.col("n").cast(pl.Float64)
    return frame.select(
        *KEY,
        expire_at=pl.col("b") + _window_us(),
        k=pl.lit(1.0),
        sx=n * x,
        sy=pl.col("s"),
        sxx=n * x * x,
        sxy=n * x * y,
        syy=n * y * y,
        vn=n,
        vs=pl.col("s"),
        sw=n * w,
        sww=n * w * w,
        swy=n * w * y,
    )


def _window_us() -> pl.Expr:
    return (pl.col("window_s") * 1e6).cast(pl.Int64)


class WindowSums:
    """Running sums per (device, metric, window) over the closed buckets inside each window.

    Every closed bucket's contribution is added once and kept, keyed by the time it leaves the
    window, until then; expiring it is a subtraction of what was added, with no look-up in the
    bucket store. Late data for an already counted bucket is amended in: the bucket's old
    contribution is replaced by its new one, and the difference is kept with it so that expiring
    subtracts exactly what the sums hold (ADR 0023)."""

    def __init__(self) -> None:
        self.sums = pl.DataFrame(schema=SUMS_SCHEMA)
        self.origin: int | None = None
        self.edge: int | None = None
        self._log: dict[int, list[pl.DataFrame]] = {}

    def _remember(self, contrib: pl.DataFrame) -> None:
        for (expire_at,), frame in contrib.partition_by("expire_at", as_dict=True, include_key=False).items():
            self._log.setdefault(int(expire_at), []).append(frame)

    def _expire(self, edge_us: int) -> list[pl.DataFrame]:
        due = sorted(k for k in self._log if k < edge_us)
        return [frame for k in due for frame in self._log.pop(k)]

    def rebuild(self, store: pl.DataFrame, keys: pl.LazyFrame, edge_us: int) -> None:
        """From scratch over the closed buckets in each key's window [edge - window, edge)."""
        self.origin = edge_us
        inside = (
            store.lazy()
            .join(keys, on=["device_id", "metric"], how="inner")
            .filter((pl.col("b") < edge_us) & (pl.col("b") >= edge_us - _window_us()))
        )
        contrib = _contributions(inside, edge_us).collect()
        self._log = {}
        self._remember(contrib)
        self.sums = contrib.group_by(KEY).agg(pl.col(SUMS).sum()).select(list(SUMS_SCHEMA))
        self.edge = edge_us

    def amend(self, before: pl.DataFrame, after: pl.DataFrame, keys: pl.LazyFrame) -> None:
        """Late readings changed buckets already counted: `before` and `after` are those buckets'
        rows in the store (a bucket new to the store has no `before` row). Only buckets inside a
        key's current window (counted, not yet expired) change the sums."""
        if self.origin is None or self.edge is None or after.height == 0:
            return
        edge = self.edge

        def counted(rows: pl.DataFrame) -> pl.LazyFrame:
            joined = rows.lazy().join(keys, on=["device_id", "metric"], how="inner")
            return _contributions(joined, self.origin or 0).filter(
                (pl.col("expire_at") >= edge) & (pl.col("expire_at") - _window_us() < edge)
            )

        old = counted(before).select("expire_at", *KEY, *[-pl.col(c) for c in SUMS])
        delta = (
            pl.concat([counted(after).select("expire_at", *KEY, *SUMS), old])
            .group_by("expire_at", *KEY)
            .agg(pl.col(SUMS).sum())
            .select("expire_at", *KEY, *SUMS)
            .collect()
        )
        if delta.height == 0:
            return
        self._remember(delta)
        self._add(delta.drop("expire_at"))

    def _add(self, change: pl.DataFrame) -> None:
        change = change.group_by(KEY).agg(pl.col(SUMS).sum())
        merged = self.sums.join(change, on=KEY, how="full", coalesce=True, suffix="_d")
        self.sums = merged.select(
            *KEY, *[(pl.col(c).fill_null(0.0) + pl.col(f"{c}_d").fill_null(0.0)).alias(c) for c in SUMS]
        ).filter(pl.col("k") > 0.5)

    def advance(self, closed: pl.DataFrame, keys: pl.LazyFrame, edge_us: int) -> None:
        """Add the buckets closed since the last edge, subtract those that slid out."""
        assert self.origin is not None
        added = _contributions(closed.lazy().join(keys, on=["device_id", "metric"], how="inner"), self.origin).collect()
        self._remember(added)
        gone = self._expire(edge_us)
        parts = [added.drop("expire_at")]
        if gone:
            parts.append(pl.concat(gone).select(*KEY, *[-pl.col(c) for c in SUMS]))
        self._add(pl.concat(parts))
        self.edge = edge_us


def relative_to_now(sums: pl.LazyFrame, origin_us: int, now_us: int) -> pl.LazyFrame:
    """The statistics the kinds read, with x in seconds before now (so the intercept is 'now')."""
    shift = (now_us - origin_us) / 1e6
    scale = pl.when(pl.col("tau_s") > 0).then((shift / pl.col("tau_s")).exp()).otherwise(0.0)
    return sums.select(
        *KEY,
        k=pl.col("k").round(0).cast(pl.Int64),
        sx=pl.col("sx") - pl.col("vn") * shift,
        sy=pl.col("sy"),
        sxx=pl.col("sxx") - 2 * shift * pl.col("sx") + pl.col("vn") * shift * shift,
        wn=pl.col("vn"),
        sxy=pl.col("sxy") - shift * pl.col("sy"),
        syy=pl.col("syy"),
        mean=pl.col("vs") / pl.col("vn"),
        # w = exp(-(t - origin)/tau) becomes v = exp(-(t - now)/tau): a factor exp((now - origin)/tau).
        sv=pl.col("sw") * scale,
        svv=pl.col("sww") * scale * scale,
        svy=pl.col("swy") * scale,
    )


def update_stuck(
    state: pl.DataFrame,
    between: Callable[[int, int], pl.DataFrame],
    bindings: pl.LazyFrame,
    prev_edge_us: int | None,
    edge_us: int,
) -> pl.DataFrame:
    """Advance each stuck binding's band with the buckets closed since the last pass.

    The band [lo, hi] grows while it stays within the rule's tolerance; when it would grow past
    it, it restarts at the newest bucket. `since` is when the current band began."""
    lower = prev_edge_us if prev_edge_us is not None else edge_us - 10**15
    closed = (
        between(lower, edge_us)
        .lazy()
        .join(bindings.select("rule_id", "device_id", "metric", "tolerance"), on=["device_id", "metric"], how="inner")
        .group_by("rule_id", "device_id", "metric")
        .agg(
            pl.col("tolerance").first(),
            new_lo=pl.col("lo").min(),
            new_hi=pl.col("hi").max(),
            first_b=pl.col("b").min(),
            last_b=pl.col("b").max(),
            last_lo=pl.col("lo").get(pl.col("b").arg_max()),
            last_hi=pl.col("hi").get(pl.col("b").arg_max()),
        )
    )
    merged = closed.join(state.lazy(), on=["rule_id", "device_id", "metric"], how="left")
    band_lo = pl.min_horizontal(pl.col("lo").fill_null(pl.col("new_lo")), pl.col("new_lo"))
    band_hi = pl.max_horizontal(pl.col("hi").fill_null(pl.col("new_hi")), pl.col("new_hi"))
    holds = (band_hi - band_lo) <= pl.col("tolerance")
    updated = merged.select(
        "rule_id",
        "device_id",
        "metric",
        lo=pl.when(holds).then(band_lo).otherwise(pl.col("last_lo")),
        hi=pl.when(holds).then(band_hi).otherwise(pl.col("last_hi")),
        since=pl.when(holds).then(pl.col("since").fill_null(pl.col("first_b"))).otherwise(pl.col("last_b")),
        updated=pl.lit(edge_us, pl.Int64),
    ).collect()
    kept = state.join(
        updated.select("rule_id", "device_id", "metric"), on=["rule_id", "device_id", "metric"], how="anti"
    )
    return pl.concat([kept, updated], how="vertical_relaxed")
