"""Candidate against incumbent, on the vLLM server that serves production, in one run.

Suites (the same prompts for both adapters, greedy, requests interleaved so that both see the same server load):

* **golden** — task accuracy on the held-out golden set (``retrain.golden_set``; each item's scoring, else
  ``evaluate.scoring``);
* **battery** — general knowledge shipped with driftwatch (``evaluate.battery``): catastrophic forgetting, against
  the incumbent and against the base model itself (an incumbent that already forgot is no excuse: forgetting
  compounds over retrains; the base model's answers are asked once per evaluator);
* **probes** — requests outside the tuned task (``evaluate.probes``): the share answered like the task (confusion);
* **diversity** — distinct-2 and mean pairwise similarity of an adapter's off-task outputs (battery and probes):
  modal collapse is answering everything alike; the task's own answers share a format by design, so the golden
  set's answers do not count here;
* **latency** — p50/p95 of the requests.

The promotion gate is a list of :class:`~driftwatch.evaluate.gates.Gate`, every one with value, bound, verdict and reason;
all must pass. **A review** judges a run's other candidates with it (its earlier checkpoints, its best interpolated
toward the incumbent: retrain/trainer.py): every candidate is ranked on one part of the golden set and the battery,
and the best is gated on the other part, held out from the choice (choosing among candidates on the items that gate
them would pick the luckiest; :func:`parts`). An evaluation that cannot finish (vLLM gone, an adapter missing) fails its gates — it never promotes.
The report is written as JSON and as a table (``<reports_dir>/<id>.json`` / ``.txt``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from driftwatch.config import Evaluate
from driftwatch.errors import ServingError
from driftwatch.evaluate import scoring
from driftwatch.evaluate.gates import Flips, Gate, all_pass
from driftwatch.evaluate.golden import GoldenItem, read_golden
from driftwatch.serving.vllm import VLLMClient

log = logging.getLogger(__name__)

SUITES = ("golden", "battery", "probes")
Index = dict[str, list[int]]  # the items of each suite an evaluation asks, by position
PROBE_GATES = ("distinct2_ratio", "self_similarity_delta", "confusion_delta")  # fed by the probes, asked in both parts


def parts(suites: dict[str, list[GoldenItem]], share: float = 0.5) -> tuple[Index, Index]:
    """A review's ranking part and held-out part of the golden set and the battery, by a stable hash of each prompt
    (the same split in every evaluation); the probes, 20 by default, are asked in both."""
    def held(item: GoldenItem) -> bool:
        return int(hashlib.sha256(item.prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share

    rank: Index = {s: [i for i, it in enumerate(suites[s]) if s == "probes" or not held(it)] for s in SUITES}
    gate: Index = {s: [i for i, it in enumerate(suites[s]) if s == "probes" or held(it)] for s in SUITES}
    return rank, gate


def reports_dir(cfg: Evaluate, state_dir: Path) -> Path:
    return cfg.reports_dir or state_dir / "evals"


def shipped(name: str) -> Path:
    return Path(str(resources.files("driftwatch") / "defaults" / "eval" / name))


@dataclass
class EvalReport:
    id: str
    at: float
    candidate: str
    incumbent: str
    passed: bool
    gates: list[Gate]
    metrics: dict[str, dict[str, float]]  # adapter -> metric -> value
    items: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str | None = None
    base: dict[str, Any] = field(default_factory=dict)  # {model, battery_score}: the forgetting floor

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "candidate": self.candidate, "incumbent": self.incumbent,
                "passed": self.passed, "error": self.error, "wall_s": round(self.wall_s, 3),
                "gates": [g.to_dict() for g in self.gates], "metrics": self.metrics, "base": self.base,
                "context": self.context, "items": self.items}

    def table(self) -> str:
        names = sorted({k for m in self.metrics.values() for k in m})
        width = max([len(n) for n in names] + [10])
        head = [f"evaluation {self.id}: candidate {self.candidate} vs incumbent {self.incumbent} — "
                f"{'PASSED' if self.passed else 'FAILED'}" + (f" ({self.error})" if self.error else ""), "",
                f"{'metric':<{width}}  {'candidate':>10}  {'incumbent':>10}"]
        rows = [f"{n:<{width}}  {self.metrics[self.candidate].get(n, math.nan):>10.4g}  "
                f"{self.metrics[self.incumbent].get(n, math.nan):>10.4g}" for n in names]
        review = self.context.get("review")
        ranked = ["", f"review: ranked on {review['ranked_on']}, gated on the held-out {review['gated_on']}"] + [
            f"  {c['candidate']}: golden {c['golden_score']:.3f}, battery {c['battery_score']:.3f}, "
            + ("passed" if c["passed"] else "failed " + ", ".join(c["failed"])) for c in review["candidates"]
        ] if review else []
        return "\n".join(head + rows + ranked + ["", "gate:"] + [f"  {g.line()}" for g in self.gates]) + "\n"

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_finite(self.to_dict()), indent=1, allow_nan=False))
        tmp.replace(path)
        path.with_suffix(".txt").write_text(self.table())
        return path


def _finite(value):
    """NaN and infinity (a metric with nothing to measure) as null: strict JSON for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class Evaluator:
    def __init__(self, cfg: Evaluate, client: VLLMClient, golden_set: Path, reports_dir: Path,
                 clock: Callable[[], float] = time.time, *, base: str | None = None) -> None:
        """``base``: the base model's served name (``gateway.base_model``): the battery's floor."""
        self.cfg, self.client, self.reports_dir, self.clock, self.base = cfg, client, reports_dir, clock, base
        self._base_battery: list[float] | None = None  # a model that does not change: asked once, scored per question
        self._base_lock = threading.Lock()
        self.suites: dict[str, list[GoldenItem]] = {
            "golden": read_golden(golden_set),
            "battery": read_golden(cfg.battery or shipped("battery.jsonl")),
            "probes": read_golden(cfg.probes or shipped("probes.jsonl"), expected=False),
        }

    def run(self, candidate: str, incumbent: str, *, eval_id: str | None = None,
            context: dict[str, Any] | None = None, cancel: threading.Event | None = None,
            siblings: tuple[str, ...] = ()) -> EvalReport:
        """Evaluate, gate, write the report. Never raises for what vLLM does: a failed run is a failed report. Set
        ``cancel`` to stop early (the requests not yet sent are not sent; the report fails). With ``siblings`` (the
        run's other candidates, served under those names), the review: the report's candidate is the one chosen."""
        started = self.clock()
        eval_id = eval_id or f"eval-{candidate}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}"
        t0 = time.perf_counter()
        cancel = cancel or threading.Event()
        context, every = dict(context or {}), {s: list(range(len(self.suites[s]))) for s in SUITES}
        idx, outputs, base = every, {}, math.nan
        try:
            if siblings:
                ranking, idx = parts(self.suites)
                candidate, context["review"] = self._review((candidate, *siblings), incumbent, ranking, idx, cancel)
            outputs = self._generate((candidate, incumbent), idx, cancel)
            metrics, gates, base = self._judge(outputs, candidate, incumbent, idx, cancel)
            error = None
        except Exception as exc:  # noqa: BLE001 - whatever happened, the report says so and nothing is promoted
            log.exception("evaluation %s could not be run", eval_id)
            outputs, metrics = {}, {candidate: {}, incumbent: {}}
            error = f"{type(exc).__name__}: {exc}"
            gates = [Gate("evaluation", math.nan, 0, "<=", error=error)]
        items = [{"suite": suite, "prompt": self.suites[suite][i].prompt,
                  "expected": list(self.suites[suite][i].answers),
                  **{role: outputs[a][suite][k] for role, a in (("candidate", candidate), ("incumbent", incumbent))}}
                 for suite in SUITES for k, i in enumerate(idx[suite])] if outputs else []
        report = EvalReport(eval_id, started, candidate, incumbent, all_pass(gates), gates, metrics, items,
                            context, time.perf_counter() - t0, error,
                            {"model": self.base, "battery_score": base} if self.base else {})
        report.write(self.reports_dir)
        log.info("evaluation %s: %s vs %s %s", eval_id, candidate, incumbent, "passed" if report.passed else "FAILED")
        return report

    def _judge(self, outputs: dict, candidate: str, incumbent: str, idx: Index,
               cancel: threading.Event) -> tuple[dict[str, dict[str, float]], list[Gate], float]:
        """Metrics of both, the gates, and the base model's battery score, on the items ``idx``."""
        metrics = {a: self._metrics(outputs[a], idx) for a in (candidate, incumbent)}
        battery = {a: self._battery(outputs[a], idx) for a in (candidate, incumbent)}
        full = self._base_battery_scores(cancel) if self.base not in battery else None
        base_battery = battery.get(self.base) or ([full[i] for i in idx["battery"]] if full else None)
        answered = [x for x in base_battery or () if x is not None]  # a missing answer fails request_errors
        base = sum(answered) / len(answered) if answered else math.nan
        flips = {"the incumbent": _flips(battery[incumbent], battery[candidate]),
                 "the base model": _flips(base_battery, battery[candidate]) if base_battery else None}
        diff = self._golden_diff(outputs, candidate, incumbent, idx)
        return metrics, self._gates(metrics[candidate], metrics[incumbent], diff, base, flips), base

    def _review(self, candidates: tuple[str, ...], incumbent: str, ranking: Index, held_out: Index,
                cancel: threading.Event) -> tuple[str, dict[str, Any]]:
        """Every candidate gated on the ranking part; the chosen: the best golden score among those that pass every
        gate there (else among all), then the better battery. The gates the probes feed (asked in both parts) do not
        rank: the held-out part's gate would see the same answers again. Returns the chosen and what the report says
        of the review."""
        outputs = self._generate((*candidates, incumbent), ranking, cancel)
        judged = []
        for c in candidates:
            metrics, gates, _ = self._judge(outputs, c, incumbent, ranking, cancel)
            ranked = [g for g in gates if g.name not in PROBE_GATES]
            judged.append({"candidate": c, "passed": all_pass(ranked), "golden_score": metrics[c]["golden_score"],
                           "battery_score": metrics[c]["battery_score"],
                           "failed": [g.name for g in ranked if not g.passed]})
        key = lambda j: (j["passed"], _num(j["golden_score"]), _num(j["battery_score"]))  # noqa: E731
        chosen = max(judged, key=key)["candidate"]
        log.info("review: %s chosen of %d candidates", chosen, len(candidates))
        return chosen, {"chosen": chosen, "ranked_on": _count(ranking), "gated_on": _count(held_out),
                        "candidates": judged}

    # -- generation -----------------------------------------------------------------------------------------------------
    def _ask(self, adapter: str, prompt: str, cancel: threading.Event) -> dict[str, Any]:
        if cancel.is_set():
            return {"text": None, "error": "cancelled"}
        messages = ([{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []) + [
            {"role": "user", "content": prompt}]
        try:
            g = self.client.chat(adapter, messages, max_tokens=self.cfg.max_tokens, temperature=0.0)
            return {"text": g.text, "latency_s": g.latency_s, "tokens_out": g.tokens_out}
        except ServingError as exc:
            return {"text": None, "error": str(exc)}

    def _generate(self, adapters: tuple[str, ...], idx: Index,
                  cancel: threading.Event) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Each adapter's answers to the items ``idx`` (in that order), the requests interleaved: the same item asked
        of every adapter together, in an order that rotates (none always goes first)."""
        jobs = []
        for suite in SUITES:
            for k, i in enumerate(idx[suite]):
                turn = k % len(adapters)
                jobs += [(adapter, suite, k, self.suites[suite][i].prompt)
                         for adapter in adapters[turn:] + adapters[:turn]]
        out = {a: {s: [None] * len(idx[s]) for s in SUITES} for a in adapters}
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            for (adapter, suite, k, _), answer in zip(jobs, pool.map(lambda j: self._ask(j[0], j[3], cancel), jobs)):
                out[adapter][suite][k] = answer
        return out

    def _base_battery_scores(self, cancel: threading.Event) -> list[float] | None:
        """The base model's battery, scored per question (None without a base model); asked once."""
        if self.base is None or self.cfg.gates.forgetting_base_max_drop is None:
            return None
        with self._base_lock:
            if self._base_battery is None:
                items = self.suites["battery"]
                with ThreadPoolExecutor(self.cfg.concurrency) as pool:
                    answers = list(pool.map(lambda it: self._ask(self.base, it.prompt, cancel), items))
                failed = [a["error"] for a in answers if a["text"] is None]
                if failed or not items:  # the gate says so ("no answers to score"); asked again next time
                    log.warning("the base model '%s' did not answer %d battery questions: %s", self.base,
                                len(failed), failed[0] if failed else "no battery")
                    return None
                self._base_battery = self._battery({"battery": answers}, {"battery": list(range(len(items)))})
            return self._base_battery

    def _items(self, suite: str, idx: Index) -> list[GoldenItem]:
        return [self.suites[suite][i] for i in idx[suite]]

    def _battery(self, outputs: dict[str, list[dict[str, Any]]], idx: Index) -> list[float | None]:
        """Each asked battery question's score; None where no answer came."""
        return [None if o["text"] is None else scoring.score(o["text"], item.answers, item.scoring or self.cfg.scoring)
                for item, o in zip(self._items("battery", idx), outputs["battery"])]

    # -- metrics and gate -----------------------------------------------------------------------------------------------
    def _metrics(self, outputs: dict[str, list[dict[str, Any]]], idx: Index) -> dict[str, float]:
        def texts(suite: str) -> list[str]:
            return [o["text"] for o in outputs[suite] if o["text"] is not None]

        def accuracy(suite: str) -> float:
            scores = [scoring.score(o["text"], item.answers, item.scoring or self.cfg.scoring)
                      for item, o in zip(self._items(suite, idx), outputs[suite]) if o["text"] is not None]
            return sum(scores) / len(scores) if scores else math.nan

        everything = [o for suite in SUITES for o in outputs[suite]]
        off_task = texts("battery") + texts("probes")
        latencies = [o["latency_s"] * 1000 for o in everything if o["text"] is not None]
        return {
            "golden_score": accuracy("golden"),
            "battery_score": accuracy("battery"),
            "confusion_rate": scoring.confusion_rate(texts("probes"), texts("golden"), self.cfg.confusion_similarity),
            "distinct_2": scoring.distinct_2(off_task),
            "self_similarity": scoring.self_similarity(off_task),
            "latency_p50_ms": scoring.percentile(latencies, 0.5),
            "latency_p95_ms": scoring.percentile(latencies, 0.95),
            "requests": float(len(everything)),
            "request_errors": float(sum(o["text"] is None for o in everything)),
        }

    def _golden_diff(self, outputs: dict, candidate: str, incumbent: str, idx: Index) -> tuple[float, float, int]:
        """The golden-set score difference, candidate minus incumbent, paired by item: (mean, 95 % half-width, n)."""
        diffs = []
        for k, item in enumerate(self._items("golden", idx)):
            c, n = outputs[candidate]["golden"][k], outputs[incumbent]["golden"][k]
            if c["text"] is not None and n["text"] is not None:
                how = item.scoring or self.cfg.scoring
                diffs.append(scoring.score(c["text"], item.answers, how) - scoring.score(n["text"], item.answers, how))
        if not diffs:
            return math.nan, math.nan, 0
        mean = sum(diffs) / len(diffs)
        var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) if len(diffs) > 1 else 0.0
        return mean, 1.96 * math.sqrt(var / len(diffs)), len(diffs)

    def _gates(self, cand: dict[str, float], inc: dict[str, float],
               diff: tuple[float, float, int] = (math.nan, math.nan, 0), base: float = math.nan,
               flips: dict[str, Flips | None] | None = None) -> list[Gate]:
        g = self.cfg.gates
        flips = flips or {}

        def gate(name: str, value: float, bound: float, op: str, detail: str) -> Gate:
            missing = math.isnan(value) or math.isnan(bound)
            return Gate(name, value, bound, op, detail, error="no answers to score" if missing else None)

        def forgetting(name: str, reference: str, score: float, bound: float) -> Gate:
            """The battery, paired: the drop in accuracy against ``bound``, and a significant loss fails too."""
            f = flips.get(reference)
            if f is None or not f.n:
                return gate(name, math.nan, bound, "<=", "")
            return Gate(name, f.drop, bound, "<=", f"general-knowledge battery: {reference} {score:.3f}, candidate "
                        f"{cand['battery_score']:.3f}; {f.describe(reference, g.forgetting_confidence)}, exact sign "
                        f"test", p_value=f.p_value(), alpha=1 - g.forgetting_confidence)

        d2_ratio = (cand["distinct_2"] / inc["distinct_2"] if inc["distinct_2"] > 0
                    else (math.inf if cand["distinct_2"] > 0 else 1.0))
        floor = [] if self.base is None or g.forgetting_base_max_drop is None else [
            forgetting("forgetting_base_drop", "the base model", base, g.forgetting_base_max_drop)]
        return [
            Gate("request_errors", cand["request_errors"] + inc["request_errors"], g.max_request_errors, "<=",
                 "evaluation requests that failed (either adapter)"),
            gate("golden_score", cand["golden_score"], g.golden_min, ">=", "candidate's golden-set score"),
            gate("golden_delta", cand["golden_score"] - inc["golden_score"], g.golden_min_delta, ">",
                 f"candidate {cand['golden_score']:.3f} vs incumbent {inc['golden_score']:.3f}; paired difference "
                 f"{diff[0]:+.3f} ± {diff[1]:.3f} (95 %, {diff[2]} items)"),
            forgetting("forgetting_drop", "the incumbent", inc["battery_score"], g.forgetting_max_drop),
            *floor,
            gate("distinct2_ratio", d2_ratio, g.distinct2_min_ratio, ">=",
                 f"distinct-2 candidate {cand['distinct_2']:.3f} / incumbent {inc['distinct_2']:.3f}"),
            gate("self_similarity_delta", cand["self_similarity"] - inc["self_similarity"],
                 g.self_similarity_max_delta, "<=",
                 f"mean pairwise similarity candidate {cand['self_similarity']:.3f} vs {inc['self_similarity']:.3f}"),
            gate("confusion_delta", cand["confusion_rate"] - inc["confusion_rate"], g.confusion_max_delta, "<=",
                 f"off-task probes answered like the task: candidate {cand['confusion_rate']:.2f}, "
                 f"incumbent {inc['confusion_rate']:.2f}"),
            gate("latency_p95_ms", cand["latency_p95_ms"], inc["latency_p95_ms"] * g.latency_p95_max_ratio
                 + g.latency_slack_ms, "<=", f"incumbent p95 {inc['latency_p95_ms']:.1f} ms"),
        ]


def _num(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


def _count(idx: Index) -> str:
    return ", ".join(f"{len(v)} {s}" for s, v in idx.items())


def _flips(reference: list[float | None], candidate: list[float | None]) -> Flips:
    """The battery's flips over the questions both answered."""
    both = [(r, c) for r, c in zip(reference, candidate) if r is not None and c is not None]
    return Flips.of([r for r, _ in both], [c for _, c in both])
