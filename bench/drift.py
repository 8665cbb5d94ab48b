"""Drift check cost: driftwatch's sketches against Evidently's DataDriftPreset on the same data, in one run.

10 numeric features; a 10,000-row reference; current windows of 10k, 100k and 1M rows. driftwatch keeps a
fixed-edge histogram per feature, so a check (binned KS + PSI for all 10 features) costs the same at any window
size; Evidently recomputes from the rows. Also prints driftwatch's update cost per event per feature (the
per-value path the daemon uses) and the vectorised path for bulk loads.

    pip install 'driftwatch[report]'   # evidently 0.7, pandas<3
    python bench/drift.py [--sizes 10000,100000,1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from driftwatch.monitor.sketch import Histogram
from driftwatch.monitor.stats import verdict

FEATURES = 10


def make(rows: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = [rng.normal(loc=shift, size=rows) if i % 2 else rng.lognormal(mean=3 + shift, sigma=0.6, size=rows)
            for i in range(FEATURES)]
    return np.column_stack(cols)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    ref = make(10_000, seed=1)
    ref_hists = [Histogram.from_quantiles(ref[:, j]) for j in range(FEATURES)]

    # update cost: the daemon adds one value at a time
    values = make(100_000, seed=2)[:, 0].tolist()
    h = ref_hists[0].empty_like()
    t = time.perf_counter()
    for v in values:
        h.add(v)
    per_value_ns = (time.perf_counter() - t) / len(values) * 1e9
    bulk = ref_hists[0].empty_like()
    bulk_ns = best_of(args.repeats, lambda: bulk.add_many(np.asarray(values))) / len(values) * 1e9
    print(f"update: {per_value_ns:.0f} ns per event per feature (one at a time), {bulk_ns:.1f} ns vectorised")

    try:
        import pandas as pd
        from evidently import Report
        from evidently.presets import DataDriftPreset
    except ImportError:
        pd = None
        print("evidently not installed (pip install 'driftwatch[report]'): driftwatch figures only")

    print(f"{'rows':>9}  {'driftwatch check':>17}  {'evidently preset':>17}  {'ratio':>8}")
    for rows in sizes:
        cur = make(rows, seed=3, shift=0.05)
        cur_hists = [ref_hists[j].empty_like() for j in range(FEATURES)]
        for j in range(FEATURES):
            cur_hists[j].add_many(cur[:, j])

        def check() -> list:
            return [verdict(ref_hists[j].counts, cur_hists[j].counts, kind="numeric") for j in range(FEATURES)]

        dw = best_of(args.repeats, check)
        if pd is not None:
            names = [f"f{j}" for j in range(FEATURES)]
            ref_df, cur_df = pd.DataFrame(ref, columns=names), pd.DataFrame(cur, columns=names)
            ev = best_of(max(1, args.repeats if rows <= 100_000 else 1),
                         lambda: Report([DataDriftPreset()]).run(cur_df, ref_df))
            print(f"{rows:>9,}  {dw * 1000:>14.3f} ms  {ev * 1000:>14.1f} ms  {ev / dw:>7.0f}x")
        else:
            print(f"{rows:>9,}  {dw * 1000:>14.3f} ms  {'-':>17}  {'-':>8}")
    print("goal: a check costs <= 1 ms at any window size; updates <= 1 us per event per feature")


if __name__ == "__main__":
    main()
