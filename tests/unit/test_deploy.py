"""deploy/: every overlay renders with kustomize (the real kubectl from PyPI), every core object passes
kubernetes-validate --strict, and the Prometheus Operator objects (no schema offline) are checked by content:
the PrometheusRule is alerts.yaml and passes promtool, the ServiceMonitor selects the Services' http ports.
The ConfigMaps' settings are valid for driftwatch, and the trainer Job the daemon would create from them passes
strict validation against the same volume and service account.

Least privilege (docs/security.md, "Deployment"), asserted on the rendered objects of each overlay and on the Job
the daemon builds: each container's security context; a service-account token in the daemon's pod only; the gateway
mounts the state store read-only, or nothing with PostgreSQL; vLLM requires a key from a Secret, which the daemon and
the gateway send; NetworkPolicies deny by default and allow exactly the paths listed here; the Role grants exactly
the API calls the daemon's code makes."""

import copy
import shutil
import subprocess
import sys
import threading
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from driftwatch.config import Settings, load_settings
from driftwatch.control.leader import KubernetesLease
from driftwatch.retrain.runner import KubernetesJobRunner
from driftwatch.retrain.service import build_runner
from driftwatch.retrain.trainer import TrainSpec

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"
CRDS = {"ServiceMonitor", "PrometheusRule"}
OVERLAYS = {"dev": "driftwatch-dev", "prod": "driftwatch", "prod-postgresql": "driftwatch"}  # overlay -> namespace
WORKLOADS = {"daemon": "driftwatch", "gateway": "driftwatch-gateway", "vllm": "vllm"}  # -> Deployment
API_KEY_REF = {"name": "driftwatch-secrets", "key": "vllm-api-key"}


def render(overlay: str) -> list[dict]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request):
    docs = render(request.param)
    return request.param, docs, {(d["kind"], d["metadata"]["name"]): d for d in docs}


def pod(objs, name):
    return objs[("Deployment", name)]["spec"]["template"]["spec"]


def env_of(container) -> dict[str, str]:
    """A container's environment as the process sees it; a Secret's value reads 'secret:NAME/KEY'."""
    out = {}
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        out[e["name"]] = f"secret:{ref['name']}/{ref['key']}" if ref else e.get("value", "")
    return out


def config_of(objs, name) -> str:
    """The settings file a Deployment's pod reads: the ConfigMap (kustomize's hashed name) its config volume names."""
    (vol,) = [v for v in pod(objs, name)["volumes"] if v["name"] == "config"]
    (cm,) = [d for (k, n), d in objs.items() if k == "ConfigMap" and n == vol["configMap"]["name"]]
    (c,) = pod(objs, name)["containers"]
    assert c["args"][-1] == "/etc/driftwatch/driftwatch.yaml" and list(cm["data"]) == ["driftwatch.yaml"]
    return cm["data"]["driftwatch.yaml"]


def settings_of(objs, name="driftwatch") -> Settings:
    """The settings a Deployment's process runs with: its ConfigMap file, then its DRIFTWATCH__ environment."""
    data = yaml.safe_load(config_of(objs, name)) or {}
    for var, value in env_of(pod(objs, name)["containers"][0]).items():
        if var.startswith("DRIFTWATCH__"):
            *path, leaf = var.removeprefix("DRIFTWATCH__").lower().split("__")
            node = data
            for key in path:
                node = node.setdefault(key, {})
            node[leaf] = value
    return Settings.model_validate(data)


def trainer_job(objs) -> dict:
    """The Job the daemon creates from its settings (retrain.service.build_runner, as the daemon builds it)."""
    settings = settings_of(objs)
    runner = build_runner(settings.retrain, settings.daemon.state_dir)
    out = settings.retrain.runs_dir / "20261124-100000-d7"
    return runner.manifest(TrainSpec(base_model=str(settings.retrain.base_model), dataset="/data/datasets/v1",
                                     output=str(out)), "20261124-100000-d7")


def pod_templates(objs) -> dict[str, dict]:
    """Every pod driftwatch runs: the three Deployments and the trainer Job."""
    pods = {w: pod(objs, name) for w, name in WORKLOADS.items()}
    return {**pods, "trainer": trainer_job(objs)["spec"]["template"]["spec"]}


def test_every_core_object_passes_strict_schema_validation(rendered):
    overlay, docs, objs = rendered
    assert {k for k, _ in objs} == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service",
                                    "PersistentVolumeClaim", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
                                    "ServiceMonitor", "PrometheusRule"}
    namespace = OVERLAYS[overlay]
    for doc in docs:
        if doc["kind"] not in CRDS:
            kubernetes_validate.validate(doc, latest_version(), strict=True)
        assert doc["metadata"].get("namespace") == (None if doc["kind"] == "Namespace" else namespace), doc["kind"]
    broken = copy.deepcopy(objs[("Deployment", "driftwatch")])
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFS"] = True  # a misspelt field
    with pytest.raises(Exception):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def test_the_daemon_and_gateway_pods_are_probed_and_sized(rendered):
    _, _, objs = rendered
    daemon_settings, gateway_settings = settings_of(objs), settings_of(objs, "driftwatch-gateway")
    for name, port, ready in (("driftwatch", daemon_settings.http.port, "/readyz"),
                              ("driftwatch-gateway", gateway_settings.gateway.port, "/healthz")):
        (c,) = pod(objs, name)["containers"]
        assert c["ports"][0]["containerPort"] == port and c["readinessProbe"]["httpGet"]["path"] == ready
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        assert c["image"].startswith("ghcr.io/driftwatch/driftwatch:")
    daemon = pod(objs, "driftwatch")
    assert objs[("Deployment", "driftwatch")]["spec"]["strategy"]["type"] == "Recreate"
    assert daemon["terminationGracePeriodSeconds"] > daemon_settings.daemon.shutdown_grace_s
    token = next(e for e in daemon["containers"][0]["env"] if e["name"] == "DRIFTWATCH__CONTROL__TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "driftwatch-control", "key": "token"}
    # the gateway's replicas sign feedback receipts with one key, and have time for requests in flight plus the drain
    gateway = pod(objs, "driftwatch-gateway")
    assert env_of(gateway["containers"][0])["DRIFTWATCH__GATEWAY__FEEDBACK_SECRET"] == \
        "secret:driftwatch-secrets/feedback-secret"
    assert gateway["terminationGracePeriodSeconds"] > 2 * gateway_settings.daemon.shutdown_grace_s


# -- least privilege: containers ---------------------------------------------------------------------------------------
def effective(spec: dict, container: dict) -> dict:
    """A container's security context as the kubelet applies it: the pod's, overridden by the container's."""
    pod_level = {k: v for k, v in spec.get("securityContext", {}).items()
                 if k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")}
    return {**pod_level, **container.get("securityContext", {})}


def test_every_container_runs_unprivileged_non_root_on_a_read_only_root(rendered):
    """Trainer and vLLM included: no privilege escalation, no capabilities, RuntimeDefault seccomp, non-root, a
    read-only root filesystem; what a container writes is an emptyDir, or the shared volume for the daemon and the
    trainer only. No host namespaces or paths anywhere. The namespace enforces Pod Security 'restricted'."""
    overlay, _, objs = rendered
    writable_volumes = set()
    for workload, spec in pod_templates(objs).items():
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC", "hostUsers")), workload
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert not any("hostPath" in v for v in volumes.values()), workload
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = effective(spec, c)
            assert sc.get("allowPrivilegeEscalation") is False, (workload, c["name"])
            assert sc.get("privileged", False) is False, (workload, c["name"])
            assert sc.get("capabilities") == {"drop": ["ALL"]}, (workload, c["name"])
            assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, (workload, c["name"])
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 1) != 0, (workload, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (workload, c["name"])
            for m in c.get("volumeMounts", []):
                volume = volumes[m["name"]]
                if not m.get("readOnly") and "emptyDir" not in volume:
                    writable_volumes.add((workload, m["mountPath"], volume["persistentVolumeClaim"]["claimName"]))
                if "emptyDir" in volume:
                    assert volume["emptyDir"].get("sizeLimit"), (workload, m["name"])  # a runaway write stays bounded
    assert writable_volumes == {("daemon", "/data", "driftwatch-data"), ("trainer", "/data", "driftwatch-data")}
    namespace = objs[("Namespace", OVERLAYS[overlay])]["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted", overlay


def test_only_the_daemon_pod_has_a_service_account_token(rendered):
    _, _, objs = rendered
    accounts = {name: d.get("automountServiceAccountToken", True)
                for (k, name), d in objs.items() if k == "ServiceAccount"}
    mounted = {}
    for workload, spec in pod_templates(objs).items():
        account = spec.get("serviceAccountName", "default")
        mounted[workload] = spec.get("automountServiceAccountToken", accounts.get(account, True))
        if workload != "daemon":  # set on the pod itself: it holds whatever account the pod is given
            assert spec.get("automountServiceAccountToken") is False, workload
    assert mounted == {"daemon": True, "gateway": False, "vllm": False, "trainer": False}
    assert pod_templates(objs)["trainer"]["serviceAccountName"] == "driftwatch-trainer"
    assert accounts["driftwatch-trainer"] is False and accounts["driftwatch-gateway"] is False


def test_the_gateway_mounts_the_state_store_read_only_or_no_volume_with_postgresql(rendered, tmp_path):
    """With SQLite the gateway needs the store's file (and the -wal and -shm the daemon keeps): it mounts only the
    store's directory, read-only. With PostgreSQL it mounts no shared volume at all. Either way its settings load
    without the daemon's files (load_settings checks that the paths it names exist)."""
    _, _, objs = rendered
    spec = pod(objs, "driftwatch-gateway")
    gateway, daemon = settings_of(objs, "driftwatch-gateway"), settings_of(objs)
    claims = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert gateway.registry_path == daemon.registry_path  # the daemon's store: the alias table it writes
    if str(gateway.registry_path).startswith("postgresql://"):
        assert claims == [] and daemon.store.url == gateway.store.url
    else:
        (vol,) = claims
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == vol["name"]]
        assert vol["persistentVolumeClaim"] == {"claimName": "driftwatch-data", "readOnly": True}
        assert mount["readOnly"] is True
        store = PurePosixPath(gateway.registry_path)
        (daemon_mount,) = [m for m in pod(objs, "driftwatch")["containers"][0]["volumeMounts"] if m["name"] == "data"]
        assert mount["mountPath"] == str(store.parent)  # the store's directory, nothing else of the volume
        assert mount["subPath"] == str(store.parent.relative_to(daemon_mount["mountPath"]))
    gateway_only = {"feedback_secret", "feedback_callers"}  # the receipts' secrets: the gateway's alone
    assert gateway.kafka == daemon.kafka  # its own file says the same
    assert gateway.gateway.model_dump(exclude=gateway_only) == daemon.gateway.model_dump(exclude=gateway_only)
    path = tmp_path / "gateway.yaml"
    path.write_text(config_of(objs, "driftwatch-gateway"))
    assert load_settings(path, env=env_of(spec["containers"][0])).registry_path == gateway.registry_path


def test_vllm_requires_a_key_from_a_secret_that_the_daemon_and_the_gateway_send(rendered):
    """The key is VLLM_API_KEY, never an argument (vLLM logs its arguments at start); the daemon and the gateway
    read the same Secret key into gateway.upstream_api_key. Every Secret any pod reads is in secret.example.yaml."""
    _, _, objs = rendered
    (c,) = pod(objs, "vllm")["containers"]
    key = next(e for e in c["env"] if e["name"] == "VLLM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == API_KEY_REF
    assert not any(a.startswith("--api-key") for a in c["args"] + c.get("command", []))
    for name in ("driftwatch", "driftwatch-gateway"):
        assert settings_of(objs, name).gateway.upstream_key() == f"secret:{API_KEY_REF['name']}/{API_KEY_REF['key']}"
    examples = {d["metadata"]["name"]: d["stringData"]
                for d in yaml.safe_load_all((ROOT / "deploy/base/secret.example.yaml").read_text())}
    for spec in pod_templates(objs).values():
        for e in spec["containers"][0].get("env", []):
            if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                assert ref["key"] in examples[ref["name"]], ref


def test_vllm_serves_runtime_lora_updates_with_room_for_three_adapters(rendered):
    _, _, objs = rendered
    (c,) = pod(objs, "vllm")["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and "--enable-lora" in c["args"]
    assert int(next(a for a in c["args"] if a.startswith("--max-loras=")).split("=")[1]) >= 3
    settings = settings_of(objs)
    served = next(a for a in c["args"] if a.startswith("--served-model-name=")).split("=")[1]
    assert served == settings.gateway.base_model and settings.rollout.vllm_urls == ["http://vllm:8000"]


# -- least privilege: network ------------------------------------------------------------------------------------------
def selects(selector: dict, labels: dict) -> bool:
    ok = selector.get("matchLabels", {}).items() <= labels.items()
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        ok &= {"In": value in e.get("values", ()), "NotIn": value not in e.get("values", ()),
               "Exists": e["key"] in labels, "DoesNotExist": e["key"] not in labels}[e["operator"]]
    return ok


def describe(selector: dict) -> str:
    parts = [f"{k}={v}" for k, v in sorted(selector.get("matchLabels", {}).items())]
    parts += [f"{e['key']} {e['operator']} {','.join(sorted(e.get('values', [])))}"
              for e in selector.get("matchExpressions", [])]
    return ";".join(parts) or "*"


def peers(rule_peers, labels: dict[str, dict]) -> set[str]:
    """What a rule's from/to admits: 'any', our own workloads ('pod:gateway'), or a namespace's pods or addresses."""
    if not rule_peers:
        return {"any"}
    out = set()
    for p in rule_peers:
        if "ipBlock" in p:
            out.add(f"ip:{p['ipBlock']['cidr']}" + "".join(f" except {e}" for e in p["ipBlock"].get("except", [])))
        elif "namespaceSelector" not in p:  # this namespace: the workloads it selects
            out |= {f"pod:{w}" for w, l in labels.items() if selects(p["podSelector"], l)}
        else:
            ns_labels = p["namespaceSelector"].get("matchLabels", {})
            ns = ns_labels.get("kubernetes.io/metadata.name", describe(p["namespaceSelector"]))
            out.add(f"ns:{ns}/{describe(p.get('podSelector', {}))}")
    return out


def allowed(objs, direction: str, labels: dict[str, dict]) -> dict[str, set | None]:
    """Per workload: None if no policy isolates it in this direction (everything allowed), else the (peer, port)
    pairs the policies that select it allow."""
    out: dict[str, set | None] = {w: None for w in labels}
    key, side = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for (kind, _), policy in objs.items():
        if kind != "NetworkPolicy" or direction not in policy["spec"]["policyTypes"]:
            continue
        for w, l in labels.items():
            if not selects(policy["spec"]["podSelector"], l):
                continue
            out[w] = out[w] or set()
            for rule in policy["spec"].get(key) or []:
                ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])} or {"all ports"}
                out[w] |= {(peer, port) for peer in peers(rule.get(side), labels) for port in ports}
    return out


def test_network_policies_deny_by_default_and_allow_only_what_each_workload_needs(rendered):
    """Ingress and egress, for every workload (the trainer Job's pod included), are the listed paths and no more:
    vLLM is reached by the gateway and the daemon only; the daemon by Prometheus, Alertmanager and its peers; the
    trainer and vLLM call nothing. Ports and namespaces follow the settings (Kafka's bootstrap address, ports)."""
    _, _, objs = rendered
    labels = {w: objs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"] for w, name in WORKLOADS.items()}
    labels["trainer"] = trainer_job(objs)["spec"]["template"]["metadata"]["labels"]
    (deny,) = [p["spec"] for (k, _), p in objs.items() if k == "NetworkPolicy" and p["spec"]["podSelector"] == {}]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and not deny.get("ingress") and not deny.get("egress")
    daemon, gateway = settings_of(objs), settings_of(objs, "driftwatch-gateway")
    (vllm_port,) = [p["containerPort"] for p in pod(objs, "vllm")["containers"][0]["ports"]]
    assert {u.rsplit(":", 1)[1] for u in daemon.vllm_urls + gateway.gateway.upstreams} == {"8000"}  # the Service's
    hosts = {tuple(s.rsplit(":", 1)) for s in daemon.kafka.bootstrap_servers + gateway.kafka.bootstrap_servers}
    kafka = {(f"ns:{host.split('.')[1]}/*", ("TCP", int(port))) for host, port in hosts}  # <service>.<namespace>.svc
    dns = {("ns:kube-system/k8s-app=kube-dns", (proto, 53)) for proto in ("UDP", "TCP")}
    database = set()
    if daemon.store.url:
        from urllib.parse import urlsplit

        url = urlsplit(daemon.store.url)
        database = {(f"ns:{url.hostname.split('.')[1]}/*", ("TCP", url.port))}
    http, api_server = ("TCP", daemon.http.port), {("ip:0.0.0.0/0", ("TCP", 443)), ("ip:0.0.0.0/0", ("TCP", 6443))}
    assert allowed(objs, "Egress", labels) == {
        "gateway": {("pod:vllm", ("TCP", vllm_port))} | kafka | dns | database,
        "daemon": {("pod:vllm", ("TCP", vllm_port)), ("pod:daemon", http)} | kafka | dns | database | api_server,
        "vllm": set(),
        "trainer": set(),
    }
    assert allowed(objs, "Ingress", labels) == {
        "gateway": {("any", ("TCP", gateway.gateway.port))},
        "daemon": {("ns:monitoring/app.kubernetes.io/name In alertmanager,prometheus", http), ("pod:daemon", http)},
        "vllm": {("pod:gateway", ("TCP", vllm_port)), ("pod:daemon", ("TCP", vllm_port))},
        "trainer": set(),
    }


def test_the_policy_reading_sees_an_opened_path():
    """The evaluator above is not blind: widening vLLM's ingress to every driftwatch pod, or dropping an egress
    policy, changes what it reports."""
    objs = {(d["kind"], d["metadata"]["name"]): d for d in render("prod")}
    labels = {w: objs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"] for w, name in WORKLOADS.items()}
    labels["trainer"] = trainer_job(objs)["spec"]["template"]["metadata"]["labels"]
    objs[("NetworkPolicy", "vllm")]["spec"]["ingress"][0]["from"] = [{"podSelector": {}}]
    assert {p for p, _ in allowed(objs, "Ingress", labels)["vllm"]} == {f"pod:{w}" for w in labels}
    objs = {k: v for k, v in objs.items() if k != ("NetworkPolicy", "default-deny")}
    objs[("NetworkPolicy", "driftwatch-trainer")]["spec"]["policyTypes"] = ["Ingress"]
    assert allowed(objs, "Egress", labels)["trainer"] is None


def test_services_and_budgets_select_the_pods_they_mean(rendered):
    _, _, objs = rendered
    labels = {name: objs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"] for name in WORKLOADS.values()}
    for name in labels:
        svc = objs[("Service", name)]
        assert [n for n in labels if selects({"matchLabels": svc["spec"]["selector"]}, labels[n])] == [name]
        assert svc["spec"]["ports"][0]["targetPort"] == "http"
    for name in ("driftwatch", "driftwatch-gateway"):
        selector = objs[("PodDisruptionBudget", name)]["spec"]["selector"]
        assert [n for n in labels if selects(selector, labels[n])] == [name]


# -- least privilege: the Kubernetes API -------------------------------------------------------------------------------
class Recorder:
    """A kubernetes client API (BatchV1Api, CoreV1Api, CoordinationV1Api) that records each call and answers as a
    cluster where every Job completes and the Lease is absent until created."""

    def __init__(self, group: str, calls: list, state: dict) -> None:
        self.group, self.calls, self.state = group, calls, state

    def __getattr__(self, method):
        def call(*args, **kwargs):
            self.calls.append((self.group, method, args))
            from kubernetes.client.exceptions import ApiException

            if method == "read_namespaced_job_status":
                done = SimpleNamespace(type="Complete", status="True", reason=None, message=None)
                return SimpleNamespace(status=SimpleNamespace(conditions=[done]))
            if method == "list_namespaced_pod":
                return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name="trainer-pod"))])
            if method == "read_namespaced_pod_log":
                return "log"
            if method == "read_namespaced_lease":
                if "lease" not in self.state:
                    raise ApiException(status=404)
                return copy.deepcopy(self.state["lease"])
            if method in ("create_namespaced_lease", "replace_namespaced_lease"):
                self.state["lease"] = copy.deepcopy(args[-1])
            return None
        return call


VERBS = {"create": "create", "read": "get", "replace": "update", "patch": "patch", "delete": "delete", "list": "list"}


def permission(group: str, method: str, args: tuple) -> tuple[str, str, str, str | None]:
    """The RBAC permission a client call needs:
    read_namespaced_job_status(name, ns) -> (batch, jobs/status, get, name)."""
    verb, _, rest = method.partition("_namespaced_")
    resource, _, sub = rest.partition("_")
    name = args[0] if VERBS[verb] in ("get", "update", "patch", "delete") else None
    return group, f"{resource}s" + (f"/{sub}" if sub else ""), VERBS[verb], name


def test_the_role_grants_exactly_the_api_calls_the_daemon_makes(rendered, tmp_path):
    """The calls are the daemon's own code's — KubernetesJobRunner runs a Job to completion and cancels one,
    KubernetesLease takes, renews and releases the Lease — each mapped to the permission it needs. Every call is
    granted, every grant is used, and the Lease's get and update are limited to its name."""
    _, _, objs = rendered
    settings = settings_of(objs)
    calls, state = [], {}
    batch, core = Recorder("batch", calls, state), Recorder("", calls, state)
    k = settings.retrain.kubernetes
    runner = KubernetesJobRunner(tmp_path, namespace=k.namespace, image=k.image, pvc=k.pvc, mount_path=k.mount_path,
                                 service_account=k.service_account, poll_s=0, api=lambda: (batch, core))
    for run_id, cancel in (("done", threading.Event()), ("cancelled", threading.Event())):
        if run_id == "cancelled":
            cancel.set()
        runner.run(TrainSpec(base_model="/data/models/base", dataset="/data/datasets/v1",
                             output=str(tmp_path / run_id)), run_id, cancel)
    lease = KubernetesLease(settings.leader.lease_name, k.namespace, "pod-a", lease_s=15,
                            api=Recorder("coordination.k8s.io", calls, state))
    assert lease.try_acquire() and lease.try_acquire()  # created, then renewed
    lease.release()
    used = {permission(*c) for c in calls}

    rules = objs[("Role", "driftwatch")]["rules"]
    granted = {(g, r, v, n) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"] for n in rule.get("resourceNames", [None])}
    lease_name = settings.leader.lease_name
    assert granted == {("batch", "jobs", "create", None), ("batch", "jobs", "delete", None),
                       ("batch", "jobs/status", "get", None), ("", "pods", "list", None), ("", "pods/log", "get", None),
                       ("coordination.k8s.io", "leases", "create", None),
                       ("coordination.k8s.io", "leases", "get", lease_name),
                       ("coordination.k8s.io", "leases", "update", lease_name)}

    def grants(g, call):
        return g[:3] == call[:3] and g[3] in (None, call[3])

    assert [c for c in used if not any(grants(g, c) for g in granted)] == []  # every call is allowed
    assert [g for g in granted if not any(grants(g, c) for c in used)] == []  # every permission is used
    binding = objs[("RoleBinding", "driftwatch")]
    assert binding["roleRef"]["name"] == "driftwatch" and [k for k, _ in objs].count("RoleBinding") == 1
    namespace = binding["metadata"]["namespace"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "driftwatch", "namespace": namespace}]
    as_daemon = [w for w, spec in pod_templates(objs).items() if spec.get("serviceAccountName") == "driftwatch"]
    assert as_daemon == ["daemon"]


# -- storage and monitoring --------------------------------------------------------------------------------------------
def test_adapter_storage_is_one_rwx_volume_at_the_same_path_everywhere(rendered):
    """Trainer Jobs write adapters where the daemon registers them and vLLM loads them: one claim, one path."""
    _, _, objs = rendered
    claim = objs[("PersistentVolumeClaim", "driftwatch-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    settings = settings_of(objs)
    k = settings.retrain.kubernetes
    for name in ("driftwatch", "vllm"):
        spec = pod(objs, name)
        (vol,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim")]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == vol["name"]]
        assert vol["persistentVolumeClaim"]["claimName"] == k.pvc and mount["mountPath"] == k.mount_path == "/data"
        assert "subPath" not in mount
    assert settings.retrain.runs_dir.is_relative_to(k.mount_path) and settings.daemon.state_dir.is_relative_to("/data")
    # the GPU trainer Job the daemon creates from these settings: valid, on the same claim, as the trainer account
    job = trainer_job(objs)
    kubernetes_validate.validate(job, latest_version(), strict=True)
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "driftwatch-trainer" and ("ServiceAccount", "driftwatch-trainer") in objs
    (vol,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim")]
    assert vol["persistentVolumeClaim"]["claimName"] == k.pvc
    out = settings.retrain.runs_dir / "20261124-100000-d7"
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
