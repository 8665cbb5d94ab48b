"""The chaos soak (bench/soak.py, `make soak`): the whole loop under faults injected at random from a seed, with its
invariants checked all along.

What runs, all on this machine: a Kafka-protocol broker (Tansu), the daemon as
its own process (`driftwatch run`, so it can be killed with -9), the gateway, two stand-in vLLM servers
(dev/standin.py: vLLM's adapter API; a restart comes back with no adapters), SQLite as the state store, and real
training (the tiny Llama, a few steps, `python -m driftwatch.retrain.trainer`). Clients call `production` through
the gateway at a rate that rises and falls, and post corrections as a trusted caller. The traffic's route mix
shifts twice (two drifts: two retrains); the candidate of the second drift is bad (the stand-ins answer it empty
on live traffic, right on the evaluation's sets), so its bake must roll it back, and the level-triggered policy
must retrain again. The drifts come at a fifth and at half of the run.

Faults, at random times from the seed (the schedule is printed first, so a failed run can be replayed; thread
interleavings cannot be): the broker stopped (SIGSTOP: frozen, its sockets open, then SIGCONT); the daemon killed
with -9 and restarted; the training job killed; the state store held locked (a slow store); a model server down for
a while. (A broker *restart* is tests/integration/test_ingest.py's, on noida-db: it keeps its log across a restart
but never evicts a member killed with -9, so a daemon restarted after one never gets its partitions back there;
Tansu evicts it, and keeps its log in memory only.) And, on cue, a model server
down during an evaluation, during a promotion, and during the bad candidate's bake (so its rollback happens with
one server down).

Invariants, checked every second and at the end; a violation fails the run with the seed and the schedule:

* every retrain decision's run reaches a terminal state, and none outlives ``retrain.timeout_s``;
* no rollout phase outlives its deadline by more than a tick, the check interval and a lease (a killed daemon's);
* production points at a version some reachable server has loaded, and the gateway routes no request to a server
  without its version (the daemon's own evaluation requests to a server that restarted mid-evaluation fail that
  evaluation, which is rejected and retried: counted in the report);
* a bake whose failed checks reached the threshold is rolled back;
* no event is lost (the committed offsets reach the topics' ends) or counted twice (accepted, summed over the
  daemon's lives, at most the distinct request ids on the topic);
* every answered request is on the inference topic, or counted by the gateway as dropped with a reason.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from driftwatch.dev.demo import scrape, value
from driftwatch.dev.standin import StandIn

ROUTES_BEFORE = {"qa": 0.4, "summarize": 0.2, "code": 0.2, "chat": 0.1, "extract": 0.1}
DRIFTS = ({"qa": 0.05, "summarize": 0.8, "code": 0.05, "chat": 0.05, "extract": 0.05},
          {"qa": 0.05, "summarize": 0.05, "code": 0.8, "chat": 0.05, "extract": 0.05})
DRIFT_AT = (0.2, 0.5)  # shares of the run
FAULTS = ("broker", "daemon", "trainer", "store", "server")
TOKEN = "soak-control-token-" + secrets.token_hex(8)
CALLER_TOKEN = secrets.token_urlsafe(24)


@dataclass
class Plan:
    seed: int
    duration_s: float
    rate: float  # mean requests/s; the rate rises and falls around it (a day's shape)
    faults: list[tuple[float, str, float]] = field(default_factory=list)  # (at, kind, how long)

    @classmethod
    def from_seed(cls, seed: int, duration_s: float, rate: float) -> Plan:
        rng = random.Random(seed)
        n = max(len(FAULTS), int(duration_s / 45))
        kinds = list(FAULTS) + [rng.choice(FAULTS) for _ in range(n - len(FAULTS))]
        rng.shuffle(kinds)
        times = sorted(rng.uniform(0.12, 0.9) * duration_s for _ in kinds)
        spans = {"broker": (3, 12), "daemon": (1, 3), "trainer": (0, 0), "store": (2, 5), "server": (4, 15)}
        return cls(seed, duration_s, rate, [(round(t, 1), k, round(rng.uniform(*spans[k]), 1))
                                            for t, k in zip(times, kinds)])

    def describe(self) -> str:
        return (f"seed {self.seed}, {self.duration_s:g}s at {self.rate:g} requests/s on average; faults: "
                + ", ".join(f"{k}@{t:g}s({d:g}s)" for t, k, d in self.faults))


class Violation(AssertionError):
    pass


class Soak:
    def __init__(self, plan: Plan, work: Path, echo=print) -> None:
        self.plan, self.work, self.echo = plan, work, echo
        self.rng = random.Random(plan.seed + 1)
        self.violations: list[str] = []
        self.checks = 0
        self.injected: list[str] = []
        self.answered: set[str] = set()  # request ids the gateway answered 200
        self.statuses: dict[int, int] = {}
        self.accepted_before = 0.0  # accepted events counted by the daemon's earlier lives
        self.bad: set[str] = set()  # candidates the stand-ins answer empty on live traffic
        self.routes = dict(ROUTES_BEFORE)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.daemon: subprocess.Popen | None = None
        self.cued: set[str] = set()
        self.daemon_misses = 0  # the daemon's requests (evaluations) that reached a server which had restarted
        self._at_threshold: dict[int, float] = {}  # rollout id → when it was first seen active at the threshold

    # -- the stack --------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        from driftwatch.config import load_settings
        from driftwatch.dev.localbroker import LocalBroker
        from driftwatch.dev.models import build_tiny_llama
        from driftwatch.ingest.kafka import ensure_topics

        w = self.work
        (w / "broker").mkdir(parents=True, exist_ok=True)
        self.broker = LocalBroker("tansu", data_dir=w / "broker").start()
        self.model = build_tiny_llama(w / "tiny")
        self.golden = self._golden(w / "golden.jsonl")
        self.eval_answers = self._eval_answers()
        self.servers = [StandIn(answer=self._answer).start(), StandIn(answer=self._answer).start()]
        self._reference()
        self.config = w / "soak.yaml"
        self.config.write_text(json.dumps(self._settings()))
        self.settings = load_settings(self.config, env={})
        ensure_topics(self.settings.kafka)
        self._incumbent()
        self._start_daemon()
        from driftwatch.http import HttpServer
        from driftwatch.serving import gateway as gw

        self.gateway, self.sink = gw.build(self.settings, seed=self.plan.seed)
        self.http = HttpServer(self.gateway.app(), "127.0.0.1", 0).start()

    def _settings(self) -> dict:
        servers = [s.url for s in self.servers]
        return {
            "kafka": {"bootstrap_servers": [self.broker.bootstrap], "create_topics": True,
                      "topics": {"inference": "soak.inference", "feedback": "soak.feedback",
                                 "dead_letter": "soak.dead-letter"},
                      "consumer": {"group_id": "soak", "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                                   "poll_timeout_ms": 200}},
            "http": {"host": "127.0.0.1", "port": _free_port()},
            "daemon": {"state_dir": str(self.work / "state"), "shutdown_grace_s": 15},
            "control": {"token": TOKEN},
            "monitor": {"reference_path": str(self.work / "reference.json"), "check_interval_s": 3,
                        "window_events": 300, "window_seconds": 30, "min_samples": 100},
            "policy": {"rules": [{"name": "input-drift", "signal": "input_drift", "threshold": 1, "clear": 0.5,
                                  "min_samples": 200}],
                       "cooldown_s": 20, "max_retrains_per_day": 1000, "max_attempts": 5},
            "retrain": {"base_model": str(self.model), "golden_set": str(self.golden), "timeout_s": 180,
                        "trusted_callers": ["soak"], "min_new_examples": 5, "warm_start": False,
                        "training": {"max_steps": 3, "batch_size": 4, "max_length": 64, "eval_every": 1},
                        "gates": {"min_unique_prompts": 5, "min_route_examples": 0, "max_duplicate_share": 1.0,
                                  "max_length_outlier_share": 1.0, "max_contradiction_share": 1.0}},
            "evaluate": {"gates": {"golden_min_delta": -1.0}, "concurrency": 4, "timeout_s": 10},
            "rollout": {"vllm_urls": servers, "tick_s": 1, "lease_s": 5, "warm_requests": 1,
                        "load_deadline_s": 60, "evaluate_deadline_s": 90, "warm_deadline_s": 30,
                        "rebaseline_deadline_s": 30,
                        "bake": {"duration_s": 12, "deadline_s": 40, "min_events": 30, "failed_checks": 2}},
            "gateway": {"upstreams": servers, "alias_poll_s": 0.2, "feedback_callers": f"soak:{CALLER_TOKEN}",
                        "store_path": str(self.work / "state" / "state.db")},
        }

    def _incumbent(self) -> None:
        """production -> v0, the adapter serving before the day starts (the daemon's reconcile loads it)."""
        from driftwatch.control.rollout import RolloutController
        from driftwatch.state.store import SqliteStore

        v0 = self.work / "v0"
        v0.mkdir(exist_ok=True)
        (v0 / "adapter_config.json").write_text("{}")
        registry = SqliteStore(self.work / "state" / "state.db")
        try:
            RolloutController(self.settings, registry, clients=[]).register("v0", v0)
            registry.commit(time.time(), "soak", "seed", "v0", aliases={"production": {"v0": 1.0}},
                            states={"v0": "production"})
        finally:
            registry.close()

    def _golden(self, path: Path) -> Path:
        path.write_text("".join(json.dumps({"prompt": f"What is the code word number {i}?", "expected": f"word {i}",
                                            "scoring": "contains"}) + "\n" for i in range(12)))
        return path

    def _eval_answers(self) -> dict[str, str]:
        """prompt → the answer the stand-ins give every version: the evaluation's sets are answered alike."""
        import driftwatch

        out = {}
        defaults = Path(driftwatch.__file__).parent / "defaults" / "eval"
        for path in (self.golden, defaults / "battery.jsonl", defaults / "probes.jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    item = json.loads(line)
                    expected = item.get("expected", "fine")
                    out[item["prompt"]] = expected[0] if isinstance(expected, list) else expected
        return out

    def _answer(self, model: str, prompt: str = "") -> str:
        if prompt in self.eval_answers:
            return str(self.eval_answers[prompt])
        if model in self.bad:
            return ""  # the bad candidate: right on the evaluation, empty on live traffic
        return "Answer: " + " ".join(prompt.split()[:8])

    def _reference(self) -> None:
        """The reference profile: the traffic's mix before any drift, as the simulator writes it."""
        from driftwatch.dev.simulate import SimConfig, Simulator
        from driftwatch.events import decode
        from driftwatch.monitor.monitor import build_profile

        sim = Simulator(SimConfig(seed=self.plan.seed, routes=ROUTES_BEFORE, feedback_rate=0))
        events = [decode("inference", o.value, 10**7) for o in sim.stream(2000) if o.label == "inference"]
        build_profile(events).save(self.work / "reference.json")

    def _start_daemon(self) -> None:
        log = open(self.work / "daemon.log", "ab")
        self.daemon = subprocess.Popen([sys.executable, "-m", "driftwatch", "run", "--config", str(self.config)],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        log.close()

    @property
    def daemon_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http.port}"

    def close(self) -> None:
        self.stop.set()
        for name, fn in (("daemon", self._stop_daemon), ("gateway", lambda: (self.http.stop(), self.gateway.close(),
                                                                             self.sink.close(5))),
                         ("servers", lambda: [s.down() for s in self.servers]), ("broker", self.broker.cleanup)):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - closing: go on with the rest
                self.echo(f"  (closing the {name}: {exc})")

    def _stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(10)

    # -- traffic ----------------------------------------------------------------------------------------------------------
    def _traffic(self, t0: float, workers: int = 4) -> None:
        """``workers`` closed-loop users, each at its share of the rate; a day's shape: the rate rises and falls
        around the mean (0.25x to 1.75x)."""
        users = [threading.Thread(target=self._user, args=(t0, k, workers), daemon=True) for k in range(workers)]
        for u in users:
            u.start()
        for u in users:
            u.join()

    def _user(self, t0: float, k: int, workers: int) -> None:
        from driftwatch.dev.simulate import SimConfig, Simulator
        from driftwatch.events import decode

        sims: dict[tuple, Simulator] = {}
        rng = random.Random(self.plan.seed * 100 + k)
        next_at = time.monotonic()
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                rate = self.plan.rate * (1 + 0.75 * _sin((time.monotonic() - t0) / self.plan.duration_s)) / workers
                key = tuple(sorted(self.routes.items()))
                sim = sims.setdefault(key, Simulator(SimConfig(seed=self.plan.seed * 100 + k * 10 + len(sims),
                                                               routes=dict(key), feedback_rate=0)))
                event = decode("inference", sim.inference(int(time.time() * 1000)).value, 10**7)
                try:
                    r = http.post(f"{self.http.url}/v1/completions", headers={"x-driftwatch-route": event.route or "qa"},
                                  json={"model": "production", "prompt": event.prompt, "max_tokens": 16})
                    status = r.status_code
                except httpx.HTTPError:
                    status = -1
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == 200:
                        self.answered.add(r.headers["x-request-id"])
                if status == 200 and rng.random() < 0.15:  # users correct some answers (through a trusted backend)
                    try:
                        http.post(f"{self.http.url}/v1/feedback", headers={"authorization": f"Bearer {CALLER_TOKEN}"},
                                  json={"request_id": r.headers["x-request-id"], "thumbs": "down",
                                        "correction": f"The {event.route} answer: {' '.join(event.prompt.split()[:6])}."})
                    except httpx.HTTPError:
                        pass
                next_at = max(next_at + 1 / max(rate, 0.1), time.monotonic() - 1.0)  # behind: no burst to catch up
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    # -- faults ---------------------------------------------------------------------------------------------------------
    def _faults(self, t0: float) -> None:
        for at, kind, span in self.plan.faults:
            if self.stop.wait(max(0.0, t0 + at - time.monotonic())):
                return
            getattr(self, f"_fault_{kind}")(span)

    def _note(self, what: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {what}"
        self.injected.append(line)
        self.echo(f"  fault: {what}")

    def _fault_broker(self, span: float) -> None:
        self._note(f"broker stopped (SIGSTOP) for {span:g}s")
        os.killpg(self.broker.proc.pid, signal.SIGSTOP)
        try:
            self.stop.wait(span)
        finally:
            os.killpg(self.broker.proc.pid, signal.SIGCONT)

    def _fault_daemon(self, span: float) -> None:
        self.accepted_before += self._accepted()  # its last count before it dies (a batch after it is not counted)
        self._note(f"daemon killed with -9, restarted after {span:g}s")
        self.daemon.kill()
        self.daemon.wait(10)
        self.stop.wait(span)
        self._start_daemon()

    def _fault_trainer(self, span: float) -> None:
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            pids = _pids("driftwatch.retrain.trainer")
            if pids:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                self._note(f"training job killed ({len(pids)} process)")
                return
            self.stop.wait(0.5)
        self._note("training job: none ran within 60 s (nothing killed)")

    def _fault_store(self, span: float) -> None:
        self._note(f"state store held locked for {span:g}s (a slow store)")
        conn = sqlite3.connect(self.work / "state" / "state.db", timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            self.stop.wait(span)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _fault_server(self, span: float, why: str = "") -> None:
        with self._lock:  # one server down at a time, the scheduled faults and the cued ones: a server back from a
            # restart counts as down until it has production loaded again (its restart emptied it)
            production = set(self.gateway.table.aliases.get("production", ([], []))[0]) - {"base"}
            if not all(s.is_up and production <= set(s.adapters) for s in self.servers):
                self._note(f"model server fault skipped{why}: a server is down or still reloading")
                return
            server = self.rng.choice(self.servers)
            self._note(f"model server {self.servers.index(server)} down for {span:g}s{why}")
            server.down()
        self.stop.wait(span)
        server.up()

    # -- invariants -----------------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Every second: the invariants that hold all along; the cued faults (a server down during an evaluation,
        a promotion, the bad candidate's bake)."""
        while not self.stop.wait(1.0):
            try:
                self._check_once()
            except sqlite3.OperationalError:
                continue  # the store is held locked (a fault): read it next time

    def _check_once(self) -> None:
        s = self.settings
        now = time.time()
        db = sqlite3.connect(f"file:{self.work / 'state' / 'state.db'}?mode=ro", uri=True, timeout=1)
        try:
            from driftwatch.control.rollout import ACTIVE, deadline_s

            rows = db.execute("SELECT id, candidate, phase, phase_since, failed_checks FROM rollout ORDER BY id").fetchall()
            aliases = _aliases(db)
            runs = db.execute("SELECT id, status, started FROM run").fetchall()
        finally:
            db.close()
        slack = s.rollout.tick_s + s.monitor.check_interval_s + s.rollout.lease_s + 10  # + a daemon's restart
        for rid, candidate, phase, since, failed in rows:
            if phase in ACTIVE:
                bound = deadline_s(s, phase) + (s.rollout.bake.duration_s if phase in ("canary", "baking") else 0)
                if now - since > bound + slack:
                    self._violate(f"rollout {rid} ({candidate}) in {phase} for {now - since:.0f}s > {bound:g}s + "
                                  f"{slack:g}s")
                self._cue(rid, candidate, phase)
            if failed >= s.rollout.bake.failed_checks and phase != "rolled_back":
                first = self._at_threshold.setdefault(rid, now)  # between the two commits, or a tick away
                if phase not in ACTIVE or now - first > slack:
                    self._violate(f"rollout {rid} ({candidate}) has {failed} failed checks and is {phase}, not "
                                  "rolled back")
        for run_id, status, started in runs:
            if status in ("queued", "building", "training") and now - started > s.retrain.timeout_s + slack:
                self._violate(f"run {run_id} {status} for {now - started:.0f}s > retrain.timeout_s")
        for version in aliases.get("production", {}):
            if not any(srv.is_up and version in srv.adapters for srv in self.servers) and version != "base":
                self._violate(f"production -> {version}, loaded on no reachable server")
        for i, srv in enumerate(self.servers):
            routed = [m for m in srv.misses if m[2]]
            if routed:
                self._violate(f"server {i} got requests routed by the gateway for versions it had not loaded: "
                              f"{routed[:3]}")
            # the daemon's own requests to a server that restarted mid-evaluation fail that evaluation (rejected,
            # retried later): counted, not a routing fault
            self.daemon_misses += len(srv.misses) - len(routed)
            srv.misses.clear()
        self.checks += 1

    def _cue(self, rid: int, candidate: str, phase: str) -> None:
        """Faults on cue, each once: a server down during an evaluation, during a promotion; the second drift's
        candidate is the bad one, and a server goes down during its bake."""
        if self.routes == DRIFTS[1] and "bad" not in self.cued and phase in ("loading", "evaluating"):
            self.cued.add("bad")
            self.bad.add(candidate)
            self.echo(f"  {candidate} is the bad candidate: empty answers on live traffic")
        cue = {"evaluating": "evaluation", "warming": "promotion"}.get(phase)
        if phase == "baking" and candidate in self.bad:
            cue = "bad bake"
        if cue and cue not in self.cued:
            self.cued.add(cue)
            threading.Thread(target=self._fault_server, args=(8.0, f" during the {cue} of {candidate}"),
                             daemon=True).start()

    def _violate(self, what: str) -> None:
        if what not in self.violations:
            self.violations.append(what)
            self.echo(f"  VIOLATION: {what}")

    def _accepted(self) -> float:
        try:
            return value(scrape(self.daemon_url), "driftwatch_ingest_records_total", outcome="accepted",
                         topic=self.settings.kafka.topics.inference)
        except (httpx.HTTPError, OSError):
            return 0.0

    def _final_checks(self) -> dict:
        """After the traffic stops and the daemon caught up: nothing lost, nothing counted twice, every answer
        logged or counted as dropped."""
        from driftwatch.ingest.kafka import committed_offsets, end_offsets, read_range

        t = self.settings.kafka.topics
        deadline = time.monotonic() + 120

        def short() -> dict:  # partition → (committed, end) where the group has not reached the end
            ends = end_offsets(self.settings.kafka, [t.inference, t.feedback])
            committed = committed_offsets(self.settings.kafka, "soak", ends)
            return {k: (committed[k], end) for k, end in ends.items() if committed[k] < end}

        while (behind := short()) and time.monotonic() < deadline:
            time.sleep(1)
        if behind:
            self._violate(f"events lost: the group's committed offsets are short of the topics' ends: {behind}")
        ids = {json.loads(v)["request_id"] for v in read_range(self.settings.kafka, t.inference, idle_s=3)}
        accepted = self.accepted_before + self._accepted()
        if accepted > len(ids):
            self._violate(f"counted twice: {accepted:.0f} accepted over the daemon's lives, {len(ids)} distinct on "
                          "the topic")
        gateway = scrape(self.http.url)
        dropped = value(gateway, "driftwatch_gateway_events_dropped_total")
        missing = self.answered - ids
        if len(missing) > dropped:
            self._violate(f"{len(missing)} answered requests are not on the topic and only {dropped:.0f} were "
                          "counted as dropped")
        return {"distinct_logged": len(ids), "accepted": int(accepted), "answered": len(self.answered),
                "dropped": int(dropped)}

    # -- the run --------------------------------------------------------------------------------------------------------
    def run(self) -> int:
        plan = self.plan
        self.echo(f"soak: {plan.describe()}")
        t_start = time.monotonic()
        self.start()
        httpx_ready(self.daemon_url, 120)
        self.echo(f"  stack up in {time.monotonic() - t_start:.0f}s: broker {self.broker.bootstrap}, daemon "
                  f"{self.daemon_url}, gateway {self.http.url}, servers {[s.url for s in self.servers]}")
        t0 = time.monotonic()
        threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in
                   ((self._traffic, (t0,)), (self._faults, (t0,)), (self._watch, ()))]
        for th in threads:
            th.start()
        for at, routes in zip(DRIFT_AT, DRIFTS):  # two drifts: each answered, the second by a bad candidate first
            if self.stop.wait(max(0.0, t0 + plan.duration_s * at - time.monotonic())):
                break
            self.routes = routes
            self.echo(f"  drift {DRIFTS.index(routes) + 1}: the route mix is now {routes}")
        self.stop.wait(max(0.0, t0 + plan.duration_s - time.monotonic()))
        self.stop.set()
        for th in threads:
            th.join(120)
        self.stop.clear()  # the watch is over; the final checks still use the stack
        self._check_once()
        totals = self._final_checks()
        report = self._report(totals, time.monotonic() - t_start)
        (self.work / "report.txt").write_text(report + "\n")
        self.echo(report)
        return 1 if self.violations else 0

    def _report(self, totals: dict, wall_s: float) -> str:
        db = sqlite3.connect(f"file:{self.work / 'state' / 'state.db'}?mode=ro", uri=True)
        try:
            rollouts = db.execute("SELECT phase, COUNT(*) FROM rollout GROUP BY phase").fetchall()
            runs = db.execute("SELECT status, COUNT(*) FROM run GROUP BY status").fetchall()
            decisions = db.execute("SELECT action, COUNT(*) FROM decision GROUP BY action").fetchall()
        finally:
            db.close()
        lines = [f"soak done in {wall_s:.0f}s ({self.plan.describe()})",
                 f"  requests by status {dict(sorted(self.statuses.items()))}; {totals}; the daemon's own requests "
                 f"that met a restarted server (their evaluation failed): {self.daemon_misses}",
                 f"  decisions {dict(decisions)}; runs {dict(runs)}; rollouts {dict(rollouts)}",
                 f"  faults injected ({len(self.injected)}):"] + [f"    {x}" for x in self.injected]
        lines.append(f"  invariants checked {self.checks} times: " + (
            "all held" if not self.violations else f"{len(self.violations)} VIOLATED:"))
        lines += [f"    {v}" for v in self.violations]
        if self.violations:
            lines.append(f"  replay the schedule: python bench/soak.py --seed {self.plan.seed} --minutes "
                         f"{self.plan.duration_s / 60:g} --rate {self.plan.rate:g}")
        return "\n".join(lines)


# -- helpers ------------------------------------------------------------------------------------------------------------
def _sin(x: float) -> float:
    import math

    return math.sin(2 * math.pi * x - math.pi / 2)  # starts low, peaks mid-run, ends low


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]


def _aliases(db) -> dict:
    row = db.execute("SELECT doc FROM alias_table ORDER BY version DESC LIMIT 1").fetchone()
    return json.loads(row[0]) if row else {}


def httpx_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise Violation(f"the daemon at {url} was not ready within {timeout_s:g}s")


def run(seed: int, minutes: float, rate: float, work: Path | None = None, echo=print) -> int:
    import tempfile

    plan = Plan.from_seed(seed, minutes * 60, rate)
    with tempfile.TemporaryDirectory(prefix="driftwatch-soak-") as tmp:
        soak = Soak(plan, Path(work or tmp), echo)
        try:
            return soak.run()
        finally:
            soak.close()
