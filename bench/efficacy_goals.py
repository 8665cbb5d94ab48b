"""Issue 26's goals, judged from the JSON of `bench/efficacy.py --out` runs (`make efficacy` writes them):

* required, on the ticket-routing shift: the loop promotes on at least 2 of seeds 0, 1 and 2, what is served after
  it recovers at least 50 % of the phase-B accuracy the drift cost, and no poisoned harvest is promoted;
* the aim, on both shifts and every seed: at least 80 % recovered, phase A at most 1 point below the incumbent and
  the battery at most 1 point below the base model (means over seeds), as served.

Every figure is of what production serves after the loop: the promoted adapter, or the incumbent when nothing was
promoted (0 % recovered). Exits 1 when a required goal is missed.

    python bench/efficacy_goals.py .bench/efficacy/*.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

INCUMBENT = "no retrain (incumbent)"


def _rate(row: dict | None, phase: str) -> float:
    acc = (row or {}).get(phase)
    return acc["rate"][0] if acc else math.nan


def served(rows: dict[str, dict], name: str) -> dict:
    """What production serves after ``name``'s loop: its adapter when promoted, else the incumbent."""
    row = rows[name]
    return row if row["decision"] in ("promoted", "baseline") else rows[INCUMBENT]


def loop_figures(run: dict) -> dict | None:
    rows = {r["name"]: r for r in run["rows"]}
    if "loop" not in rows or INCUMBENT not in rows:
        return None
    inc, now, base = rows[INCUMBENT], served(rows, "loop"), rows.get("base model")
    lost = _rate(inc, "phase_a") - _rate(inc, "phase_b")
    battery = (now.get("evaluation") or {}).get("battery_score", math.nan)
    base_battery = (now.get("evaluation") or {}).get("base_battery_score")  # on the same items (a review: half)
    if base_battery is None:
        base_battery = ((base or {}).get("evaluation") or {}).get("battery_score", math.nan)
    return {"shift": run.get("shift", "queues"), "seed": run["seed"], "decision": rows["loop"]["decision"],
            "recovered": (_rate(now, "phase_b") - _rate(inc, "phase_b")) / lost if lost > 0 else math.nan,
            "phase_a_vs_incumbent": _rate(now, "phase_a") - _rate(inc, "phase_a"),
            "battery_vs_base": battery - base_battery if now is not inc else math.nan,
            "decision_to_promotion_s": (rows["loop"].get("training") or {}).get("decision_to_promotion_s"),
            "poisoned_promoted": [n for n in rows if n.startswith("poisoned") and rows[n]["decision"] == "promoted"],
            "why": rows["loop"]["why"][:160]}


def main(paths: list[str]) -> int:
    figures = [f for f in (loop_figures(json.loads(Path(p).read_text())) for p in paths) if f]
    if not figures:
        print("no run with a loop row among", paths)
        return 2
    print("| shift | seed | decision | recovered (served) | phase A vs incumbent | battery vs base | drift decision → "
          "promotion | why |\n|---|---|---|---|---|---|---|---|")
    for f in sorted(figures, key=lambda f: (f["shift"], f["seed"])):
        took = f["decision_to_promotion_s"]
        print(f"| {f['shift']} | {f['seed']} | {f['decision']} | {f['recovered']:.0%} | {f['phase_a_vs_incumbent']:+.3f} "
              f"| {f['battery_vs_base']:+.3f} | {f'{took / 60:.1f} min' if took else '—'} | {f['why']} |")
    queues = [f for f in figures if f["shift"] == "queues" and f["seed"] in (0, 1, 2)]
    promoted = [f for f in queues if f["decision"] == "promoted" and f["recovered"] >= 0.5]
    poisoned = sorted({n for f in figures for n in f["poisoned_promoted"]})
    required = len(promoted) >= 2 and not poisoned
    print(f"\nrequired: the routing shift's loop promoted, recovering at least 50 %, on {len(promoted)} of "
          f"{len(queues)} seeds (2 of seeds 0-2 needed); poisoned harvests promoted: {poisoned or 'none'} — "
          f"{'MET' if required else 'MISSED'}")

    def mean(key: str, rows: list[dict]) -> float:
        values = [f[key] for f in rows if not math.isnan(f[key])]
        return sum(values) / len(values) if values else math.nan

    for shift in sorted({f["shift"] for f in figures}):
        rows = [f for f in figures if f["shift"] == shift]
        aim = (all(f["recovered"] >= 0.8 for f in rows) and mean("phase_a_vs_incumbent", rows) >= -0.01
               and mean("battery_vs_base", rows) >= -0.01)
        recovered = ", ".join(format(f["recovered"], ".0%") for f in rows)
        print(f"aim, {shift}: recovered {recovered} (80 % each), phase A vs "
              f"incumbent {mean('phase_a_vs_incumbent', rows):+.3f} (≥ -0.010), battery vs base "
              f"{mean('battery_vs_base', rows):+.3f} (≥ -0.010) — {'MET' if aim else 'missed'}")
    return 0 if required else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
