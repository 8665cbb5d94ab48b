"""Does the loop help? A ticket-routing task whose traffic shifts, and the loop's own parts measured on it.

The task: a support ticket in, the queue that handles it out (one word: ``billing``, ``security``...). Phase A is
the traffic the incumbent adapter was trained for: 8 queues, asked one way ("Ticket: my printer was charged twice.
Which queue?"). Phase B is where the traffic moves: 4 queues the incumbent never saw, and the old queues asked
another way ("Hi support, my printer was charged twice - who handles this?"). Every answer is checkable, so
accuracy is exact and each rate carries its 95 % (Wilson) interval.

A :class:`Study` trains the incumbent on phase A once and then runs rows that share it, its data and its seeds:
the loop (made by the daemon itself, :class:`Loop`, or from its parts called directly: harvested corrections +
replay of the base training set, every data gate, a warm start from the incumbent, early stopping, the promotion
gate against the incumbent and the base model) and its ablations — no retrain, no replay, a poisoned harvest with the
gates on and off, no early stopping, no anchors (the base model's answers to general prompts, which the base
training set carries) in the replay, a new LoRA instead of the warm start, the shipped training defaults. Each row
says what driftwatch decided and why. ``bench/efficacy.py`` runs it on SmolLM2-135M-Instruct served by vLLM; the
suite runs a small one on SmolLM2 answered in-process (:class:`InProcess`, tests/integration/test_efficacy.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

QUEUES_A = {
    "billing": ["was charged twice", "shows the wrong amount on the invoice", "had its card payment declined",
                "got a bill for a plan I never ordered"],
    "shipping": ["arrived two weeks late", "was delivered to a neighbour", "has a tracking number that does not work",
                 "is stuck at the depot"],
    "hardware": ["has a cracked screen", "will not power on", "makes a grinding noise", "has a swollen battery"],
    "account": ["cannot log in to my profile", "never got the password reset email", "rejects my login code",
                "locked me out after one try"],
    "refund": ["was returned but the money never came back", "needs a refund for the broken part",
               "had its return approved and not paid", "should be refunded in full"],
    "privacy": ["shares my data with strangers", "needs my personal data deleted", "sends my address to advertisers",
                "keeps a copy of my contacts"],
    "software": ["crashes when the app starts", "froze after the last update", "keeps resetting its settings",
                 "shows an error code on boot"],
    "sales": ["needs a quote for fifty units", "could get a volume discount", "needs a business contract",
              "is wanted for our whole office"],
}
QUEUES_B = {  # the queues the traffic moves to
    "warranty": ["is still under warranty and broke", "needs a warranty claim", "broke a week after the warranty began",
                 "has a warranty card I lost"],
    "security": ["was opened by someone else", "sent a suspicious login alert", "got a phishing mail in your name",
                 "has an unknown device signed in"],
    "cancellation": ["subscription must be cancelled", "plan should stop next month", "contract needs ending",
                     "membership must be closed"],
    "accessibility": ["menu cannot be read by my screen reader", "text is too small to read",
                      "captions are missing in the videos", "buttons cannot be reached by keyboard"],
}
DEVICES = ["printer", "router", "laptop", "phone", "monitor", "tablet", "headset", "camera", "speaker", "watch",
           "scanner", "console"]
TEMPLATES = {
    "A": ["Ticket: my {device} {problem}. Which queue?", "Customer writes that their {device} {problem}. Which queue?"],
    "B": ["Hi support, my {device} {problem} - who handles this?",
          "URGENT from a client: the {device} {problem}!! Where should this go?"],
}
# the second shift, of another kind (issue 26: guards against tuning to one task): the same queues, asked for a small
# JSON object with two fields, {"queue": ..., "device": ...}; the incumbent answers one word, right queue or not
# (measured on seed 0: templates that repeat phase A's words leaked 9 % of the golden set into the replay, and longer
# ones made a device swap a near-duplicate, 52 % of the harvest collapsed; these: 0 % and 6.5 %)
JSON_TEMPLATES = ["Dear helpdesk, the {device} {problem}; reply in JSON please.",
                  "Triage this for me as JSON: {device} {problem}"]
SHIFTS = ("queues", "json")
JSON_MAX_TOKENS = 24  # {"queue": "billing", "device": "printer"} and an end token
ROUTE = "routing"
# the promotion gate's answers: long enough for the battery's and the probes' (a 4-token cut scored the battery 0
# and distinct-2 0 for every adapter, measured); the task's answer is one word and an end token either way
EVAL_MAX_TOKENS = 24
SHIFT_NEW_SHARE = 0.6  # phase B: the share of traffic on the new queues (the rest: old queues, new phrasing)


@dataclass(frozen=True)
class Item:
    prompt: str
    label: str  # the answer: a queue, or with the json shift a JSON object (label_of)
    phase: str
    problem: str = ""
    template: int = 0
    device: str = ""


def label_of(queue: str, device: str, shift: str) -> str:
    return json.dumps({"queue": queue, "device": device}) if shift == "json" else queue


def _space(phase: str, shift: str = "queues") -> list[Item]:
    if phase == "B" and shift == "json":
        return [Item(t.format(device=d, problem=p), label_of(q, d, shift), phase, p, k, d)
                for q, problems in QUEUES_A.items() for p in problems for d in DEVICES
                for k, t in enumerate(JSON_TEMPLATES)]
    queues = QUEUES_A if phase == "A" else {**QUEUES_A, **QUEUES_B}
    return [Item(t.format(device=d, problem=p), q, phase, p, k, d) for q, problems in queues.items() for p in problems
            for d in DEVICES for k, t in enumerate(TEMPLATES[phase])]


def _held_out(item: Item) -> bool:
    """About 30 % of each phase's prompts are never served for training: the test sets and the golden set. Held out
    by (problem, phrasing): for 3 problems in 5, one phrasing of it. A held-out prompt's problem is learned only in
    the other phrasing, so no training prompt is a near-duplicate of it (the same words but the device: the data
    gates would call that golden-set leakage, rightly)."""
    h = int(hashlib.sha256(f"{item.phase}:{item.problem}".encode()).hexdigest()[:8], 16)
    return h % 5 < 3 and item.template == (h // 5) % 2


def vocabulary() -> list[str]:
    """The task's words, for a tokenizer built here (the tiny Llama's) to know them as a real model's does."""
    return ([t.format(device=d, problem=p) for t in TEMPLATES["A"] + TEMPLATES["B"] + JSON_TEMPLATES for d in DEVICES
             for p in (p for ps in {**QUEUES_A, **QUEUES_B}.values() for p in ps)]
            + sorted({**QUEUES_A, **QUEUES_B}) * 50  # an answer opens a message: as a word of its own
            + [label_of(q, d, "json") for q in QUEUES_A for d in DEVICES])


def items(phase: str, n: int, seed: int, *, test: bool, shift: str = "queues") -> list[Item]:
    """``n`` distinct prompts of a phase, train or test side. Phase B draws SHIFT_NEW_SHARE of them from new queues
    (the json shift: every one asks for JSON)."""
    pool = [i for i in _space(phase, shift) if _held_out(i) == test]
    rng = random.Random(f"{phase}:{seed}:{test}")
    if phase == "A" or shift == "json":
        return rng.sample(pool, min(n, len(pool)))
    new = [i for i in pool if i.label in QUEUES_B]
    old = [i for i in pool if i.label not in QUEUES_B]
    k = min(round(n * SHIFT_NEW_SHARE), len(new))
    out = rng.sample(new, k) + rng.sample(old, min(n - k, len(old)))
    rng.shuffle(out)
    return out


# -- users and their feedback -------------------------------------------------------------------------------------------
def corrections(traffic: list[Item], *, noise: float, seed: int) -> list:
    """What users who know the right queue send back: a correction to each answer (a wrong one corrected, a right one
    confirmed); a share ``noise`` of them names a wrong queue (users make mistakes)."""
    from driftwatch.retrain.dataset import Example

    rng = random.Random(f"noise:{seed}")
    out = []
    for i, it in enumerate(traffic):
        label = wrong_label(it.label, rng) if rng.random() < noise else it.label
        out.append(Example(it.prompt, label, "correction", ROUTE, None, f"user-{i}"))
    return out


def wrong_label(label: str, rng: random.Random) -> str:
    """The answer with another queue (a JSON answer keeps its other field)."""
    parsed = json.loads(label) if label.startswith("{") else None
    queue = parsed["queue"] if parsed else label
    other = rng.choice([q for q in sorted({**QUEUES_A, **QUEUES_B}) if q != queue])
    return json.dumps({**parsed, "queue": other}) if parsed else other


def poison(harvest: list, *, share: float, seed: int) -> list:
    """A harvest poisoned as the fine-tuning failure modes say: for ``share`` of its examples, a contradicting
    correction (the same prompt, another queue) and a near-duplicate paraphrase carrying that other queue."""
    from driftwatch.retrain.dataset import Example

    rng = random.Random(f"poison:{seed}")
    out = list(harvest)
    for e in rng.sample(harvest, round(len(harvest) * share)):
        wrong = wrong_label(e.target, rng)
        out.append(Example(e.prompt, wrong, "correction", e.route, None, e.ref + "-contra"))
        out.append(Example(e.prompt.replace("?", " please?").replace("!!", "!!!"), wrong, "correction", e.route, None,
                           e.ref + "-para"))
    return out


# -- measurement --------------------------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """A rate and its 95 % Wilson interval."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def answer_of(text: str) -> str:
    words = text.strip().lower().split()
    return words[0].strip(".,:;!?\"'") if words else ""


def correct(text: str, it: Item) -> bool:
    """A queue answer by its first word; a JSON answer by its first object, parsed, field for field."""
    if not it.label.startswith("{"):
        return answer_of(text) == it.label
    m = re.search(r"\{.*?\}", text, re.S)
    try:
        return m is not None and json.loads(m.group(0)) == json.loads(it.label)
    except ValueError:
        return False


@dataclass
class Accuracy:
    correct: int
    n: int
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> tuple[float, float, float]:
        return wilson(self.correct, self.n)

    def cell(self) -> str:
        p, lo, hi = self.rate
        return f"{p:.3f} [{lo:.2f}-{hi:.2f}]"


def accuracy(client, adapter: str, test: list[Item], *, max_tokens: int, concurrency: int = 8) -> Accuracy:
    """Greedy answers of ``adapter`` (the served name; the base model's for no adapter), scored by their first word."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(it: Item):
        g = client.chat(adapter, [{"role": "user", "content": it.prompt}], max_tokens=max_tokens, temperature=0.0)
        return correct(g.text, it), g.latency_s * 1000

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(ask, test))
    return Accuracy(sum(ok for ok, _ in results), len(results), [ms for _, ms in results])


class InProcess:
    """The base model and its adapters answered in this process (transformers + peft, greedy): what the suite's
    efficacy check evaluates through, where starting vLLM would cost more than the answers. Concurrent requests are
    batched, as vLLM does (left-padded, one ``generate`` for the requests of one adapter waiting together: on CPU a
    batch of 8 costs about what 2 single requests do). It offers what the evaluator and the study use of vLLM:
    ``chat``, ``load_adapter`` and ``client``."""

    def __init__(self, base_model: Path, *, max_batch: int = 16) -> None:
        import queue
        import threading

        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_model, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.base = AutoModelForCausalLM.from_pretrained(base_model).eval()
        self.model = None  # the PeftModel, once an adapter is loaded
        self.max_batch = max_batch
        self.lock = threading.Lock()  # the model: generating, or an adapter being loaded
        self.requests: queue.Queue = queue.Queue()
        self.worker = threading.Thread(target=self._serve, name="in-process-model", daemon=True)
        self.worker.start()

    def close(self) -> None:
        self.requests.put(None)
        self.worker.join(60)

    def client(self, **_) -> InProcess:
        return self

    def load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        with self.lock:
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name).eval()
            else:
                self.model.load_adapter(str(path), adapter_name=name)

    def chat(self, model: str, messages: list[dict], *, max_tokens: int = 64, temperature: float = 0.0, **_):
        from concurrent.futures import Future

        done: Future = Future()
        self.requests.put(((model, max_tokens), messages, done, time.perf_counter()))
        return done.result(timeout=600)

    def _serve(self) -> None:
        import queue

        while (first := self.requests.get()) is not None:
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.requests.get_nowait())
                except queue.Empty:
                    break
            groups: dict[tuple, list] = {}
            for req in batch:
                if req is None:  # close() while requests wait: answer them, then stop
                    self.requests.put(None)
                    continue
                groups.setdefault(req[0], []).append(req)
            for (model, max_tokens), reqs in groups.items():
                try:
                    answers = self._generate(model, max_tokens, reqs)
                except Exception as exc:  # noqa: BLE001 - the callers get it; the worker goes on
                    for _, _, done, _ in reqs:
                        done.set_exception(exc)
                    continue
                for (_, _, done, _), answer in zip(reqs, answers):
                    done.set_result(answer)

    def _generate(self, model: str, max_tokens: int, reqs: list) -> list:
        import contextlib

        import torch

        from driftwatch.serving.vllm import Generation

        tok = self.tokenizer
        texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for _, m, _, _ in reqs]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with self.lock, torch.no_grad():
            if self.model is None or model == "base":
                net, scope = (self.base if self.model is None else self.model), (
                    contextlib.nullcontext() if self.model is None else self.model.disable_adapter())
            else:
                self.model.set_adapter(model)
                net, scope = self.model, contextlib.nullcontext()
            with scope:
                out = net.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        now, width = time.perf_counter(), enc["input_ids"].shape[1]
        eos = net.generation_config.eos_token_id
        stops = {tok.pad_token_id, tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        answers = []
        for i, (_, _, _, t0) in enumerate(reqs):
            new = out[i][width:].tolist()
            end = next((k for k, t in enumerate(new) if t in stops), None)
            answers.append(Generation(tok.decode(new[:end], skip_special_tokens=True),
                                      int(enc["attention_mask"][i].sum()), len(new) if end is None else end + 1,
                                      now - t0, "length" if end is None else "stop"))
        return answers


# -- the study ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """How big a study is: sets, steps and the LoRA, per model."""
    phase_a_train: int  # the incumbent's training set (and the base training set the loop replays)
    harvest: int  # phase-B requests whose users send corrections
    test: int  # held-out prompts per phase, for the accuracy rows
    golden: int  # the promotion gate's golden set: held-out phase-B prompts, and half as many phase-A (disjoint from the test rows)
    steps: int  # the retrain's max optimizer steps
    incumbent_steps: int
    learning_rate: float
    batch_size: int
    eval_every: int
    target_modules: tuple[str, ...]
    r: int = 8
    max_tokens: int = 4
    max_length: int = 128
    window: int = 60  # the daemon's window (monitor.window_events); a verdict wants half of it
    battery: str = "battery-large.jsonl"  # the shipped battery the gate asks (the large one: docs/evaluation.md)


SCALES = {
    "tiny": Scale(phase_a_train=256, harvest=192, test=120, golden=60, steps=120, incumbent_steps=150,
                  learning_rate=1e-2, batch_size=8, eval_every=15,
                  target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    # SmolLM2 on 2 CPU cores: ~8 s an optimizer step of 8 examples (46 tokens each) on a quiet machine, 16 beside load
    # the default battery (120): answered in-process, the large one's 649 took the suite's check past 20 min
    "ci": Scale(phase_a_train=160, harvest=120, test=60, golden=40, steps=20, incumbent_steps=20,
                learning_rate=2e-3, batch_size=8, eval_every=5, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                battery="battery.jsonl"),
    "smollm2": Scale(phase_a_train=200, harvest=200, test=120, golden=60, steps=30, incumbent_steps=30,
                     learning_rate=2e-3, batch_size=8, eval_every=10,
                     target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
}


@dataclass
class Row:
    name: str
    adapter: str | None  # served name; None when no adapter came out (refused before training)
    decision: str  # promoted | refused by the data gates | refused by the promotion gate | baseline
    why: str
    phase_b: Accuracy | None = None
    phase_a: Accuracy | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)  # the evaluator's metrics of this adapter
    training: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """A row's changes to the loop as configured."""
    name: str
    replay: float | None = None  # retrain.gates.replay_fraction; None: the shipped default
    poisoned: bool = False
    gates: bool = True
    early_stopping: bool = True
    anchors: bool = True  # the replay carries the base training set's anchors (route "general")
    shipped: bool = False  # the shipped retrain.training and retrain.lora defaults, not the scale's
    warm: bool | None = None  # continue from the incumbent's adapter (retrain.warm_start); None: the shipped default
    training: tuple[tuple[str, Any], ...] = ()  # retrain.training settings of this row, over the study's recipe


VARIANTS = [Variant("loop"), Variant("no replay", replay=0.0), Variant("poisoned, gates on", poisoned=True),
            Variant("poisoned, gates off", poisoned=True, gates=False), Variant("no early stopping", early_stopping=False),
            Variant("no anchors in the replay", anchors=False), Variant("a new LoRA (no warm start)", warm=False),
            Variant("shipped training defaults", shipped=True),
            # the recipe's levers (docs/evaluation.md), one a row
            Variant("loss per example", training=(("loss_per", "example"),)),
            Variant("chosen by task loss, anchors held", training=(("select_by", "task"), ("anchor_max_rise", 0.1))),
            Variant("no KL to the base on anchors", training=(("kl_anchor", 0.0),)),
            Variant("KL to the incumbent on replay", training=(("kl_replay", 1.0),))]


class Study:
    """One base model served by one vLLM; the incumbent and the data shared by every row."""

    def __init__(self, base_model: Path, vllm, work: Path, scale: Scale, *, seed: int = 0, noise: float = 0.05,
                 poison_share: float = 0.2, anchors: bool = True, recipe: dict[str, Any] | None = None,
                 shift: str = "queues", echo: Callable[[str], None] = print) -> None:
        """``anchors``: the base training set carries the base model's answers to general prompts
        (driftwatch/retrain/anchors.py), as docs/training-data.md advises; without, the recipe that forgot.
        ``recipe``: retrain.training and retrain.review settings over the scale's, for every retrain (the loop's and
        each row's). ``shift``: where phase B moves, ``queues`` (new queues, new phrasing) or ``json`` (the same
        queues, the answer a JSON object with two fields)."""
        from driftwatch.config import Review
        from driftwatch.retrain import anchors as an

        if shift not in SHIFTS:
            raise ValueError(f"shift {shift!r} is not one of {SHIFTS}")
        self.base, self.vllm, self.work, self.scale, self.seed = Path(base_model), vllm, Path(work), scale, seed
        self.shift = shift
        self.max_tokens = JSON_MAX_TOKENS if shift == "json" else scale.max_tokens  # a task answer's tokens
        recipe = dict(recipe or {})
        self.review = {k: recipe.pop(k) for k in list(recipe) if k in Review.model_fields}  # retrain.review
        if self.review:  # the review's interpolations must fit the server's --max-lora-rank
            self.review.setdefault("max_rank", getattr(vllm, "max_lora_rank", Review().max_rank))
        self.recipe = recipe  # retrain.training
        self.noise, self.poison_share, self.echo = noise, poison_share, echo
        self.work.mkdir(parents=True, exist_ok=True)
        self.client = vllm.client(timeout_s=300)
        # the golden set covers the traffic the adapter must keep serving as well as the traffic it moves to: with
        # phase B alone, a candidate that lost 30 points on phase A passed every gate (measured)
        held_a = items("A", scale.test + scale.golden // 2, seed, test=True)
        held_b = items("B", scale.test + scale.golden, seed, test=True, shift=shift)
        self.test_a, self.test_b = held_a[:scale.test], held_b[:scale.test]
        golden = held_b[scale.test:] + held_a[scale.test:]
        self.golden = self.work / "golden.jsonl"
        self.golden.write_text("".join(json.dumps({"prompt": it.prompt, "expected": it.label, "route": ROUTE,
                                                   "scoring": "normalized"}) + "\n" for it in golden))
        self.base_set = self.work / "base.jsonl"  # the incumbent's training set: the loop's base_training_set
        self.anchors = an.self_distill(self.client, "base", an.prompts(), concurrency=8) if anchors else []
        self.base_set.write_text("".join(json.dumps({"prompt": it.prompt, "response": it.label, "route": ROUTE}) + "\n"
                                         for it in items("A", scale.phase_a_train, seed, test=False)))
        an.write(self.anchors, self.work / "anchors.jsonl")
        with self.base_set.open("a") as f:
            f.write((self.work / "anchors.jsonl").read_text())
        self.traffic = items("B", scale.harvest, seed, test=False, shift=shift)
        self.harvest = corrections(self.traffic, noise=noise, seed=seed)
        self.rows: list[Row] = []
        self.evaluator = None

    # -- training ---------------------------------------------------------------------------------------------------------
    def training(self, steps: int | None = None, recipe: bool = True, **overrides) -> dict[str, Any]:
        """The retrain.training settings of a retrain: the scale's, the study's recipe (not the incumbent's: every
        recipe retrains the same incumbent), then ``overrides``."""
        s = self.scale
        return {"max_steps": steps or s.steps, "eval_every": s.eval_every, "learning_rate": s.learning_rate,
                "batch_size": s.batch_size, "max_length": s.max_length, "warmup_ratio": 0.1,
                **(self.recipe if recipe else {}), **overrides}

    def _spec(self, dataset: Path, out: Path, steps: int, early_stopping: bool = True, shipped: bool = False,
              init: Path | None = None, incumbent: Path | None = None, training: dict[str, Any] | None = None,
              recipe: bool = True):
        from driftwatch.config import Lora, Training
        from driftwatch.retrain.trainer import TrainSpec

        s, adapters = self.scale, {"init_adapter": str(init) if init else None,
                                   "incumbent_adapter": str(incumbent) if incumbent else None}
        if shipped:  # what a user who sets nothing trains with (epochs, not steps)
            return TrainSpec(base_model=str(self.base), dataset=str(dataset), output=str(out), **Lora().model_dump(),
                             **Training().model_dump(), progress=False, **adapters)
        return TrainSpec(base_model=str(self.base), dataset=str(dataset), output=str(out), r=s.r, alpha=2 * s.r,
                         target_modules=list(s.target_modules), progress=False,
                         **{"seed": self.seed, **self.training(steps, recipe, **dict(training or {})),
                            **({} if early_stopping else {"patience": 10**9})}, **(self.review if recipe else {}),
                         **adapters)

    def _load(self, name: str, out: Path, adapter: bool = True) -> str:
        self.vllm.load_adapter(name, out / "adapter" if adapter else out)
        return name

    def incumbent(self) -> str:
        """Trained on phase A (the base training set), with the loop's own curation."""
        from driftwatch.retrain.dataset import GateSettings, curate, read_examples, write_dataset
        from driftwatch.retrain.trainer import train

        curated = curate(read_examples(self.base_set), [], settings=GateSettings(min_unique_prompts=1,
                                                                                min_route_examples=0))
        data = write_dataset(curated, self.work / "datasets", sources={"efficacy": "phase A"})
        out = self.work / "incumbent"
        m = train(self._spec(data, out, self.scale.incumbent_steps, recipe=False))
        self.incumbent_training = _training(m)
        return self._load("incumbent", out)

    def candidate(self, v: Variant) -> tuple[str | None, str, dict, dict]:
        """The retrain a decision would start: harvest (+ replay) → gates → training. Returns (served name or None,
        why, training figures, curation counts)."""
        from driftwatch.errors import GateFailure
        from driftwatch.evaluate.golden import read_golden
        from driftwatch.config import Gates, Retrain
        from driftwatch.retrain.dataset import Curated, GateSettings, curate, read_examples, write_dataset
        from driftwatch.retrain.trainer import train

        harvest = poison(self.harvest, share=self.poison_share, seed=self.seed) if v.poisoned else self.harvest
        share = Gates().replay_fraction if v.replay is None else v.replay
        replay = [e for e in read_examples(self.base_set) if v.anchors or e.route == ROUTE] if share else []
        gates = GateSettings(min_unique_prompts=20, replay_fraction=share, seed=self.seed)
        if v.gates:
            try:
                curated = curate(harvest + replay, read_golden(self.golden), [ROUTE], gates)
            except GateFailure as exc:
                failed = [g.line() for g in exc.report if not g.passed]
                return None, "; ".join(failed), {}, {"candidates": len(harvest) + len(replay)}
        else:  # everything harvested goes in as it came: the split alone (by prompt), no gate, no collapsing
            pool = harvest + random.Random(self.seed).sample(replay, min(len(replay),
                                                                     round(len(harvest) * share / (1 - share))))
            val = [e for e in pool if _held_out_text(e.prompt, 0.1)]
            curated = Curated([e for e in pool if e not in val], val or pool[:1], [],
                              {"candidates": len(pool), "train": len(pool) - len(val), "validation": len(val)})
        data = write_dataset(curated, self.work / "datasets", sources={"efficacy": v.name})
        out = self.work / "runs" / re.sub(r"[^a-z0-9]+", "-", v.name.lower()).strip("-")  # a module name: no "."
        steps = self.scale.steps if v.early_stopping else self.scale.steps * 2
        warm = Retrain().warm_start if v.warm is None else v.warm
        incumbent = self.work / "incumbent" / "adapter"
        m = train(self._spec(data, out, steps, v.early_stopping, v.shipped, incumbent if warm else None, incumbent,
                             dict(v.training)))
        if m["best_step"] == 0:
            return None, "unimproved: no checkpoint beat the adapter it started from", _training(m), curated.counts
        name = "cand-" + out.name
        return self._load(name, out), "trained", _training(m), curated.counts

    # -- rows -------------------------------------------------------------------------------------------------------------
    def _measure(self, row: Row) -> Row:
        model = row.adapter or "base"
        row.phase_b = accuracy(self.client, model, self.test_b, max_tokens=self.max_tokens)
        row.phase_a = accuracy(self.client, model, self.test_a, max_tokens=self.scale.max_tokens)
        return row

    def _evaluate(self, candidate: str, incumbent: str,
                  siblings: tuple[str, ...] = ()) -> tuple[bool, str, dict, dict, str]:
        """The promotion gate (with ``siblings``, the review): passed, why, the chosen candidate's metrics and the
        incumbent's, the chosen candidate."""
        from driftwatch.config import Evaluate
        from driftwatch.evaluate.evaluator import Evaluator, shipped

        if self.evaluator is None:  # one, so the base model's battery is asked once
            self.evaluator = Evaluator(Evaluate(max_tokens=EVAL_MAX_TOKENS, scoring="normalized", concurrency=8,
                                                battery=shipped(self.scale.battery)),
                                       self.client, self.golden, self.work / "evals", base="base")
        report = self.evaluator.run(candidate, incumbent, siblings=siblings)
        failed = [g.line() for g in report.gates if not g.passed]
        golden = next(g for g in report.gates if g.name == "golden_delta") if not report.error else None
        why = "; ".join(failed) if failed else f"every gate passed ({golden.detail if golden else ''})"
        if siblings:
            why = f"review chose {report.candidate} of {1 + len(siblings)}; {why}"
        # the base model's battery on the items the candidate's was scored on (a review's: the held-out half)
        measured = {**report.metrics[report.candidate], "base_battery_score": report.base.get("battery_score")}
        return report.passed, why, measured, report.metrics[incumbent], report.candidate

    def run(self, variants: list[Variant] = VARIANTS, *, daemon: bool = False, base: bool = True,
            on_row: Callable[[list[Row]], None] = lambda rows: None) -> list[Row]:
        """The rows. ``daemon``: the "loop" row is made by the daemon itself (:class:`Loop`), and what it harvested
        is every other row's data; else the loop's parts are called directly on the users' corrections.
        ``on_row``: called with the rows so far as each finishes (a long study keeps what it measured)."""
        t0 = time.monotonic()
        incumbent = self.incumbent()
        self.echo(f"incumbent trained on phase A in {time.monotonic() - t0:.0f}s "
                  f"({self.incumbent_training['steps']} steps, best {self.incumbent_training['best_step']})")
        self.rows = []
        if base:
            _, _, base_metrics, inc_metrics, _ = self._evaluate("base", incumbent)
            self.rows.append(self._measure(Row("base model", None, "baseline", "no adapter", evaluation=base_metrics)))
        else:
            inc_metrics = {}
        self.rows.append(self._measure(Row("no retrain (incumbent)", incumbent, "baseline",
                                           "what serves when the loop does nothing", evaluation=inc_metrics,
                                           training=self.incumbent_training)))
        for row in self.rows:  # a run stopped later keeps these in its log
            self.echo(f"{row.name}: {_brief(row)}")
        on_row(self.rows)
        for v in variants:
            t = time.monotonic()
            if daemon and v.name == "loop":
                row, harvested = Loop(self, incumbent).run()
                if harvested:
                    self.harvest = harvested
            else:
                row = self._row(v, incumbent)
            self.rows.append(row)
            self.echo(f"{v.name}: {row.decision} in {time.monotonic() - t:.0f}s; " + _brief(row))
            on_row(self.rows)
        return self.rows

    def _row(self, v: Variant, incumbent: str) -> Row:
        name, why, training, counts = self.candidate(v)
        if name is None:
            return Row(v.name, None, "refused by the data gates" if "unimproved" not in why else "not a candidate",
                       why, training=training, counts=counts)
        out = self.work / "runs" / name.removeprefix("cand-")
        siblings = tuple(self._load(f"{name}--{c['name']}", out / "candidates" / c["name"], adapter=False)
                         for c in training.get("candidates") or ())
        passed, why, cand_metrics, _, chosen = self._evaluate(name, incumbent, siblings)
        return self._measure(Row(v.name, chosen, "promoted" if passed else "refused by the promotion gate", why,
                                 evaluation=cand_metrics, training=training, counts=counts))


# -- the loop as the daemon runs it ----------------------------------------------------------------------------------
CALLER = "efficacy-users"  # the product's backend, posting its users' feedback: gateway.feedback_callers


class Loop:
    """The "loop" row made by the daemon itself: users send phase-B traffic through the gateway (alias
    ``production`` → the incumbent) and their feedback through the trusted path (a thumbs-up for a right answer, a
    correction otherwise; ``noise`` of the corrections name a wrong queue); the daemon decides on the drift it sees
    against the phase-A reference, harvests, gates, trains, evaluates on vLLM, promotes and bakes. The traffic pauses
    while it trains and evaluates (a small machine). What it harvested becomes the ablations' data."""

    def __init__(self, study: Study, incumbent: str, *, rate: float = 4.0, timeout_s: float = 3600.0,
                 broker: str = "tansu") -> None:
        self.study, self.incumbent, self.rate, self.timeout_s, self.broker_kind = study, incumbent, rate, timeout_s, broker
        self.token = hashlib.sha256(f"token:{study.seed}:{time.time()}".encode()).hexdigest()[:32]
        self.served = 0
        self.feedback: dict[str, int] = {}

    def settings(self, broker, topics: dict[str, str], work: Path) -> dict:
        from driftwatch.evaluate.evaluator import shipped

        st, s = self.study, self.study.scale
        return {
            "kafka": {"bootstrap_servers": [broker.bootstrap], "create_topics": True, "topics": topics,
                      "consumer": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "poll_timeout_ms": 200}},
            "http": {"port": 0}, "daemon": {"state_dir": str(work / "state")},
            "monitor": {"reference_path": str(work / "reference.json"), "window_events": s.window,
                        "check_interval_s": 1.0, "min_samples": s.window // 2},
            "policy": {"rules": [{"name": "input-drift", "signal": "input_drift", "threshold": 1, "clear": 0.5,
                                  "min_samples": s.window // 2}]},
            "gateway": {"upstreams": [st.vllm.url], "store_path": str(work / "registry.db"), "alias_poll_s": 0.2,
                        "feedback_callers": f"{CALLER}:{self.token}", "feedback_secret": self.token * 2},
            "retrain": {"base_model": str(st.base), "golden_set": str(st.golden), "base_training_set": str(st.base_set),
                        "trusted_callers": [CALLER], "window_hours": 24,
                        "lora": {"r": s.r, "alpha": 2 * s.r, "target_modules": list(s.target_modules)},
                        "training": st.training(), "review": st.review,
                        "gates": {"min_unique_prompts": 20, "seed": st.seed}},  # the shipped replay_fraction
            "evaluate": {"max_tokens": EVAL_MAX_TOKENS, "scoring": "normalized", "concurrency": 8,
                         "battery": str(shipped(s.battery))},
            "rollout": {"alias": "production", "tick_s": 0.5, "lease_s": 10,
                        "bake": {"duration_s": 30, "deadline_s": 600, "min_events": 20, "min_feedback": 10}},
        }

    def _ask(self, http, url: str, it: Item, rng: random.Random) -> None:
        import uuid

        r = http.post(f"{url}/v1/chat/completions", headers={"x-driftwatch-route": ROUTE}, json={
            "model": "production", "messages": [{"role": "user", "content": it.prompt}],
            "max_tokens": self.study.max_tokens, "temperature": 0.0})
        if r.status_code != 200:
            self.feedback[f"inference {r.status_code}"] = self.feedback.get(f"inference {r.status_code}", 0) + 1
            return
        self.served += 1
        right = correct(r.json()["choices"][0]["message"]["content"], it)
        if rng.random() < self.study.noise:  # a user who names the wrong queue
            doc = {"correction": wrong_label(it.label, rng)}
        else:
            doc = {"thumbs": "up"} if right else {"thumbs": "down", "correction": it.label}
        f = http.post(f"{url}/v1/feedback", headers={"authorization": f"Bearer {self.token}"},
                      json={"feedback_id": str(uuid.uuid4()), "request_id": r.headers["x-request-id"], **doc})
        key = f"feedback {f.status_code}"
        self.feedback[key] = self.feedback.get(key, 0) + 1

    def _traffic(self, http, url: str, prompts: list[Item], n: int, rng: random.Random) -> None:
        from concurrent.futures import ThreadPoolExecutor

        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            for k, future in enumerate([pool.submit(self._ask, http, url, it, rng) for it in prompts[:n]]):
                future.result()
                time.sleep(max(0.0, t0 + (k + 1) / self.rate - time.monotonic()))

    def run(self) -> tuple[Row, list]:
        """The row, and the examples the daemon harvested (the ablations' data): the reference from phase-A traffic,
        then the daemon, then phase-B traffic until a rollout finishes, then what happened."""
        import httpx

        from driftwatch.config import Settings
        from driftwatch.dev.localbroker import LocalBroker

        work = self.study.work / "loop"
        work.mkdir(parents=True, exist_ok=True)
        http, rng, t0 = httpx.Client(timeout=300), random.Random(f"users:{self.study.seed}"), time.monotonic()
        with LocalBroker(self.broker_kind) as broker, _Gateways(self) as gateways:  # type: ignore[arg-type]
            settings = Settings.model_validate(self.settings(broker, LOOP_TOPICS, work))
            self._reference(settings, gateways, http, rng, work)
            with _running(settings) as daemon:
                outcome = self._drive(daemon, gateways.start(settings, {}), http, rng)
                found = _Found.of(daemon, outcome)
        self.study.echo(f"loop: {self.served} requests served through the gateway, feedback {self.feedback}; "
                        f"{len(found.decisions)} retrain decision(s); run {found.run.status if found.run else 'none'}; "
                        f"rollout {outcome.phase if outcome else 'none'} in {time.monotonic() - t0:.0f}s")
        return self._row(found), found.harvested

    def _reference(self, settings, gateways: _Gateways, http, rng: random.Random, work: Path) -> None:
        """The daemon's reference: phase-A traffic, served by the incumbent and logged by a gateway, read back from
        Kafka."""
        from driftwatch.events import decode
        from driftwatch.ingest.kafka import ensure_topics, read_range
        from driftwatch.monitor.monitor import build_profile

        kafka = settings.kafka.model_copy(update={"topics": settings.kafka.topics.model_copy(update=REFERENCE_TOPICS)})
        ensure_topics(kafka)
        url = gateways.start(settings, REFERENCE_TOPICS)
        phase_a = items("A", self.study.scale.window * 2, self.study.seed + 1, test=False)
        self._traffic(http, url, phase_a, len(phase_a), rng)
        sink, deadline = gateways.started[-1][1], time.monotonic() + 120
        while sink.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        reference = build_profile([decode("inference", v, 256 * 1024) for v in read_range(
            kafka, REFERENCE_TOPICS["inference"])], source="efficacy: phase A through the gateway")
        reference.save(work / "reference.json")
        self.study.echo(f"loop: reference from {int(reference.baselines['events'])} phase-A requests through the "
                        "gateway")

    def _drive(self, daemon, url: str, http, rng: random.Random):
        """Phase-B traffic, 8 requests at a time while the daemon is not training or evaluating, until a rollout
        finishes (returned), a run ends without one (None), or ``timeout_s``."""
        from driftwatch.control.rollout import FINISHED
        from driftwatch.retrain.service import ACTIVE

        control = daemon.control
        traffic = [it for _ in range(100) for it in self.study.traffic]  # the same phase-B prompts, again and again
        sent, deadline = 0, time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            rollout = next((r for r in control.registry.rollouts(5) if r.phase in FINISHED), None)
            runs = control.store.runs(limit=1)
            if rollout is not None:
                return rollout
            if runs and runs[0].status not in (*ACTIVE, "succeeded"):
                return None
            active = control.rollouts.active()
            if (runs and runs[0].status in ACTIVE) or (
                    active is not None and active.phase in ("loading", "evaluating", "warming")):
                time.sleep(0.5)
            else:
                self._traffic(http, url, traffic[sent:], 8, rng)
                sent += 8
        return None

    def _row(self, found: _Found) -> Row:
        """The row: the chosen candidate (the review's choice among the run's candidates) as vLLM serves it,
        promoted or not, with the evaluator's figures and the review; or why there was none."""
        st, run, outcome = self.study, found.run, found.outcome
        training = dict(run.detail.get("training", {})) if run is not None else {}
        counts = dict(run.detail.get("counts", {})) if run is not None else {}
        if found.decisions and found.promoted:
            training["decision_to_promotion_s"] = found.promoted[0].at - found.decisions[-1].at
        training["served"], training["feedback"] = self.served, dict(self.feedback)
        if run is not None and run.detail.get("candidates"):
            training["candidates"] = run.detail["candidates"]
        if found.report.get("context", {}).get("review"):
            training["review"] = found.report["context"]["review"]
        if outcome is None:
            why = (f"run {run.status}: {run.reason}" if run is not None else
                   "no retrain decision" if not found.decisions else "no rollout finished in time")
            return Row("loop", None, "refused by the data gates" if run is not None and run.status == "refused"
                       else "not a candidate", why, training=training, counts=counts)
        decided = {"done": "promoted", "rolled_back": "promoted, then rolled back in the bake"}.get(
            outcome.phase, "refused by the promotion gate")
        why = "every gate passed, baked" if outcome.phase == "done" else (
            "; ".join(found.failed) if found.failed else f"{outcome.phase}: {outcome.why[:200]}")
        if "review" in training:
            why = f"review chose {training['review']['chosen']} of {len(training['review']['candidates'])}; {why}"
        if found.decisions:
            why = f"decision #{found.decisions[-1].id} ({found.decisions[-1].reasons[0][:90]}...); {why}"
        chosen = found.report.get("candidate") or outcome.candidate
        metrics = {**found.report.get("metrics", {}).get(chosen, {}),
                   "base_battery_score": (found.report.get("base") or {}).get("battery_score")}
        row = Row("loop", chosen, decided, why, evaluation=metrics, training=training, counts=counts)
        path = found.paths.get(chosen)
        if path and chosen not in st.client.adapters():
            st.vllm.load_adapter(chosen, Path(path))  # a rejected one is unloaded
        st._measure(row)  # the chosen candidate as vLLM serves it, promoted or not
        return row


LOOP_TOPICS = {"inference": "eff.inference.v1", "feedback": "eff.feedback.v1", "dead_letter": "eff.dlq.v1"}
REFERENCE_TOPICS = {"inference": "eff.reference.v1", "feedback": "eff.reference-feedback.v1",
                    "dead_letter": "eff.reference-dlq.v1"}


class _Gateways:
    """The loop's gateways (the reference's, then the users'), each with the incumbent serving as ``production``;
    stopped on exit."""

    def __init__(self, loop: Loop) -> None:
        self.loop, self.started = loop, []

    def start(self, settings, topics: dict[str, str]) -> str:
        from driftwatch.http import HttpServer
        from driftwatch.serving import gateway as gw
        from driftwatch.state.registry import AdapterRecord

        service, sink = gw.build(settings.model_copy(update={"kafka": settings.kafka.model_copy(update={
            "topics": settings.kafka.topics.model_copy(update=topics)})}))
        if service.table.version == 0:  # the incumbent, registered as a rollout would have, serves
            now, name = time.time(), self.loop.incumbent
            service.store.save_adapter(AdapterRecord(name, str(self.loop.study.work / "incumbent" / "adapter"),
                                                     None, None, "production", now, now))
            service.store.set_aliases({"production": {name: 1.0}}, now, who="efficacy", why="the incumbent serves")
            service.reload()
        server = HttpServer(service.app(), "127.0.0.1", 0).start()
        self.started.append((service, sink, server))
        return server.url

    def __enter__(self) -> _Gateways:
        return self

    def __exit__(self, *exc) -> None:
        for service, sink, server in self.started:
            server.stop()
            service.close()
            sink.close()


@contextmanager
def _running(settings):
    """The daemon, running on its own thread and ready; stopped on exit."""
    import threading

    from driftwatch import app

    daemon, stop = app.build(settings), threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,), name="daemon", daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not daemon.readiness()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not become ready within 60 s")
            time.sleep(0.1)
        yield daemon
    finally:
        stop.set()
        runner.join(60)


@dataclass
class _Found:
    """What the daemon did, read from its state store and registry."""
    decisions: list
    run: Any
    outcome: Any  # the finished rollout, or None
    harvested: list
    report: dict[str, Any]  # the evaluation's saved report ({} without one)
    failed: list[str]
    promoted: list
    paths: dict[str, str]  # each candidate version the run offered: its adapter's path

    @classmethod
    def of(cls, daemon, outcome) -> _Found:
        from driftwatch.control.rollout import offered
        from driftwatch.retrain.dataset import Example

        state, registry = daemon.control.store, daemon.control.registry
        evaluation = next(iter(registry.evaluations(outcome.candidate)), None) if outcome else None
        report = {}
        if evaluation is not None and evaluation.report and Path(evaluation.report).exists():
            report = json.loads(Path(evaluation.report).read_text())
        first = registry.adapter(outcome.candidate) if outcome else None
        paths = {first.version: first.path, **offered(first)} if first else {}
        return cls(state.decisions(action="retrain"), next(iter(state.runs(limit=1)), None), outcome,
                   [Example(e.prompt, e.target, e.source, e.route, None, e.request_id, e.served)
                    for e in state.examples(since=0)], report,
                   list(evaluation.failed) if evaluation is not None else [],
                   registry.events(outcome.candidate, kind="promoted") if outcome else [], paths)


def _brief(row: Row) -> str:
    acc = lambda a: a.cell() if a is not None else "—"  # noqa: E731
    return (f"phase B {acc(row.phase_b)}, phase A {acc(row.phase_a)}, battery "
            f"{_f(row.evaluation.get('battery_score'))}; {row.why[:200]}")


def _held_out_text(prompt: str, share: float) -> bool:
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def _training(m: dict) -> dict:
    return {k: m.get(k) for k in ("steps", "best_step", "early_stopped", "tokens_seen", "wall_s", "device",
                                  "initial_validation_loss", "best_validation_loss", "curves", "candidates")}


def served(rows: list[Row], row: Row) -> Row:
    """What production serves after ``row``'s loop: its adapter when promoted (or a baseline row itself), else the
    incumbent (a refused candidate changes nothing that is served)."""
    if row.decision in ("promoted", "baseline"):
        return row
    return next(r for r in rows if r.name == "no retrain (incumbent)")


def recovered(rows: list[Row], name: str = "loop", candidate: bool = False) -> float:
    """The share of the phase-B accuracy the incumbent lost (against its own phase A) that what is served after
    ``name``'s loop wins back: 0 when nothing was promoted. ``candidate``: the candidate's own, promoted or not."""
    by = {r.name: r for r in rows}
    inc, row = by["no retrain (incumbent)"], by.get(name)
    if row is None or inc.phase_a is None or inc.phase_b is None:
        return math.nan
    measured = row if candidate else served(rows, row)
    if measured.phase_b is None:
        return math.nan
    lost = inc.phase_a.rate[0] - inc.phase_b.rate[0]
    return (measured.phase_b.rate[0] - inc.phase_b.rate[0]) / lost if lost > 0 else math.nan


def table(rows: list[Row]) -> str:
    """One line a row: what is served after it (its adapter when promoted, else the incumbent) with that model's
    accuracy figures and intervals, the candidate's own phase-B and phase-A beside them, the evaluator's off-task
    figures of the candidate, training, decision."""
    head = (f"| row | served after | phase-B accuracy (served) | phase-A accuracy (served) | candidate's phase B | "
            f"candidate's phase A | candidate's battery | distinct-2 | task confusion | p50 ms | train tokens | "
            f"train s | decision — why |\n|{'---|' * 13}")
    lines = [head]
    for r in rows:
        e, t, now = r.evaluation, r.training, served(rows, r)
        own = r.decision != "baseline"
        lat = sorted((r.phase_b.latencies_ms if r.phase_b else []) + (r.phase_a.latencies_ms if r.phase_a else []))
        cells = [r.name, {"promoted": "its adapter (promoted)", "baseline": "the base model" if r.adapter is None else
                          "the incumbent"}.get(r.decision, "the incumbent") if now is r else "the incumbent",
                 now.phase_b.cell() if now.phase_b else "—", now.phase_a.cell() if now.phase_a else "—",
                 r.phase_b.cell() if own and r.phase_b else "—", r.phase_a.cell() if own and r.phase_a else "—",
                 _f(e.get("battery_score")), _f(e.get("distinct_2")), _f(e.get("confusion_rate")),
                 f"{lat[len(lat) // 2]:.1f}" if lat else "—", str(t.get("tokens_seen") or "—"),
                 f"{t['wall_s']:.0f}" if t.get("wall_s") else "—", f"{r.decision} — {r.why[:160]}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def as_json(rows: list[Row]) -> list[dict]:
    out = []
    for r in rows:
        d = {k: v for k, v in r.__dict__.items() if k not in ("phase_a", "phase_b")}
        for k in ("phase_a", "phase_b"):
            acc = getattr(r, k)
            d[k] = None if acc is None else {"correct": acc.correct, "n": acc.n, "rate": acc.rate}
        out.append(d)
    return out


__all__ = ["InProcess", "Item", "Loop", "Row", "Scale", "SCALES", "SHIFTS", "Study", "VARIANTS", "Variant", "accuracy",
           "correct", "corrections", "items", "poison", "recovered", "served", "table", "wilson"]
