"""One vectorised evaluator per rule kind.

Every evaluator takes the bindings of its kind (one row per rule x device x metric, parameters as
columns, overrides already applied) and returns observations: one or more rows per binding with
`ts_us`, `breach` (the condition holds), `cleared` (the condition is over, hysteresis included) and
`value`, plus optional context columns (forecast, peer median, parent). No evaluator loops over
devices in Python; the expression kind loops over rules (each has its own expression).

Windowed kinds read the bucket store: per device and metric, fixed-width time buckets with count,
sum, min, max and mean time offset, kept by the engine for the longest window any rule needs.
"""

from __future__ import annotations

import polars as pl

OBS_SCHEMA: dict[str, pl.DataType] = {
    "rule_id": pl.String(),
    "device_id": pl.String(),
    "metric": pl.String(),
    "ts_us": pl.Int64(),
    "breach": pl.Boolean(),
    "cleared": pl.Boolean(),
    "value": pl.Float64(),
    "seconds_to_limit": pl.Float64(),
    "slope_per_s": pl.Float64(),
    "peer_median": pl.Float64(),
    "ratio": pl.Float64(),
    "z": pl.Float64(),
    "caused_by": pl.String(),
    "asymptote": pl.Float64(),
    "previous": pl.Float64(),
    "code": pl.String(),
}


def empty_observations() -> pl.LazyFrame:
    return pl.LazyFrame(schema=OBS_SCHEMA)


def conform(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Give an evaluator's output every observation column, in order, so kinds concatenate."""
    have = set(frame.collect_schema().names())
    missing = [pl.lit(None, dtype=t).alias(n) for n, t in OBS_SCHEMA.items() if n not in have]
    return frame.with_columns(missing).select([pl.col(n).cast(t) for n, t in OBS_SCHEMA.items()])


def limit_conditions(value: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """Above / below / band with hysteresis, from the binding columns `above`, `below`, `hysteresis`."""
    over = pl.col("above").is_not_null() & (value > pl.col("above"))
    under = pl.col("below").is_not_null() & (value < pl.col("below"))
    back_from_over = pl.col("above").is_null() | (value < pl.col("above") - pl.col("hysteresis"))
    back_from_under = pl.col("below").is_null() | (value > pl.col("below") + pl.col("hysteresis"))
    return over | under, back_from_over & back_from_under


def threshold(readings: pl.LazyFrame, bindings: pl.LazyFrame) -> pl.LazyFrame:
    """Every good reading of the batch against its threshold: many observations per binding."""
    breach, cleared = limit_conditions(pl.col("value"))
    return conform(
        readings.join(bindings, on=["device_id", "metric"], how="inner")
        .filter(pl.col("daylight") | ~pl.col("daylight_only"))
        .select("rule_id", "device_id", "metric", "ts_us", "value", breach=breach, cleared=cleared)
    )


def event(events: pl.LazyFrame, bindings: pl.LazyFrame) -> pl.LazyFrame:
    """Device events (status and fault codes) of the batch: one observation per event of the rule's
    event kind, keyed by its connector (the event text), so each gun of a pile alerts on its own."""
    joined = events.join(
        bindings.select("rule_id", "device_id", "event_kind", "codes", "clear_codes"), on="device_id", how="inner"
    ).filter(pl.col("kind") == pl.col("event_kind"))
    breach = pl.col("codes").list.contains(pl.col("code")).fill_null(False)
    cleared = (
        pl.when(pl.col("clear_codes").list.len() > 0)
        .then(pl.col("clear_codes").list.contains(pl.col("code")).fill_null(False))
        .otherwise(~breach)
    )
    return conform(
        joined.select(
            "rule_id",
            "device_id",
            "ts_us",
            "code",
            metric=pl.when(pl.col("text").fill_null("") == "").then(pl.lit("device")).otherwise(pl.col("text")),
            value=pl.when(breach).then(1.0).otherwise(0.0),
            breach=breach,
            cleared=cleared & ~breach,
        )
    )


def session_endings(endings: pl.LazyFrame, touched: pl.LazyFrame, bindings: pl.LazyFrame, now_us: int) -> pl.LazyFrame:
    """E12: the share of abnormal endings among each device's latest `sessions` charging sessions, for
    the devices with a new ending this tick; judged once that many sessions are known."""
    latest = (
        endings.join(touched, on="device_id", how="semi")
        .join(
            bindings.select("rule_id", "device_id", "metric", "codes", "sessions", "above", "hysteresis"),
            on="device_id",
        )
        .sort("ts_us")
        .with_columns(abnormal=pl.col("codes").list.contains(pl.col("reason")).fill_null(False))
        .with_columns(age=pl.int_range(pl.len()).reverse().over("rule_id", "device_id"))
        .filter(pl.col("age") < pl.col("sessions"))
    )
    judged = latest.group_by("rule_id", "device_id").agg(
        pl.col("metric").first(),
        n=pl.len(),
        share=pl.col("abnormal").mean(),
        sessions=pl.col("sessions").first(),
        above=pl.col("above").first(),
        hysteresis=pl.col("hysteresis").first(),
    )
    full = pl.col("n") >= pl.col("sessions")
    return conform(
        judged.select(
            "rule_id",
            "device_id",
            "metric",
            ts_us=pl.lit(now_us, pl.Int64),
            value=pl.col("share"),
            breach=full & (pl.col("share") > pl.col("above")),
            cleared=full & (pl.col("share") <= pl.col("above") - pl.col("hysteresis")),
        )
    )


def check_invalid(readings: pl.LazyFrame, bindings: pl.LazyFrame, out_of_range: int) -> pl.LazyFrame:
    """Readings of any quality against their invalid rules: `rejected` (a sentinel or outside the
    rule's physical [below, above]: screened from every other rule) and `bad` (rejected, NaN/inf or
    missing, or flagged out of range by the collector: what the invalid rule counts)."""
    outside, _ = limit_conditions(pl.col("value"))
    rejected = outside.fill_null(False) | pl.col("sentinels").list.contains(pl.col("value")).fill_null(False)
    return (
        readings.join(
            bindings.select("rule_id", "device_id", "metric", "above", "below", "sentinels"),
            on=["device_id", "metric"],
            how="inner",
        )
        .with_columns(rejected=rejected)
        .select(
            "rule_id",
            "device_id",
            "metric",
            "ts_us",
            "value",
            "rejected",
            bad=pl.col("rejected")
            | ~pl.col("value").is_finite().fill_null(False)
            | (pl.col("quality") == out_of_range),
        )
    )


def invalid(checked: pl.LazyFrame, bindings: pl.LazyFrame, watched: pl.LazyFrame) -> pl.LazyFrame:
    """G3: the readings checked by `check_invalid`, as observations of their rule; `repeat` in the
    rule makes the state machine wait for that many invalid readings in a row. Almost every reading
    is valid: only series with an invalid reading in the batch, or with state (`watched`: pending or
    firing keys), are passed on; a valid reading of any other series changes nothing."""
    key = ["rule_id", "device_id", "metric"]
    relevant = pl.concat([checked.filter(pl.col("bad")).select(key), watched.select(key)]).unique()
    return conform(
        checked.join(bindings.select("rule_id").unique(), on="rule_id", how="semi")
        .join(relevant, on=key, how="semi")
        .select("rule_id", "device_id", "metric", "ts_us", "value", breach=pl.col("bad"), cleared=~pl.col("bad"))
    )


def counter(readings: pl.LazyFrame, last: pl.LazyFrame, bindings: pl.LazyFrame) -> pl.LazyFrame:
    """Cumulative counters (energy registers) must never go down: each good reading against the one
    before it (the last of earlier batches included). A drop from near `wrap_at` to near zero is the
    register rolling over, not a regression; drops up to `tolerance` are rounding."""
    params = bindings.select("rule_id", "device_id", "metric", "tolerance", "wrap_at")
    key = ["rule_id", "device_id", "metric"]
    sequence = pl.concat(
        [
            last.join(params, on=["device_id", "metric"], how="inner").with_columns(earlier=pl.lit(True)),
            readings.select("ts_us", "device_id", "metric", "value")
            .join(params, on=["device_id", "metric"], how="inner")
            .with_columns(earlier=pl.lit(False)),
        ],
        how="diagonal_relaxed",
    )
    previous = pl.col("value").shift(1).over(key, order_by="ts_us")
    wrapped = (
        pl.col("wrap_at").is_not_null()
        & (pl.col("previous") >= 0.9 * pl.col("wrap_at"))
        & (pl.col("value") <= 0.1 * pl.col("wrap_at"))
    )
    regressed = (pl.col("previous") - pl.col("value") > pl.col("tolerance")) & ~wrapped
    frame = (
        sequence.with_columns(previous=previous)
        .filter(~pl.col("earlier") & pl.col("previous").is_not_null())
        .select(*key, "ts_us", "value", "previous", breach=regressed, cleared=~regressed)
    )
    return conform(frame)


_STATS_KEY = ["device_id", "metric", "window_s", "tau_s"]


def _fit(stats: pl.LazyFrame, bindings: pl.LazyFrame) -> pl.LazyFrame:
    """Least-squares fit over each binding's window: slope now (per s), value fitted at now, the
    slope's standard error, and for exponential fits the asymptote.

    Straight line (tau_s = 0): y = a + slope * x, x in seconds before now.
    Exponential approach (tau_s > 0), the first-order thermal model of IEC 60076-7:
    y = A + c * v with v = exp(-x / tau): a linear regression on v, so it has the same running sums.
    A is the asymptote, A + c the value now and -c / tau the slope now."""
    # Weighted by reading counts: sums over n; k (buckets) gives the degrees of freedom. With equal
    # counts the standard error is exactly the unweighted one.
    k = pl.col("k").cast(pl.Float64)
    wn = pl.col("wn")
    sxx_c = pl.col("sxx") - pl.col("sx") ** 2 / wn
    slope = (pl.col("sxy") - pl.col("sx") * pl.col("sy") / wn) / sxx_c
    svv_c = pl.col("svv") - pl.col("sv") ** 2 / wn
    c = (pl.col("svy") - pl.col("sv") * pl.col("sy") / wn) / svv_c
    exponential = pl.col("tau_s") > 0
    # Relative to its own scale: v is near 1, so a centred sum of squares this small means no spread.
    v_spread = svv_c > 1e-12 * pl.col("svv").abs()
    return (
        bindings.join(stats, on=_STATS_KEY, how="inner")
        .with_columns(
            slope=pl.when(sxx_c > 1e-12).then(slope).otherwise(0.0),
            c=pl.when(exponential & v_spread).then(c).otherwise(0.0),
        )
        .with_columns(
            fitted=(pl.col("sy") - pl.col("slope") * pl.col("sx")) / wn,
            asymptote=pl.when(exponential).then((pl.col("sy") - pl.col("c") * pl.col("sv")) / wn).otherwise(None),
        )
        .with_columns(
            sse=pl.when(exponential)
            .then(pl.col("syy") - pl.col("asymptote") * pl.col("sy") - pl.col("c") * pl.col("svy"))
            .otherwise(pl.col("syy") - pl.col("fitted") * pl.col("sy") - pl.col("slope") * pl.col("sxy"))
            .clip(lower_bound=0)
        )
        .with_columns(
            slope_se=pl.when(exponential & (pl.col("k") > 2) & v_spread)
            .then((pl.col("sse") / (k - 2) / svv_c).sqrt() / pl.col("tau_s"))
            .when(~exponential & (pl.col("k") > 2) & (sxx_c > 1e-12))
            .then((pl.col("sse") / (k - 2) / sxx_c).sqrt())
            .otherwise(float("inf")),
            slope=pl.when(exponential).then(-pl.col("c") / pl.col("tau_s")).otherwise(pl.col("slope")),
            fitted=pl.when(exponential).then(pl.col("asymptote") + pl.col("c")).otherwise(pl.col("fitted")),
        )
    )


def rate(stats: pl.LazyFrame, bindings: pl.LazyFrame, now_us: int) -> pl.LazyFrame:
    per_min = pl.col("slope") * 60
    significant = (pl.col("k") >= pl.col("min_points")) & (
        pl.col("slope").abs() > pl.col("noise_factor") * pl.col("slope_se")
    )
    breach = significant & (
        (pl.col("rise_per_min").is_not_null() & (per_min > pl.col("rise_per_min")))
        | (pl.col("fall_per_min").is_not_null() & (-per_min > pl.col("fall_per_min")))
    )
    frame = (
        _fit(stats, bindings)
        .filter(pl.col("daylight") | ~pl.col("daylight_only"))
        .select(
            "rule_id",
            "device_id",
            "metric",
            ts_us=pl.lit(now_us, pl.Int64),
            value=pl.col("fitted"),
            slope_per_s=pl.col("slope"),
            breach=breach,
            cleared=~breach & (pl.col("k") >= pl.col("min_points")),
        )
    )
    return conform(frame)


def trend(stats: pl.LazyFrame, bindings: pl.LazyFrame, now_us: int) -> pl.LazyFrame:
    """Time until the fitted line reaches the limit; fires when that is within the horizon."""
    sign = pl.when(pl.col("rising")).then(1.0).otherwise(-1.0)
    towards = pl.col("slope") * sign  # positive: moving towards the limit
    gap = (pl.col("limit") - pl.col("fitted")) * sign  # positive: limit not reached yet
    reached = gap <= 0
    significant = (pl.col("k") >= pl.col("min_points")) & (towards > pl.col("noise_factor") * pl.col("slope_se"))
    past_floor = pl.col("floor").is_null() | ((pl.col("fitted") - pl.col("floor")) * sign >= 0)
    # Exponential: the curve reaches the limit only if its asymptote lies beyond it, after
    # tau * ln((A - now) / (A - limit)); a straight line always gets there, after gap / slope.
    beyond = (pl.col("asymptote") - pl.col("limit")) * sign > 0
    exp_seconds = (
        pl.col("tau_s") * ((pl.col("asymptote") - pl.col("fitted")) / (pl.col("asymptote") - pl.col("limit"))).log()
    )
    seconds = (
        pl.when(reached)
        .then(0.0)
        .when(towards <= 0)
        .then(float("inf"))
        .when(pl.col("tau_s") <= 0)
        .then(gap / towards)
        .when(beyond)
        .then(exp_seconds)
        .otherwise(float("inf"))
    )
    # Firing needs a real movement towards the limit (also once it is reached: a plateau above the
    # limit is the threshold rule's business, not a forecast).
    breach = past_floor & significant & (reached | (pl.col("seconds") <= pl.col("horizon_s")))
    # Hysteresis: clear only when the forecast is well past the horizon (or the value moves away,
    # slope <= 0 gives an infinite time), or the value drops back behind the floor.
    below_floor = pl.col("floor").is_not_null() & ((pl.col("fitted") - pl.col("floor")) * sign < -pl.col("hysteresis"))
    cleared = (
        (pl.col("k") >= pl.col("min_points")) & ~reached & (below_floor | (pl.col("seconds") > 2 * pl.col("horizon_s")))
    )
    frame = (
        _fit(stats, bindings)
        .filter(pl.col("daylight") | ~pl.col("daylight_only"))
        .with_columns(seconds=seconds)
        .select(
            "rule_id",
            "device_id",
            "metric",
            ts_us=pl.lit(now_us, pl.Int64),
            value=pl.col("fitted"),
            slope_per_s=pl.col("slope"),
            seconds_to_limit=pl.col("seconds"),
            asymptote="asymptote",
            breach=breach,
            cleared=cleared,
        )
    )
    return conform(frame)


def stuck(state: pl.LazyFrame, bindings: pl.LazyFrame, edge_us: int, when: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """A value that has not moved beyond the tolerance for the whole window (a frozen sensor or
    register). `state` holds each binding's band and since when (see rules.windows). `when` (variant,
    device_id, ok) gates rules with a condition: judged stuck only while it holds."""
    held = (pl.lit(edge_us, pl.Int64) - pl.col("since")).cast(pl.Float64) / 1e6
    joined = bindings.join(
        state.filter(pl.col("updated") == edge_us), on=["rule_id", "device_id", "metric"], how="inner"
    )
    if when is not None:
        joined = joined.join(when, on=["variant", "device_id"], how="left").with_columns(
            ok=pl.col("ok").fill_null(pl.col("has_when").not_())
        )
    else:
        joined = joined.with_columns(ok=pl.lit(True))
    frame = joined.select(
        "rule_id",
        "device_id",
        "metric",
        ts_us=pl.lit(edge_us, pl.Int64),
        value=(pl.col("lo") + pl.col("hi")) / 2,
        breach=(held >= pl.col("window_s")) & pl.col("ok"),
        cleared=(held < pl.col("window_s")) | ~pl.col("ok"),
    )
    return conform(frame)


def offline(last_seen: pl.LazyFrame, bindings: pl.LazyFrame, now_us: int) -> pl.LazyFrame:
    """Silence longer than k expected intervals (at least the minimum); children of a silent parent
    are marked as caused by it."""
    allowed = pl.max_horizontal(pl.col("missed_intervals") * pl.col("interval_s"), pl.col("min_silence_s"))
    judged = (
        bindings.join(last_seen, on="device_id", how="inner")
        .with_columns(silence=(now_us - pl.col("last_ts")).cast(pl.Float64) / 1e6)
        .with_columns(breach=pl.col("silence") > allowed)
    )
    silent = judged.filter(pl.col("breach")).select(parent=pl.col("device_id")).unique()
    frame = judged.join(silent.with_columns(caused_by=pl.col("parent")), on="parent", how="left").select(
        "rule_id",
        "device_id",
        "metric",
        "breach",
        "caused_by",
        ts_us=pl.lit(now_us, pl.Int64),
        value=pl.col("silence"),
        cleared=~pl.col("breach"),
    )
    return conform(frame)


def data_gap(readings: pl.LazyFrame, last_seen: pl.LazyFrame, bindings: pl.LazyFrame, now_us: int) -> pl.LazyFrame:
    """A hole in the history: consecutive readings of a device further apart than k intervals."""
    allowed = pl.max_horizontal(pl.col("missed_intervals") * pl.col("interval_s"), pl.col("min_silence_s"))
    times = readings.select("device_id", "ts_us").unique()
    first_new = times.group_by("device_id").agg(first_ts=pl.col("ts_us").min())
    # The last reading seen before only bounds a hole when it is older than what arrives now: a device's
    # first data (its start-up stand-in is "now") or out-of-order late data opens no gap against it.
    previous = (
        last_seen.select("device_id", ts_us="last_ts")
        .join(first_new, on="device_id")
        .filter(pl.col("ts_us") <= pl.col("first_ts"))
        .select("device_id", "ts_us")
    )
    gaps = (
        pl.concat([previous, times])
        .unique()
        .sort("device_id", "ts_us")
        .with_columns(gap=(pl.col("ts_us") - pl.col("ts_us").shift(1).over("device_id")).cast(pl.Float64) / 1e6)
        .group_by("device_id")
        .agg(gap=pl.col("gap").max().fill_null(0.0))
    )
    frame = bindings.join(gaps, on="device_id", how="inner").select(
        "rule_id",
        "device_id",
        "metric",
        ts_us=pl.lit(now_us, pl.Int64),
        value=pl.col("gap"),
        breach=pl.col("gap") > allowed,
        cleared=pl.col("gap") <= allowed,
    )
    return conform(frame)


def deviation(stats: pl.LazyFrame, bindings: pl.LazyFrame, now_us: int) -> pl.LazyFrame:
    """Each device (and metric) against its peers: same rule, site and device kind (and model).

    Robust statistics: the peer median and the MAD; the ratio to the median decides, the robust
    z-score confirms it is outside the peers' normal spread.
    """
    per_binding = (
        bindings.join(stats, on=_STATS_KEY, how="inner")
        .with_columns(raw=pl.col("mean"))
        .filter(pl.col("daylight") | ~pl.col("daylight_only"))
        .with_columns(
            v=pl.when(pl.col("normalise") & (pl.col("rated_kw") > 0))
            .then(pl.col("raw") / pl.col("rated_kw"))
            .otherwise(pl.col("raw"))
        )
    )
    group = ["rule_id", "site", "dkind", "model"]
    frame = (
        per_binding.with_columns(
            median=pl.col("v").median().over(group),
            peers=pl.len().over(group),
            raw_median=pl.col("raw").median().over(group),
        )
        .with_columns(mad=(pl.col("v") - pl.col("median")).abs().median().over(group))
        .with_columns(
            spread=pl.max_horizontal(1.4826 * pl.col("mad"), 0.01 * pl.col("median").abs(), pl.lit(1e-9)),
            ratio=pl.when(pl.col("median").abs() > 1e-12).then(pl.col("v") / pl.col("median")).otherwise(None),
        )
        .with_columns(z=(pl.col("v") - pl.col("median")) / pl.col("spread"))
        .with_columns(
            judged=(pl.col("peers") >= pl.col("min_peers")) & (pl.col("raw_median") > pl.col("min_peer_median"))
        )
        .with_columns(
            low=pl.col("ratio_below").is_not_null()
            & (pl.col("ratio") < pl.col("ratio_below"))
            & (pl.col("z") < -pl.col("min_z")),
            high=pl.col("ratio_above").is_not_null()
            & (pl.col("ratio") > pl.col("ratio_above"))
            & (pl.col("z") > pl.col("min_z")),
            back=(pl.col("ratio_below").is_null() | (pl.col("ratio") >= pl.col("ratio_below") + pl.col("hysteresis")))
            & (pl.col("ratio_above").is_null() | (pl.col("ratio") <= pl.col("ratio_above") - pl.col("hysteresis"))),
        )
        .select(
            "rule_id",
            "device_id",
            "metric",
            "ratio",
            "z",
            ts_us=pl.lit(now_us, pl.Int64),
            value=pl.col("raw"),
            peer_median=pl.col("raw_median"),
            breach=pl.col("judged") & (pl.col("low") | pl.col("high")),
            cleared=pl.col("judged") & pl.col("back"),
        )
    )
    return conform(frame)


def expression(
    stats: pl.LazyFrame,
    bindings: pl.LazyFrame,
    now_us: int,
    expr: pl.Expr,
    when: pl.Expr | None,
    inputs: list[str],
    window_s: float,
) -> pl.LazyFrame:
    """One expression rule over all its devices: the window mean of each input metric, side by
    side per device, then the expression, then above/below/band like a threshold."""
    means = stats.filter(pl.col("metric").is_in(inputs) & (pl.col("window_s") == window_s)).select(
        "device_id", "metric", "mean"
    )
    # Side by side per device; a device missing an input is not judged.
    wide = (
        means.group_by("device_id")
        .agg([pl.col("mean").filter(pl.col("metric") == m).first().alias(m) for m in inputs])
        .drop_nulls(inputs)
    )
    computed = wide.select("device_id", value=expr.cast(pl.Float64), ok=when if when is not None else pl.lit(True))
    breach, cleared = limit_conditions(pl.col("value"))
    frame = (
        computed.join(bindings, on="device_id", how="inner")
        .filter(
            pl.col("ok").fill_null(False)
            & pl.col("value").is_finite()
            & (pl.col("daylight") | ~pl.col("daylight_only"))
        )
        .select(
            "rule_id", "device_id", "metric", "value", ts_us=pl.lit(now_us, pl.Int64), breach=breach, cleared=cleared
        )
    )
    return conform(frame)
