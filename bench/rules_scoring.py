"""Score the default rule packs against simulated ground truth: detection, false alarms, lead time.

1. Fault run: the demo hub (4 AC, 2 DC, 2 PV inverters, 1 box transformer) with every fault kind the
   simulator injects, each on its own device, for `--fault-hours` from 08:00 local time.
2. Healthy run: the same hub without faults for `--healthy-days` (a week by default).

Prints, per fault: the rule that detected it, the delay from onset, and for slowly developing faults
how long before the hard threshold the trend (forecast) rule fired; then detection rate and false
alarms per device-day. The baseline in the same run is the threshold rules alone (the packs minus
their trend rules): what plain thresholds on a dashboard would have caught, and when.

    .venv/bin/python bench/rules_scoring.py
    .venv/bin/python bench/rules_scoring.py --healthy-days 1
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.loader import LoadedRules, builtin_pack_files, load_packs
from simulator import demo_fleet, demo_site
from simulator.faults import FaultSpec
from simulator.scoring import run_scenario, score

START = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)  # 08:00 in Shenzhen
FAULTS = [
    FaultSpec("dc_connector_overheat", "DC01", 1800, {"rise_k_per_min": 0.4}),
    FaultSpec("dc_fan_failure", "DC02", 1800),
    FaultSpec("insulation_decline", "DC02", 1800, {"halving_h": 0.5}),
    FaultSpec("pv_string_fault", "INV01", 1800, {"string": 2, "factor": 0.7}),
    FaultSpec("inverter_overtemp", "INV02", 1800, {"factor": 2.5}),
    FaultSpec("transformer_cooling_loss", "TX01", 1800, {"factor": 4.0}),
    FaultSpec("stuck_sensor", "AC01", 1800, {"metric": "connector_temp_c"}),
    FaultSpec("device_offline", "AC02", 3600, {"duration_s": 600}),
]


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:6.1f} min"


def without_trends(loaded: LoadedRules) -> LoadedRules:
    return LoadedRules(
        rules=[r for r in loaded.rules if r.kind != "trend"],
        overrides=loaded.overrides,
        files=loaded.files,
        origin=loaded.origin,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fault-hours", type=float, default=6.0)
    ap.add_argument("--healthy-days", type=float, default=7.0)
    args = ap.parse_args()
    loaded = load_packs(builtin_pack_files())
    assert not loaded.problems, loaded.problems
    site = demo_site()

    t = time.perf_counter()
    faulty = run_scenario(
        site, demo_fleet(interval_s=15), loaded, start=START, hours=args.fault_hours, faults=FAULTS, physics_step_s=5
    )
    baseline = run_scenario(
        site,
        demo_fleet(interval_s=15),
        without_trends(loaded),
        start=START,
        hours=args.fault_hours,
        faults=FAULTS,
        physics_step_s=5,
    )
    fault_s = time.perf_counter() - t
    scores, base_scores = score(faulty), score(baseline)
    print(
        f"fault run: {args.fault_hours:g} h, {faulty.readings:,} readings, {len(FAULTS)} faults ({fault_s:.0f} s wall)"
    )
    print(f"{'fault':26s} {'device':7s} {'detected by':28s} {'delay':>10s} {'lead':>10s} {'thresholds only':>16s}")
    for s, b in zip(scores, base_scores, strict=True):
        print(
            f"{s.record.kind:26s} {s.record.device_id:7s} {s.detected_by or 'MISSED':28s} "
            f"{minutes(s.delay_s):>10s} {minutes(s.lead_s):>10s} {minutes(b.delay_s):>16s}"
        )
    # Transformer overload in its own run: on TX01 above it would mix with the cooling loss.
    transformer = [d for d in demo_fleet(interval_s=30) if d.kind == "box_transformer"]
    overload = [FaultSpec("transformer_overload", "TX01", 1800, {"extra_kva": 600})]
    s = score(run_scenario(site, transformer, loaded, start=START, hours=3, faults=overload, physics_step_s=10))[0]
    b = score(
        run_scenario(
            site, transformer, without_trends(loaded), start=START, hours=3, faults=overload, physics_step_s=10
        )
    )[0]
    print(
        f"{s.record.kind:26s} {s.record.device_id:7s} {s.detected_by or 'MISSED':28s} "
        f"{minutes(s.delay_s):>10s} {minutes(s.lead_s):>10s} {minutes(b.delay_s):>16s}"
    )
    scores.append(s)
    base_scores.append(b)
    detected = sum(1 for s in scores if s.detected_by)
    base_detected = sum(1 for s in base_scores if s.detected_by)
    print(f"detection rate: {detected}/{len(scores)} (thresholds only: {base_detected}/{len(base_scores)})")

    t = time.perf_counter()
    healthy = run_scenario(
        site,
        demo_fleet(interval_s=30),
        loaded,
        start=START,
        hours=24 * args.healthy_days,
        feed_s=300,
        physics_step_s=10,
    )
    fires = [f for f in healthy.findings if f.action == "fire"]
    print(
        f"healthy run: {args.healthy_days:g} days, {len(healthy.devices)} devices = {healthy.device_days:.0f} device-days, "
        f"{healthy.readings:,} readings ({time.perf_counter() - t:.0f} s wall)"
    )
    print(f"false alarms: {len(fires)} = {len(fires) / healthy.device_days:.3f} per device-day")
    for f in fires[:10]:
        print(f"  {f.ts.isoformat(timespec='minutes')} {f.rule_id} {f.device_id}: {f.message}")


if __name__ == "__main__":
    main()
