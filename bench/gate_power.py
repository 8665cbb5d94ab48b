"""The paired forgetting gate's power (docs/evaluation.md): how often it refuses a candidate that truly lost 0, 1, 2
and 5 points of the battery, by battery size (the default battery, the large one, and the part of it that gates a
review). Simulated, seconds, no model:

    python bench/gate_power.py [--trials 2000] [--churn 0.03]

Each question flips right → wrong with probability churn + loss and wrong → right with probability churn; the gate
is evaluate/gates.py's, with the default bound (0.05) and confidence (0.95). The anchor is the unpaired gate it
replaced (the score difference alone against the same bound), printed beside it.
"""

from __future__ import annotations

import argparse
import random


def main() -> int:
    from driftwatch.config import PromotionGates
    from driftwatch.evaluate.evaluator import parts, shipped
    from driftwatch.evaluate.gates import Flips, Gate
    from driftwatch.evaluate.golden import read_golden

    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--churn", type=float, default=0.03, help="share of questions flipping each way by chance")
    args = ap.parse_args()
    gates = PromotionGates()
    bound, alpha = gates.forgetting_max_drop, 1 - gates.forgetting_confidence
    losses = (0.0, 0.01, 0.02, 0.05)
    print(f"refused, of {args.trials} trials (paired gate / unpaired score difference), churn {args.churn:g}")
    print("| battery | " + " | ".join(f"true loss {x * 100:g} point{'s' if x != 0.01 else ''}" for x in losses) + " |")
    print("|---|" + "---|" * len(losses))
    battery = read_golden(shipped("battery-large.jsonl"))
    half = len(parts({"golden": [], "battery": battery, "probes": []})[1]["battery"])
    names = {120: "the default battery", half: "battery-large's held-out part in a review", len(battery): "battery-large"}
    for n in (120, half, len(battery), 1000, 1500):
        cells = []
        for loss in losses:
            rng = random.Random(1)
            paired = unpaired = 0
            for _ in range(args.trials):
                lost = gained = 0
                for _ in range(n):
                    u = rng.random()
                    if u < args.churn + loss:
                        lost += 1
                    elif u < 2 * args.churn + loss:
                        gained += 1
                f = Flips(lost, gained, n)
                paired += not Gate("forgetting_drop", f.drop, bound, "<=", p_value=f.p_value(), alpha=alpha).passed
                unpaired += not Gate("forgetting_drop", f.drop, bound, "<=").passed
            cells.append(f"{paired / args.trials * 100:.1f} % / {unpaired / args.trials * 100:.1f} %")
        print(f"| {n:,}{f' ({names[n]})' if n in names else ''} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
