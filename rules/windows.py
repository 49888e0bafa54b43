"""Sliding-window statistics kept incrementally, so a tick costs what arrived, not the window.

Per (device, metric, window length) the engine keeps running sums over the closed buckets inside
the window: bucket count k, Σx, Σy, Σx², Σxy, Σy² (x = bucket mean time, y = bucket mean value)
for the least-squares line of trend and rate rules, and Σn, Σvalue for window means (deviation,
expression). Each windowed pass adds the buckets that closed since the last pass and subtracts
those that slid out of the window: O(new + expired buckets), independent of the window length.
A bucket that receives late data after it was counted marks its series dirty; dirty series (and
everything after a rebind or start-up) are recomputed from the bucket store in one pass.

x is measured in seconds from a per-engine origin so the sums stay well conditioned; statistics
handed to the kinds are shifted to "seconds before now", where the fitted value is the intercept.

Stuck-value rules need the minimum and maximum over the window, which cannot be subtracted, so
they keep their own state instead: the band [lo, hi] the value has stayed in and since when.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

KEY = ["device_id", "metric", "window_s"]
SUMS = ["k", "sx", "sy", "sxx", "sxy", "syy", "vn", "vs"]
SUMS_SCHEMA: dict[str, pl.DataType] = {
    "device_id": pl.String(),
    "metric": pl.String(),
    "window_s": pl.Float64(),
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


def _contributions(frame: pl.LazyFrame, origin_us: int, sign: float) -> pl.LazyFrame:
    x = (pl.col("b") - origin_us).cast(pl.Float64) / 1e6 + pl.col("toff") / pl.col("n")
    y = pl.col("s") / pl.col("n")
    return frame.select(
        *KEY,
        k=pl.lit(sign),
        sx=sign * x,
        sy=sign * y,
        sxx=sign * x * x,
        sxy=sign * x * y,
        syy=sign * y * y,
        vn=sign * pl.col("n").cast(pl.Float64),
        vs=sign * pl.col("s"),
    )


def _window_us() -> pl.Expr:
    return (pl.col("window_s") * 1e6).cast(pl.Int64)


def full(buckets: pl.LazyFrame, keys: pl.LazyFrame, origin_us: int, edge_us: int) -> pl.LazyFrame:
    """Sums from scratch over the closed buckets in each key's window [edge - window, edge)."""
    inside = buckets.join(keys, on=["device_id", "metric"], how="inner").filter(
        (pl.col("b") < edge_us) & (pl.col("b") >= edge_us - _window_us())
    )
    return _contributions(inside, origin_us, 1.0).group_by(KEY).agg(pl.col(SUMS).sum())


def delta(
    between: Callable[[int, int], pl.DataFrame],
    keys: pl.LazyFrame,
    origin_us: int,
    prev_edge_us: int,
    edge_us: int,
    window_lengths: list[float],
) -> pl.LazyFrame:
    """What changed between two passes: buckets closed since `prev_edge` in, buckets that slid out.

    `between(lo, hi)` returns the buckets with lo <= b < hi (a slice of the time-sorted store)."""
    closed = between(prev_edge_us, edge_us).lazy().join(keys, on=["device_id", "metric"], how="inner")
    # Per distinct window length (a handful), only the thin slice of buckets that slid out.
    expired = [
        between(prev_edge_us - w_us, edge_us - w_us)
        .lazy()
        .join(keys.filter(pl.col("window_s") == w), on=["device_id", "metric"], how="inner")
        for w, w_us in ((w, int(w * 1e6)) for w in window_lengths)
    ]
    return (
        pl.concat([_contributions(closed, origin_us, 1.0), *(_contributions(e, origin_us, -1.0) for e in expired)])
        .group_by(KEY)
        .agg(pl.col(SUMS).sum())
    )


def apply(sums: pl.DataFrame, change: pl.DataFrame) -> pl.DataFrame:
    merged = sums.join(change, on=KEY, how="full", coalesce=True, suffix="_d")
    return merged.select(
        *KEY, *[(pl.col(c).fill_null(0.0) + pl.col(f"{c}_d").fill_null(0.0)).alias(c) for c in SUMS]
    ).filter(pl.col("k") > 0.5)


def relative_to_now(sums: pl.LazyFrame, origin_us: int, now_us: int) -> pl.LazyFrame:
    """The statistics the kinds read, with x in seconds before now (so the intercept is 'now')."""
    shift = (now_us - origin_us) / 1e6
    return sums.select(
        *KEY,
        k=pl.col("k").round(0).cast(pl.Int64),
        sx=pl.col("sx") - pl.col("k") * shift,
        sy=pl.col("sy"),
        sxx=pl.col("sxx") - 2 * shift * pl.col("sx") + pl.col("k") * shift * shift,
        sxy=pl.col("sxy") - shift * pl.col("sy"),
        syy=pl.col("syy"),
        mean=pl.col("vs") / pl.col("vn"),
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
