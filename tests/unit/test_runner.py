"""Runners: the local subprocess runner for real (success, crash, timeout, cancel), and the Kubernetes Job runner
against the `kubernetes` client's API objects faked — no API server can run on this machine (no Docker, no kind,
no cluster), so the fake plays the cluster: it runs the Job's container command with the shared volume mounted."""

import json
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import yaml

from driftwatch.retrain.runner import KubernetesJobRunner, LocalRunner, RunStatus
from driftwatch.retrain.trainer import TrainSpec


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "runs" / "datasets" / "v1"
    d.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": f"Which word is {w}?"}, {"role": "assistant", "content": f"It is {w}."}]}
            for w in ("alpha", "bravo", "charlie", "delta", "echo", "golf") * 4]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    (d / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    return d


def spec(model, dataset, out, **kw):
    return TrainSpec(base_model=str(model), dataset=str(dataset), output=str(out), max_steps=4, eval_every=2,
                     batch_size=4, progress=False, **kw)


def assert_nothing_promotable(result):
    assert result.manifest is None
    assert not (result.output / "adapter").exists() and not (result.output / "manifest.json").exists()
    failure = json.loads((result.output / "failure.json").read_text())
    assert failure["status"] == result.status.value and failure["reason"] == result.reason


def test_local_runner_trains_in_a_subprocess(tiny_model, dataset, tmp_path):
    runner = LocalRunner(tmp_path / "runs")
    result = runner.run(spec(tiny_model, dataset, tmp_path / "runs" / "r1"), "r1", threading.Event())
    assert result.status is RunStatus.SUCCEEDED, result.log_tail
    assert result.manifest["steps"] == 4 and (result.output / "adapter" / "adapter_model.safetensors").exists()
    assert '"status": "succeeded"' in (result.output / "train.log").read_text()  # the trainer's output captured


def test_the_trainer_sleeps_at_openmp_barriers_unless_the_operator_says_otherwise(tmp_path):
    """A CPU trainer whose OpenMP threads spin starves beside any busy neighbour (see LocalRunner.run)."""
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "$OMP_WAIT_POLICY" > "$(dirname "$0")/policy"\nexit 3\n')
    python.chmod(0o755)
    for env, expected in ((None, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")):
        result = LocalRunner(tmp_path, python=str(python), env=env).run(spec("m", "d", tmp_path / "r"), "r",
                                                                         threading.Event())
        assert result.status is RunStatus.FAILED and (tmp_path / "policy").read_text().strip() == expected


def test_a_crashed_run_is_failed_with_its_reason(tiny_model, tmp_path):
    result = LocalRunner(tmp_path).run(spec(tiny_model, tmp_path / "missing", tmp_path / "r2"), "r2", threading.Event())
    assert result.status is RunStatus.FAILED and "exited 1" in result.reason and "missing" in result.reason
    assert_nothing_promotable(result)


def test_timeout_and_cancel_stop_the_trainer(tiny_model, dataset, tmp_path):
    timed = LocalRunner(tmp_path, timeout_s=0.5).run(spec(tiny_model, dataset, tmp_path / "r3"), "r3", threading.Event())
    assert timed.status is RunStatus.TIMED_OUT and "timed out after 0.5s" in timed.reason
    assert_nothing_promotable(timed)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    cancelled = LocalRunner(tmp_path).run(spec(tiny_model, dataset, tmp_path / "r4"), "r4", cancel)
    assert cancelled.status is RunStatus.CANCELLED and time.monotonic() - t0 < 15
    assert_nothing_promotable(cancelled)


class FakeCluster:
    """BatchV1Api + CoreV1Api as the runner uses them. create runs the Job's container command with the volume
    mounted at the same path (the fake's node); status reports Complete/Failed like the Job controller."""

    def __init__(self, fail=False):
        self.jobs, self.deleted, self.fail = {}, [], fail

    def create_namespaced_job(self, namespace, body):
        container = body["spec"]["template"]["spec"]["containers"][0]
        command = [sys.executable if c == "python" else c for c in container["command"]]
        if self.fail:
            command = [sys.executable, "-c", "raise SystemExit(3)"]
        proc = subprocess.run(command, capture_output=True, text=True)
        self.jobs[body["metadata"]["name"]] = (body, proc)

    def read_namespaced_job_status(self, name, namespace):
        _, proc = self.jobs[name]
        cond = SimpleNamespace(type="Complete" if proc.returncode == 0 else "Failed", status="True",
                               reason=None if proc.returncode == 0 else "BackoffLimitExceeded", message="pod failed")
        return SimpleNamespace(status=SimpleNamespace(conditions=[cond]))

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        self.deleted.append(name)

    def list_namespaced_pod(self, namespace, label_selector):
        name = label_selector.split("=", 1)[1]
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name=f"{name}-abcde"))])

    def read_namespaced_pod_log(self, name, namespace, tail_lines=50):
        job = name.rsplit("-", 1)[0]
        proc = self.jobs[job][1]
        return proc.stdout + proc.stderr


def k8s_runner(tmp_path, cluster, **kw):
    runs = tmp_path / "runs"
    return KubernetesJobRunner(runs, namespace="ml", image="ghcr.io/acme/driftwatch-trainer:0.1", pvc="driftwatch-data",
                               mount_path=str(runs), poll_s=0.01, api=lambda: (cluster, cluster),
                               node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, **kw)


def test_kubernetes_job_runner_creates_watches_and_collects(tiny_model, dataset, tmp_path):
    cluster = FakeCluster()
    runner = k8s_runner(tmp_path, cluster)
    model = tmp_path / "runs" / "models" / "tiny"
    model.parent.mkdir(parents=True)
    model.symlink_to(tiny_model, target_is_directory=True)  # the base model on the shared volume
    result = runner.run(spec(model, dataset, tmp_path / "runs" / "run-7"), "support-v2-7", threading.Event())
    assert result.status is RunStatus.SUCCEEDED, result.log_tail
    assert result.manifest["steps"] == 4 and "succeeded" in (result.output / "train.log").read_text()
    body, _ = cluster.jobs["driftwatch-train-support-v2-7"]
    pod = body["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert body["spec"]["backoffLimit"] == 0 and body["spec"]["activeDeadlineSeconds"] == 3600
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "driftwatch-data"


def test_a_failed_job_leaves_nothing_promotable(tiny_model, dataset, tmp_path):
    cluster = FakeCluster(fail=True)
    result = k8s_runner(tmp_path, cluster).run(spec(tiny_model, dataset, tmp_path / "runs" / "r9"), "r9", threading.Event())
    assert result.status is RunStatus.FAILED and "BackoffLimitExceeded" in result.reason
    assert_nothing_promotable(result)


def test_the_job_manifest_passes_kubernetes_validate_strict(tiny_model, tmp_path):
    runner = KubernetesJobRunner(tmp_path / "runs", namespace="ml", image="ghcr.io/acme/trainer:1", pvc="data",
                                 service_account="driftwatch-trainer", gpus=2)
    manifest = runner.manifest(spec(tiny_model, tmp_path / "runs" / "d", tmp_path / "runs" / "out"), "Run_1")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed for resource job/driftwatch-train-run-1" in proc.stdout
    manifest["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1  # not a Container field: strict refuses it
    path.write_text(yaml.safe_dump(manifest))
    assert subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", str(path)], capture_output=True).returncode != 0
    assert manifest["metadata"]["name"] == "driftwatch-train-run-1"
    assert manifest["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "/driftwatch/out/spec.json"
