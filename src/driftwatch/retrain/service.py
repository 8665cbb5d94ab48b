"""A retrain run, end to end: harvested examples + replay → gates → versioned dataset → training run → candidate
adapter. Every step is recorded in the state store; what follows a run is the reconciler's (control/reconciler.py).

An automatic retrain first *collects* (``retrain.collect_deadline_s``): ``collecting`` until the harvest meets the
data gates' minimums, counted on harvested prompt clusters alone (:meth:`RetrainService.shortfall`), or
``insufficient-data`` at the deadline, nothing trained. Then it is recorded as ``queued`` (decided, its job not
started) → ``building`` → ``training`` → ``succeeded`` |
``failed`` | ``timed_out`` | ``cancelled``; ``refused`` when the data failed a gate (nothing was trained; the gate
report says why); ``unimproved`` when no checkpoint beat the adapter it started from (a new one, or with
``retrain.warm_start`` the one retrained) on the validation split (best step 0): training changed nothing worth
serving, so the run leaves no candidate.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from driftwatch.config import Retrain
from driftwatch.metrics import Metrics
from driftwatch.errors import DataError, GateFailure
from driftwatch.evaluate.golden import read_golden
from driftwatch.retrain.dataset import Example, GateSettings, clusters, curate, read_examples, write_dataset
from driftwatch.retrain.harvest import cap_tenants
from driftwatch.retrain.runner import Runner, RunStatus
from driftwatch.retrain.trainer import TrainSpec
from driftwatch.state.store import RunRecord, SqlStore

log = logging.getLogger(__name__)

ACTIVE = ("collecting", "queued", "building", "training")  # run states that will still change
FINISHED = ("succeeded", "failed", "timed_out", "cancelled", "refused", "unimproved", "insufficient-data")


class RetrainService:
    def __init__(self, cfg: Retrain, state_dir: Path, store: SqlStore, runner: Runner,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
                 adapter_path: Callable[[str], str | None] = lambda version: None) -> None:
        """``adapter_path``: a registered version's adapter directory (``retrain.warm_start`` continues from it)."""
        if cfg.base_model is None or cfg.golden_set is None:
            raise ValueError("retrain.base_model and retrain.golden_set are required to run retrains")
        self.cfg, self.store, self.runner, self.metrics, self.clock = cfg, store, runner, metrics, clock
        self.adapter_path = adapter_path
        self.datasets_dir = cfg.datasets_dir or state_dir / "datasets"
        self.runs_dir = runs_dir(cfg, state_dir)

    def queue(self, adapter: str, *, decision_id: int | None = None, focus_routes: tuple[str, ...] = (),
              reason: str = "", collect: bool = False) -> str:
        """Record a run that will start when the worker reaches it (``queued``), or, with ``collect`` and
        ``retrain.collect_deadline_s``, once the harvest is enough (``collecting``); returns its id for :meth:`run`."""
        at = self.clock()
        run_id = new_run_id(at, decision_id)
        status = "collecting" if collect and self.cfg.collect_deadline_s > 0 else "queued"
        self.store.save_run(RunRecord(run_id, decision_id, adapter, status, reason or None, None, None, at, None,
                                      {"focus_routes": list(focus_routes), "queued_at": at}))
        return run_id

    def shortfall(self, run: RunRecord) -> tuple[str | None, dict]:
        """What the harvest still lacks for ``run`` (None: enough), with the counts: unique prompt clusters of the
        usable harvest since ``retrain.window_hours`` against ``gates.min_unique_prompts``, and examples of each
        drifted route against ``gates.min_route_examples``. The replay is not counted: it was never the drift."""
        g = self.cfg.gates
        usable = self.store.examples(since=self.clock() - self.cfg.window_hours * 3600)
        unique = len(set(clusters([e.prompt for e in usable], g.near_dup_threshold))) if usable else 0
        routes = {r: sum(e.route == r for e in usable) for r in run.detail.get("focus_routes", ())}
        lacking = ([f"{unique} of {g.min_unique_prompts} unique harvested prompts"] if unique < g.min_unique_prompts
                   else []) + [f"route '{r}' {n} of {g.min_route_examples} examples" for r, n in routes.items()
                               if n < g.min_route_examples]
        return ("; ".join(lacking) or None), {"examples": len(usable), "unique_prompts": unique, "routes": routes}

    def collected(self, run: RunRecord, counts: dict) -> None:
        """Enough harvest: the run is queued (its deadline, retrain.timeout_s, counts from now)."""
        now = self.clock()
        self.store.save_run(replace(run, status="queued", detail={**run.detail, "queued_at": now, "collected": {
            **counts, "after_s": round(now - run.started, 1)}}))
        log.info("retrain run %s collected enough harvest in %.0fs (%d examples, %d unique prompts): queued", run.id,
                 now - run.started, counts["examples"], counts["unique_prompts"])

    def insufficient(self, run: RunRecord, why: str, counts: dict) -> None:
        """retrain.collect_deadline_s passed without enough harvest: the run ends, nothing trained."""
        self.store.save_run(replace(run, status="insufficient-data", finished=self.clock(), detail={
            **run.detail, "collected": counts}, reason=f"not enough harvest after retrain.collect_deadline_s "
                                                       f"({self.cfg.collect_deadline_s:g}s): {why}"))
        if self.metrics is not None:
            self.metrics.retrain_runs.labels(status="insufficient-data").inc()
        log.warning("retrain run %s: insufficient data after %gs (%s): nothing trained", run.id,
                    self.cfg.collect_deadline_s, why)

    def active(self) -> list[RunRecord]:
        return [r for r in self.store.runs(limit=20) if r.status in ACTIVE]

    def interrupted(self, run: RunRecord) -> None:
        """A run this process did not start and no job is running (the daemon that ran it stopped): failed."""
        self.store.save_run(replace(run, status="failed", finished=self.clock(),
                                    reason="interrupted: the daemon stopped before the run finished"))
        log.warning("retrain run %s was %s when its daemon stopped: marked failed", run.id, run.status)

    def timed_out(self, run: RunRecord) -> None:
        """A run past retrain.timeout_s since it was queued (its job is cancelled): timed_out."""
        self.store.save_run(replace(run, status="timed_out", finished=self.clock(), reason=(
            f"past retrain.timeout_s ({self.cfg.timeout_s:g}s) since it was queued: its job was cancelled")))
        if self.metrics is not None:
            self.metrics.retrain_runs.labels(status="timed_out").inc()
        log.warning("retrain run %s was %s past retrain.timeout_s: timed out", run.id, run.status)

    def run(self, adapter: str, *, decision_id: int | None = None, focus_routes: tuple[str, ...] = (),
            reason: str = "", run_id: str | None = None, cancel: threading.Event | None = None) -> RunRecord:
        started = self.clock()
        run_id = run_id or new_run_id(started, decision_id)
        if (prior := self.store.run(run_id)) is not None and prior.status in FINISHED:
            return prior  # timed out by the control loop before its job began
        record = RunRecord(run_id, decision_id, adapter, "building", reason or None, None, None,
                           prior.started if prior else started, None,  # its queueing (and collecting) is kept
                           {**(prior.detail if prior else {}), "focus_routes": list(focus_routes)})
        self.store.save_run(record)
        try:
            record = self._run(record, focus_routes, cancel or threading.Event())
        except (DataError, OSError, ValueError) as exc:
            record = replace(record, status="failed", reason=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any failure is recorded; production is not touched
            log.exception("retrain run %s failed", run_id)
            record = replace(record, status="failed", reason=f"{type(exc).__name__}: {exc}")
        record = replace(record, finished=self.clock())
        if (now := self.store.run(run_id)) is not None and now.status in FINISHED:  # timed out by the control loop
            log.info("retrain run %s ended %s after it was recorded %s: kept %s", run_id, record.status, now.status,
                     now.status)
            return now
        self.store.save_run(record)
        if self.metrics is not None:
            self.metrics.retrain_runs.labels(status=record.status).inc()
        log.info("retrain run %s for '%s': %s%s", run_id, adapter, record.status,
                 f" ({record.reason})" if record.reason else "")
        return record

    def _run(self, record: RunRecord, focus_routes: tuple[str, ...], cancel: threading.Event) -> RunRecord:
        cfg = self.cfg
        since = self.clock() - cfg.window_hours * 3600
        replay = read_examples(cfg.base_training_set) if cfg.base_training_set else []
        usable = self.store.examples(since=since)  # trusted or approved: never an unreviewed end user's
        usable, capped = cap_tenants(usable, len(replay), cfg.max_tenant_share, cfg.gates.replay_fraction)
        harvested = [Example(e.prompt, e.target, e.source, e.route, None, e.request_id, e.served) for e in usable]
        golden = read_golden(cfg.golden_set)
        sources = {"harvested_since": since, "harvested": len(harvested), "tenant_capped": capped,
                   "base_training_set": str(cfg.base_training_set) if cfg.base_training_set else None,
                   "replay_available": len(replay), "golden_set": str(cfg.golden_set), "golden_items": len(golden),
                   "adapter": record.adapter, "decision_id": record.decision_id, "focus_routes": list(focus_routes)}
        try:
            curated = curate(harvested + replay, golden, focus_routes, GateSettings(**cfg.gates.model_dump()))
        except GateFailure as exc:
            return replace(record, status="refused", reason=str(exc),
                           detail={**record.detail, "gates": [g.line() for g in exc.report]})
        dataset = write_dataset(curated, self.datasets_dir, sources=sources, retention_days=cfg.retention_days)
        self.store.save_dataset(dataset.name, str(dataset), self.clock(), curated.counts)
        output = self.runs_dir / record.id
        incumbent = self._incumbent(record, output)  # copied into <output>/init when the run needs it
        warm = incumbent if cfg.warm_start else None
        record = replace(record, status="training", dataset=str(dataset), output=str(output),
                         detail={**record.detail, "gates": [g.line() for g in curated.report], "counts": curated.counts,
                                 "warm_start_from": warm})
        if (now := self.store.run(record.id)) is not None and now.status in FINISHED:
            return now  # timed out by the control loop while its set was built: never trained, never overwritten
        self.store.save_run(record)
        spec = TrainSpec(base_model=str(cfg.base_model), dataset=str(dataset), output=str(output),
                         **cfg.lora.model_dump(), **cfg.training.model_dump(), **cfg.review.model_dump(),
                         price_per_gpu_hour=cfg.price_per_gpu_hour,
                         chat_template=str(cfg.chat_template) if cfg.chat_template else None,
                         progress=False, init_adapter=str(output / "init") if warm else None,
                         incumbent_adapter=str(output / "init") if incumbent else None)
        result = self.runner.run(spec, record.id, cancel)
        detail = dict(record.detail)
        if result.manifest is not None:
            m = result.manifest
            detail["training"] = {k: m[k] for k in ("steps", "best_step", "best_validation_loss",
                                                    "initial_validation_loss", "early_stopped", "tokens_seen",
                                                    "wall_s", "device", "gpu_seconds", "cost")}
            if m.get("candidates"):  # the other candidates it offers the review
                detail["candidates"] = m["candidates"]
            if self.metrics is not None:
                self.metrics.training_gpu_seconds.inc(m["gpu_seconds"])
                self.metrics.training_tokens.inc(m["tokens_seen"])
                self.metrics.training_cost.inc(m["cost"])
        if result.status.value == "succeeded" and result.manifest["best_step"] == 0:
            m = result.manifest
            return replace(record, status="unimproved", detail=detail, reason=(
                f"no checkpoint beat the adapter it started from: best step 0 of {m['steps']}, validation loss "
                f"{m['initial_validation_loss']:.4f} never improved on: not a candidate"))
        return replace(record, status=result.status.value, reason=result.reason or None, detail=detail)


    def _incumbent(self, record: RunRecord, output: Path) -> str | None:
        """The adapter of the version the run retrains (the registry's path), copied into ``<output>/init`` when the
        run needs it: to continue from (retrain.warm_start), as the replay's KL reference
        (retrain.training.kl_replay), or to interpolate toward (retrain.review). There a trainer Job reads it (the run's directory is on the shared volume), and
        what the run started from is kept with it. None: none needed, or the base model serves (a new LoRA)."""
        needed = self.cfg.warm_start or self.cfg.training.kl_replay > 0 or (
            self.cfg.review.candidates > 1 and bool(self.cfg.review.interpolate))
        path = self.adapter_path(record.adapter) if needed else None  # None: no adapter (the base model)
        if path is None:
            return None
        if not (Path(path) / "adapter_config.json").is_file():
            log.warning("retrain run %s: '%s' has no adapter at %s: training a new LoRA", record.id, record.adapter,
                        path)
            return None
        shutil.copytree(path, output / "init", dirs_exist_ok=True)
        return path


def new_run_id(at: float, decision_id: int | None) -> str:
    # the id names the candidate's version (rollout.version_name), so it must not grow with each generation
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(at))}-" + (
        f"d{decision_id}" if decision_id else f"manual-{secrets.token_hex(2)}")


def runs_dir(cfg: Retrain, state_dir: Path) -> Path:
    """Where runs write (for Jobs: the volume shared with the trainer): retrain.runs_dir, else <state_dir>/runs."""
    return cfg.runs_dir or state_dir / "runs"


def build_runner(cfg: Retrain, state_dir: Path) -> Runner:
    from driftwatch.retrain.runner import KubernetesJobRunner, LocalRunner

    if cfg.runner == "local":
        return LocalRunner(runs_dir(cfg, state_dir), timeout_s=cfg.timeout_s)
    k = cfg.kubernetes
    return KubernetesJobRunner(runs_dir(cfg, state_dir), namespace=k.namespace, image=k.image, pvc=k.pvc, mount_path=k.mount_path,
                               gpus=k.gpus, gpu_resource=k.gpu_resource, cpu=k.cpu, memory=k.memory,
                               tolerations=k.tolerations, node_selector=k.node_selector,
                               service_account=k.service_account, timeout_s=cfg.timeout_s)


__all__ = ["RetrainService", "build_runner", "RunStatus"]
