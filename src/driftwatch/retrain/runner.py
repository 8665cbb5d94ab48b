"""Where training runs: one protocol, two runners.

* :class:`LocalRunner` — a subprocess (``python -m driftwatch.retrain.trainer SPEC``) with a timeout, cancel and
  its output captured to ``train.log``. The embedded default.
* :class:`KubernetesJobRunner` — a Job from a template (GPU resources, tolerations, node selector), created and
  watched with the ``kubernetes`` client; the trainer writes to a volume the daemon shares, where the result is
  collected.

A run that crashed, timed out or was cancelled is reported as such, and its output directory is left with no
adapter and no manifest — nothing that could be promoted. Success is a ``manifest.json`` with status succeeded.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from driftwatch.procs import stop_group
from driftwatch.retrain.trainer import TrainSpec

log = logging.getLogger(__name__)


class RunStatus(str, enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: RunStatus
    output: Path
    reason: str
    manifest: dict | None = None
    log_tail: str = ""


class Runner(Protocol):
    def run(self, spec: TrainSpec, run_id: str, cancel: threading.Event) -> RunResult: ...


def collect(run_id: str, output: Path, status: RunStatus, reason: str, log_tail: str = "") -> RunResult:
    """The result of a finished run; anything but a complete success leaves nothing promotable behind."""
    manifest_path = output / "manifest.json"
    if status is RunStatus.SUCCEEDED:
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("status") == "succeeded" and (output / "adapter" / "adapter_config.json").exists():
                return RunResult(run_id, status, output, reason, manifest, log_tail)
            reason = "the trainer exited 0 but left no complete adapter and manifest"
        except (OSError, ValueError) as exc:
            reason = f"the trainer exited 0 but its manifest cannot be read: {exc}"
        status = RunStatus.FAILED
    for leftover in (output / "adapter", output / "candidates", output / ".work"):
        shutil.rmtree(leftover, ignore_errors=True)
    manifest_path.unlink(missing_ok=True)
    (output / "failure.json").write_text(json.dumps({"status": status.value, "reason": reason, "at": time.time(),
                                                     "log_tail": log_tail}, indent=1))
    return RunResult(run_id, status, output, reason, None, log_tail)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalRunner:
    def __init__(self, runs_dir: Path, timeout_s: float = 3600.0, python: str = sys.executable,
                 env: dict[str, str] | None = None, poll_s: float = 0.2) -> None:
        self.runs_dir, self.timeout_s, self.python, self.poll_s = Path(runs_dir), timeout_s, python, poll_s
        self.env = env

    def run(self, spec: TrainSpec, run_id: str, cancel: threading.Event) -> RunResult:
        out = Path(spec.output)
        out.mkdir(parents=True, exist_ok=True)
        spec_path = out / "spec.json"
        spec_path.write_text(json.dumps(asdict(spec), indent=1))
        log_path = out / "train.log"
        # torch's OpenMP threads sleep at barriers rather than spin: a CPU trainer beside anything busy otherwise
        # waits on a descheduled sibling at every op (figures: docs/operations.md). An operator's own setting wins.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **(self.env or {})}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen([self.python, "-m", "driftwatch.retrain.trainer", str(spec_path)], stdout=logf,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
            deadline = time.monotonic() + self.timeout_s
            status, reason = None, ""
            while proc.poll() is None:
                if cancel.is_set():
                    status, reason = RunStatus.CANCELLED, "cancelled"
                elif time.monotonic() > deadline:
                    status, reason = RunStatus.TIMED_OUT, f"timed out after {self.timeout_s:g}s"
                if status is not None:
                    stop_group(proc, timeout_s=10.0)
                    break
                time.sleep(self.poll_s)
        if status is None:
            status = RunStatus.SUCCEEDED if proc.returncode == 0 else RunStatus.FAILED
            reason = "" if proc.returncode == 0 else f"the trainer exited {proc.returncode}"
        tail = _tail(log_path)
        if status is RunStatus.FAILED and tail:
            reason += f": {tail.splitlines()[-1]}"
        return collect(run_id, out, status, reason, tail)


TRAINER_UID = 10001  # the trainer image's user (deploy/Dockerfile), who also owns the daemon's files on the volume


class KubernetesJobRunner:
    """Training as a Kubernetes Job on a GPU node. ``runs_dir`` is where the daemon writes runs, on the shared volume;
    ``mount_path`` is where the Job's pod mounts the same volume (claim ``pvc``)."""

    def __init__(self, runs_dir: Path, *, namespace: str, image: str, pvc: str, mount_path: str = "/driftwatch",
                 gpus: int = 1, gpu_resource: str = "nvidia.com/gpu", cpu: str = "4", memory: str = "32Gi",
                 tolerations: list[dict] | None = None, node_selector: dict[str, str] | None = None,
                 service_account: str | None = None, timeout_s: float = 3600.0, poll_s: float = 5.0,
                 api: Callable[[], tuple[Any, Any]] | None = None, labels: dict[str, str] | None = None) -> None:
        self.runs_dir, self.namespace, self.image, self.pvc = Path(runs_dir), namespace, image, pvc
        self.mount_path, self.gpus, self.gpu_resource = mount_path.rstrip("/"), gpus, gpu_resource
        self.cpu, self.memory = cpu, memory
        self.tolerations = tolerations if tolerations is not None else [
            {"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
        self.node_selector, self.service_account = node_selector or {}, service_account
        self.timeout_s, self.poll_s = timeout_s, poll_s
        self.labels = {"app.kubernetes.io/name": "driftwatch-trainer", "app.kubernetes.io/part-of": "driftwatch",
                       **(labels or {})}
        self._api = api or self._default_api

    @staticmethod
    def _default_api() -> tuple[Any, Any]:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return client.BatchV1Api(), client.CoreV1Api()

    def job_name(self, run_id: str) -> str:
        return f"driftwatch-train-{run_id}".lower().replace("_", "-")[:63].rstrip("-")

    def manifest(self, spec: TrainSpec, run_id: str) -> dict:
        """The Job: one pod, no retries, the run's deadline, GPUs requested, the shared volume mounted. Its security
        is fixed here, not by settings: no service-account token, non-root (the trainer image's user), no privilege
        escalation or capabilities, RuntimeDefault seccomp, a read-only root filesystem with /tmp (HOME: the caches
        of torch and transformers) an emptyDir, no network needed (HF_HUB_OFFLINE; deploy/ denies it all egress)."""
        pod_spec_path = f"{self._pod_path(spec.output)}/spec.json"
        resources = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            resources[self.gpu_resource] = str(self.gpus)
        pod: dict[str, Any] = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "trainer", "image": self.image,
                "command": ["python", "-m", "driftwatch.retrain.trainer", pod_spec_path],
                "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HOME", "value": "/tmp"}],
                "resources": {"requests": dict(resources), "limits": dict(resources)},
                "volumeMounts": [{"name": "driftwatch", "mountPath": self.mount_path},
                                 {"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}},
            }],
            "volumes": [{"name": "driftwatch", "persistentVolumeClaim": {"claimName": self.pvc}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}}],
            "tolerations": self.tolerations,
        }
        if self.node_selector:
            pod["nodeSelector"] = self.node_selector
        if self.service_account:
            pod["serviceAccountName"] = self.service_account
        labels = {**self.labels, "driftwatch.io/run": run_id[:63]}
        return {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": self.job_name(run_id), "namespace": self.namespace, "labels": labels},
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": int(self.timeout_s), "ttlSecondsAfterFinished": 86400,
                     "template": {"metadata": {"labels": labels}, "spec": pod}},
        }

    def _pod_path(self, path: str) -> str:
        """A path as the pod sees it. A daemon that mounts the volume where the Job does (deploy/: /data) needs no
        rewriting; otherwise paths under ``runs_dir`` (the volume's root, as the daemon sees it) move to the mount."""
        p = Path(path)
        if p.is_relative_to(self.mount_path) or not p.is_relative_to(self.runs_dir):
            return path
        return f"{self.mount_path}/{p.relative_to(self.runs_dir)}"

    def _to_pod_path(self, spec: TrainSpec) -> TrainSpec:
        return TrainSpec(**{**asdict(spec), "base_model": self._pod_path(spec.base_model),
                            "dataset": self._pod_path(spec.dataset), "output": self._pod_path(spec.output),
                            "init_adapter": self._pod_path(spec.init_adapter) if spec.init_adapter else None,
                            "chat_template": self._pod_path(spec.chat_template) if spec.chat_template else None,
                            "progress": False})

    def run(self, spec: TrainSpec, run_id: str, cancel: threading.Event) -> RunResult:
        out = Path(spec.output)
        if not out.is_relative_to(self.runs_dir):
            raise ValueError(f"the run's output {out} must lie on the shared volume {self.runs_dir}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(json.dumps(asdict(self._to_pod_path(spec)), indent=1))
        batch, core = self._api()
        name = self.job_name(run_id)
        batch.create_namespaced_job(self.namespace, self.manifest(spec, run_id))
        log.info("created Job %s/%s for run %s", self.namespace, name, run_id)
        deadline = time.monotonic() + self.timeout_s + 60
        status, reason = None, ""
        while status is None:
            if cancel.is_set():
                status, reason = RunStatus.CANCELLED, "cancelled"
            elif time.monotonic() > deadline:
                status, reason = RunStatus.TIMED_OUT, f"the Job did not finish within {self.timeout_s:g}s"
            else:
                job = batch.read_namespaced_job_status(name, self.namespace)
                for cond in (job.status.conditions or []) if job.status else []:
                    if cond.status == "True" and cond.type == "Complete":
                        status = RunStatus.SUCCEEDED
                    elif cond.status == "True" and cond.type == "Failed":
                        timed_out = cond.reason == "DeadlineExceeded"
                        status = RunStatus.TIMED_OUT if timed_out else RunStatus.FAILED
                        reason = f"Job {cond.reason}: {cond.message or ''}".strip()
                if status is None:
                    time.sleep(self.poll_s)
        tail = self._logs(core, name)
        (out / "train.log").write_text(tail)
        if status in (RunStatus.CANCELLED, RunStatus.TIMED_OUT):
            batch.delete_namespaced_job(name, self.namespace, propagation_policy="Foreground")
        return collect(run_id, out, status, reason, tail)

    def _logs(self, core, job_name: str) -> str:
        try:
            pods = core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job_name}").items
            return "\n".join(core.read_namespaced_pod_log(p.metadata.name, self.namespace, tail_lines=50)
                             for p in pods)
        except Exception as exc:  # noqa: BLE001 - logs are a courtesy; the Job's status decides
            return f"(logs unavailable: {exc})"
