"""deploy/: both overlays render with kustomize (the real kubectl from PyPI), every core object passes
kubernetes-validate --strict, and the Prometheus Operator objects (no schema offline) are checked by content:
the PrometheusRule is alerts.yaml and passes promtool, the ServiceMonitor selects the Services' http ports.
The ConfigMap's settings are valid for driftwatch, and the trainer Job the daemon would create from them passes
strict validation against the same volume and service account."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from driftwatch.config import Settings
from driftwatch.retrain.runner import KubernetesJobRunner
from driftwatch.retrain.trainer import TrainSpec

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"
CRDS = {"ServiceMonitor", "PrometheusRule"}


def render(overlay: str) -> list[dict]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request):
    docs = render(request.param)
    return request.param, docs, {(d["kind"], d["metadata"]["name"]): d for d in docs}


def pod(objs, name):
    return objs[("Deployment", name)]["spec"]["template"]["spec"]


def test_every_core_object_passes_strict_schema_validation(rendered):
    overlay, docs, objs = rendered
    assert {k for k, _ in objs} == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service",
                                    "PersistentVolumeClaim", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
                                    "ServiceMonitor", "PrometheusRule"}
    namespace = {"dev": "driftwatch-dev", "prod": "driftwatch"}[overlay]
    for doc in docs:
        if doc["kind"] not in CRDS:
            kubernetes_validate.validate(doc, latest_version(), strict=True)
        assert doc["metadata"].get("namespace") == (None if doc["kind"] == "Namespace" else namespace), doc["kind"]
    broken = copy.deepcopy(objs[("Deployment", "driftwatch")])
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFS"] = True  # a misspelt field
    with pytest.raises(Exception):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def test_the_daemon_and_gateway_pods_are_locked_down_and_probed(rendered):
    _, _, objs = rendered
    settings = settings_of(objs)
    for name, port, ready in (("driftwatch", settings.http.port, "/readyz"),
                              ("driftwatch-gateway", settings.gateway.port, "/healthz")):
        spec = pod(objs, name)
        (c,) = spec["containers"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
        assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["ports"][0]["containerPort"] == port and c["readinessProbe"]["httpGet"]["path"] == ready
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        assert c["image"].startswith("ghcr.io/driftwatch/driftwatch:")
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/tmp", "/etc/driftwatch", "/data"} <= mounts  # writable: the emptyDir and the shared volume only
    daemon = pod(objs, "driftwatch")
    assert objs[("Deployment", "driftwatch")]["spec"]["strategy"]["type"] == "Recreate"
    assert daemon["terminationGracePeriodSeconds"] > settings.daemon.shutdown_grace_s
    token = next(e for e in daemon["containers"][0]["env"] if e["name"] == "DRIFTWATCH__CONTROL__TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "driftwatch-control", "key": "token"}


def settings_of(objs) -> Settings:
    (cm,) = [d for (k, _), d in objs.items() if k == "ConfigMap"]
    for name in ("driftwatch", "driftwatch-gateway"):
        (vol,) = [v for v in pod(objs, name)["volumes"] if v["name"] == "config"]
        assert vol["configMap"]["name"] == cm["metadata"]["name"]  # the hashed name kustomize generated
    return Settings.model_validate(yaml.safe_load(cm["data"]["driftwatch.yaml"]))


def test_the_role_allows_jobs_pod_reads_and_the_lease_only(rendered):
    _, _, objs = rendered
    rules = {(g, r): set(rule["verbs"]) for rule in objs[("Role", "driftwatch")]["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {("batch", "jobs"): {"create", "get", "list", "watch", "delete"}, ("", "pods"): {"get", "list", "watch"},
                     ("", "pods/log"): {"get"}, ("coordination.k8s.io", "leases"): {"create", "get", "update"}}
    binding = objs[("RoleBinding", "driftwatch")]
    assert binding["subjects"][0]["name"] == pod(objs, "driftwatch")["serviceAccountName"] == "driftwatch"


def test_services_policies_and_budgets_select_the_pods_they_mean(rendered):
    _, _, objs = rendered
    labels = {name: objs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
              for name in ("driftwatch", "driftwatch-gateway", "vllm")}
    selects = lambda selector, name: selector.items() <= labels[name].items()  # noqa: E731
    for name in labels:
        svc = objs[("Service", name)]
        assert [n for n in labels if selects(svc["spec"]["selector"], n)] == [name]
        assert svc["spec"]["ports"][0]["targetPort"] == "http"
    for kind, name, target in (("PodDisruptionBudget", "driftwatch", "driftwatch"),
                               ("PodDisruptionBudget", "driftwatch-gateway", "driftwatch-gateway"),
                               ("NetworkPolicy", "driftwatch", "driftwatch"), ("NetworkPolicy", "vllm", "vllm")):
        spec = objs[(kind, name)]["spec"]
        selector = spec["selector"] if kind == "PodDisruptionBudget" else spec["podSelector"]
        assert [n for n in labels if selects(selector["matchLabels"], n)] == [target], (kind, name)
    # vLLM admits the daemon and the gateway, nothing else
    (allowed,) = objs[("NetworkPolicy", "vllm")]["spec"]["ingress"][0]["from"]
    assert {n for n in labels if selects(allowed["podSelector"]["matchLabels"], n)} == {"driftwatch", "driftwatch-gateway"}


def test_vllm_serves_runtime_lora_updates_with_room_for_three_adapters(rendered):
    _, _, objs = rendered
    (c,) = pod(objs, "vllm")["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and "--enable-lora" in c["args"]
    assert int(next(a for a in c["args"] if a.startswith("--max-loras=")).split("=")[1]) >= 3
    settings = settings_of(objs)
    served = next(a for a in c["args"] if a.startswith("--served-model-name=")).split("=")[1]
    assert served == settings.gateway.base_model and settings.rollout.vllm_urls == ["http://vllm:8000"]


def test_adapter_storage_is_one_rwx_volume_at_the_same_path_everywhere(rendered, tmp_path):
    """Trainer Jobs write adapters where the daemon registers them and vLLM loads them: one claim, one path."""
    _, _, objs = rendered
    claim = objs[("PersistentVolumeClaim", "driftwatch-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    settings = settings_of(objs)
    k = settings.retrain.kubernetes
    for name in ("driftwatch", "driftwatch-gateway", "vllm"):
        spec = pod(objs, name)
        (vol,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim")]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == vol["name"]]
        assert vol["persistentVolumeClaim"]["claimName"] == k.pvc and mount["mountPath"] == k.mount_path == "/data"
    assert settings.retrain.runs_dir.is_relative_to(k.mount_path) and settings.daemon.state_dir.is_relative_to("/data")
    # the GPU trainer Job the daemon creates from these settings: valid, on the same claim, as the trainer account
    runner = KubernetesJobRunner(settings.retrain.runs_dir, namespace=k.namespace, image=k.image, pvc=k.pvc,
                                 mount_path=k.mount_path, gpus=k.gpus, gpu_resource=k.gpu_resource, cpu=k.cpu,
                                 memory=k.memory, service_account=k.service_account)
    out = settings.retrain.runs_dir / "20261124-100000-d7"
    job = runner.manifest(TrainSpec(base_model=str(settings.retrain.base_model), dataset="/data/datasets/v1",
                                    output=str(out)), "20261124-100000-d7")
    kubernetes_validate.validate(job, latest_version(), strict=True)
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "driftwatch-trainer" and ("ServiceAccount", "driftwatch-trainer") in objs
    assert spec["containers"][0]["command"][-1] == f"{out}/spec.json"  # the daemon's path is the pod's path
    assert job["metadata"]["namespace"] == objs[("Deployment", "driftwatch")]["metadata"]["namespace"]


def test_the_prometheus_operator_objects_carry_the_tested_rules_and_scrape_the_http_ports(rendered, tmp_path):
    _, _, objs = rendered
    rule = objs[("PrometheusRule", "driftwatch")]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())["groups"]
    promtool = shutil.which("promtool")
    if promtool:
        path = tmp_path / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    monitor = objs[("ServiceMonitor", "driftwatch")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = {name for (kind, name), d in objs.items()
               if kind == "Service" and selector.items() <= d["metadata"].get("labels", {}).items()}
    assert scraped == {"driftwatch", "driftwatch-gateway"}  # job="driftwatch" is the daemon, as DriftwatchDown expects
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and all(
        endpoint["port"] in {p["name"] for p in objs[("Service", n)]["spec"]["ports"]} for n in scraped)
