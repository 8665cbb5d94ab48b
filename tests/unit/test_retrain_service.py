"""A retrain request end to end without Kafka: harvested feedback + replay → gates → dataset → real training."""

import json
from pathlib import Path

import driftwatch
from driftwatch.config import load_settings
from driftwatch.ingest.pipeline import Ingestor
from driftwatch.ingest.recent import DedupWindow
from driftwatch.metrics import Metrics
from driftwatch.retrain import harvest as harvesting
from driftwatch.retrain.runner import LocalRunner, RunStatus
from driftwatch.retrain.service import RetrainService
from driftwatch.state.store import SqliteStore

EXAMPLES = Path(driftwatch.__file__).parent / "defaults" / "examples"


def settings(tiny_model, **retrain):
    env = {"DRIFTWATCH__RETRAIN__BASE_MODEL": str(tiny_model),
           "DRIFTWATCH__RETRAIN__GOLDEN_SET": str(EXAMPLES / "golden.jsonl"),
           "DRIFTWATCH__RETRAIN__BASE_TRAINING_SET": str(EXAMPLES / "base.jsonl"),
           "DRIFTWATCH__RETRAIN__TRAINING__MAX_STEPS": "6", "DRIFTWATCH__RETRAIN__TRAINING__EVAL_EVERY": "3"}
    env.update({f"DRIFTWATCH__RETRAIN__{k.upper()}": v for k, v in retrain.items()})
    return load_settings(None, env=env).retrain


def harvest(store, n=80):
    """Requests and their feedback through the ingestor's join and the harvest: corrections and thumbs-up become
    examples, saved when the batch finishes."""
    from .fakes import FakeSink, FakeSource, Rec

    records = []
    for i in range(n):
        rid = f"req-{i}"
        records.append(Rec("inf", 0, i, json.dumps({
            "schema_version": 1, "request_id": rid, "timestamp": 1795514400000, "model": "base", "adapter": "support-v2",
            "prompt": f"Summarize ticket {i}: the {['printer', 'router', 'laptop'][i % 3]} number {i} is broken.",
            "response": f"Device {i} is broken.", "latency_ms": 5, "status": "ok", "route": "summarize"}).encode()))
        verdict = {"correction": f"Ticket {i}: the device is broken and needs a replacement."} if i % 2 else {"thumbs": "up"}
        records.append(Rec("fb", 0, i, json.dumps({
            "schema_version": 1, "feedback_id": f"fb-{i}", "request_id": rid, "timestamp": 1795514401000,
            **verdict}).encode()))
    records.append(Rec("fb", 0, n, json.dumps({  # feedback for a request never seen: nothing
        "schema_version": 1, "feedback_id": "fb-x", "request_id": "unknown", "timestamp": 1795514401000,
        "thumbs": "up"}).encode()))
    source, sink = FakeSource([records]), FakeSink()
    ing = Ingestor(source, sink, Metrics(), kinds={"inf": "inference", "fb": "feedback"}, max_record_bytes=100_000,
                   dedup=DedupWindow(10_000, 3600), harvest=harvesting.example, save_examples=store.add_examples,
                   max_kept=1000, feedback_hold_s=0)
    ing.finish(ing.poll())


def test_a_request_builds_a_dataset_and_trains_a_candidate(tiny_model, tmp_path):
    store = SqliteStore(tmp_path / "state.db")
    harvest(store)
    assert {e.source for e in store.examples()} == {"correction", "positive"} and len(store.examples()) == 80
    assert sum(e.source == "correction" for e in store.examples()) == 40
    metrics = Metrics()
    service = RetrainService(settings(tiny_model), tmp_path, store, LocalRunner(tmp_path / "runs"), metrics)
    run = service.run("support-v2", decision_id=12, focus_routes=("summarize",), reason="input-drift")
    assert run.status == "succeeded", run.reason
    manifest = json.loads((Path(run.dataset) / "manifest.json").read_text())
    assert manifest["sources"]["harvested"] == 80 and manifest["sources"]["decision_id"] == 12
    assert manifest["counts"]["from_correction"] == 40 and manifest["counts"]["replay_used"] > 0
    trained = json.loads((Path(run.output) / "manifest.json").read_text())
    assert trained["dataset"]["version"] == manifest["version"] and (Path(run.output) / "adapter").is_dir()
    assert store.runs()[0] == run and run.detail["training"]["steps"] == 6
    assert metrics.registry.get_sample_value("driftwatch_retrain_runs_total", {"status": "succeeded"}) == 1
    assert metrics.registry.get_sample_value("driftwatch_training_tokens_total") == trained["tokens_seen"]


def test_bad_data_is_refused_before_training(tiny_model, tmp_path):
    store = SqliteStore(tmp_path / "state.db")
    harvest(store, n=10)
    service = RetrainService(settings(tiny_model).model_copy(update={"base_training_set": None}), tmp_path, store, LocalRunner(tmp_path / "runs"))
    run = service.run("support-v2", focus_routes=("summarize",))
    assert run.status == "refused" and "unique_prompts" in run.reason and run.output is None
    assert any(line.startswith("FAIL unique_prompts") for line in run.detail["gates"])
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_a_failed_run_is_recorded_and_leaves_no_candidate(tiny_model, tmp_path):
    store = SqliteStore(tmp_path / "state.db")
    harvest(store)

    class Crashing(LocalRunner):
        def run(self, spec, run_id, cancel):
            spec.base_model = str(tmp_path / "no-model")
            return super().run(spec, run_id, cancel)

    service = RetrainService(settings(tiny_model), tmp_path, store, Crashing(tmp_path / "runs"))
    run = service.run("support-v2", focus_routes=("summarize",))
    assert run.status == RunStatus.FAILED.value and "exited 1" in run.reason
    assert not (Path(run.output) / "adapter").exists() and store.runs()[0].status == "failed"


def test_a_run_whose_best_checkpoint_is_step_0_is_not_a_candidate(tiny_model, tmp_path):
    """Training that never beats the untrained adapter on the validation split (here: a learning rate too small to
    move a weight) leaves no candidate: a no-op adapter must not reach the gate."""
    store = SqliteStore(tmp_path / "state.db")
    harvest(store)
    cfg = settings(tiny_model, training__learning_rate="1e-30")
    run = RetrainService(cfg, tmp_path, store, LocalRunner(tmp_path / "runs"), Metrics()).run("support-v2")
    assert run.status == "unimproved" and "best step 0 of 6" in run.reason, run.reason
    assert run.detail["training"]["best_step"] == 0 and store.runs()[0].status == "unimproved"


def test_cli_train_and_retrain(tiny_model, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from driftwatch.cli import main

    store = SqliteStore(tmp_path / "state" / "state.db")
    harvest(store)
    store.close()
    env = {"DRIFTWATCH__RETRAIN__BASE_MODEL": str(tiny_model), "DRIFTWATCH__RETRAIN__GOLDEN_SET": str(EXAMPLES / "golden.jsonl"),
           "DRIFTWATCH__RETRAIN__BASE_TRAINING_SET": str(EXAMPLES / "base.jsonl"),
           "DRIFTWATCH__RETRAIN__TRAINING__MAX_STEPS": "4", "DRIFTWATCH__DAEMON__STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(main, ["retrain", "--local", "--adapter", "support-v2", "--routes", "summarize"], env=env)
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output and "pass duplicate_share" in result.output and "candidate adapter ft-" in result.output
    version = result.output.split("candidate adapter ")[1].split(":")[0]
    listed = CliRunner().invoke(main, ["adapters", "list"], env=env)
    assert version in listed.output and "candidate" in listed.output
    shown = CliRunner().invoke(main, ["adapters", "show", version], env=env)  # lineage: run -> dataset -> decision
    run_id = version.removeprefix("ft-")
    assert f"run      {run_id} (succeeded)" in shown.output and "/manifest.json" in shown.output, shown.output
    assert "decision none: a manual retrain" in shown.output and "registered" in shown.output
    status = CliRunner().invoke(main, ["status", "--local"], env=env)
    assert "retrain runs:" in status.output and "succeeded" in status.output
    dataset = next((tmp_path / "state" / "datasets").iterdir())
    trained = CliRunner().invoke(main, ["train", "--dataset", str(dataset), "--out", str(tmp_path / "t"), "--max-steps", "2"],
                                 env=env)
    assert trained.exit_code == 0, trained.output
    assert "steps 2" in trained.output and (tmp_path / "t" / "adapter").is_dir()
    refused = CliRunner().invoke(main, ["retrain", "--local", "--adapter", "support-v2", "--routes", "extract,code"],
                                 env={**env, "DRIFTWATCH__RETRAIN__GATES__MIN_ROUTE_EXAMPLES": "500"})
    assert refused.exit_code == 1 and "refused" in refused.output and "FAIL route_coverage" in refused.output


def test_a_warm_start_continues_from_the_adapter_being_retrained(tiny_model, tmp_path):
    """retrain.warm_start: the run starts from the registered adapter of the version it retrains (its path from the
    registry, never from a request), so its untrained step is that adapter; the base model has none."""
    store = SqliteStore(tmp_path / "state.db")
    harvest(store)
    first = RetrainService(settings(tiny_model), tmp_path, store, LocalRunner(tmp_path / "runs")).run("base")
    registered = {"support-v2": str(Path(first.output) / "adapter")}
    service = RetrainService(settings(tiny_model, warm_start="true"), tmp_path, store, LocalRunner(tmp_path / "runs"),
                             adapter_path=registered.get)
    warm, fresh = service.run("support-v2"), service.run("base")
    spec = lambda run: json.loads((Path(run.output) / "spec.json").read_text())  # noqa: E731
    # copied into the run's directory (where a trainer Job reads it), the registered path recorded
    assert spec(warm)["init_adapter"] == str(Path(warm.output) / "init") and spec(fresh)["init_adapter"] is None
    assert (Path(warm.output) / "init" / "adapter_config.json").is_file()
    assert warm.detail["warm_start_from"] == registered["support-v2"] and fresh.detail["warm_start_from"] is None
    trained = {r.id: json.loads((Path(r.output) / "manifest.json").read_text()) for r in (first, warm, fresh)}
    # the same curated set, so the warm run's step 0 is the first run's best checkpoint, and the fresh run's is not
    assert warm.dataset == first.dataset == fresh.dataset
    assert abs(trained[warm.id]["initial_validation_loss"] - trained[first.id]["best_validation_loss"]) < 1e-4
    assert trained[fresh.id]["initial_validation_loss"] == trained[first.id]["initial_validation_loss"]


def test_the_daemon_looks_up_the_adapter_to_continue_from_in_the_registry(tiny_model, tmp_path):
    """The version a decision names, or what an alias (an alert's "production") serves most; nothing for the base
    model or a name the registry does not know."""
    from driftwatch import app
    from driftwatch.state.registry import AdapterRecord

    env = {"DRIFTWATCH__RETRAIN__BASE_MODEL": str(tiny_model), "DRIFTWATCH__DAEMON__STATE_DIR": str(tmp_path),
           "DRIFTWATCH__RETRAIN__GOLDEN_SET": str(EXAMPLES / "golden.jsonl")}
    registry = SqliteStore(tmp_path / "registry.db")
    for version in ("support-v2", "support-v3"):
        registry.save_adapter(AdapterRecord(version, f"/adapters/{version}", None, None, "production", 0, 0))
    registry.set_aliases({"production": {"support-v2": 0.9, "support-v3": 0.1}}, 0)
    service = app.retrain_service(load_settings(None, env=env), SqliteStore(tmp_path / "state.db"), registry=registry)
    assert service.adapter_path("support-v3") == "/adapters/support-v3"
    assert service.adapter_path("production") == "/adapters/support-v2"
    assert service.adapter_path("base") is None and service.adapter_path("../../etc") is None


def test_a_run_timed_out_while_its_set_is_built_is_never_trained_nor_overwritten(tiny_model, tmp_path):
    """The control loop times a run out (retrain.timeout_s) while its job is still building the set: the job stops
    there, and its `training` save does not overwrite the time-out (it was then saved `cancelled`)."""
    store = SqliteStore(tmp_path / "state.db")
    harvest(store)

    class Runner:
        calls: list = []

        def run(self, spec, run_id, cancel):
            self.calls.append(run_id)
            raise AssertionError("a timed-out run was trained")

    service = RetrainService(settings(tiny_model), tmp_path, store, Runner())
    save_dataset = store.save_dataset

    def timed_out_meanwhile(*args, **kwargs):
        save_dataset(*args, **kwargs)
        service.timed_out(store.runs()[0])

    store.save_dataset = timed_out_meanwhile
    run = service.run("support-v2", focus_routes=("summarize",))
    assert run.status == "timed_out" and store.run(run.id).status == "timed_out" and Runner.calls == []
