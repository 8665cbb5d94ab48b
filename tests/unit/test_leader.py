"""Leader election: the file lock between real processes, and the Kubernetes Lease's rules (take when expired, renew
while held, a stale write loses on resourceVersion, step down when the API cannot be reached) against an in-memory
Lease API that keeps resourceVersions as the API server does. No cluster here: the Lease's wire format is the
kubernetes client's own models."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from driftwatch.control.leader import FileLock, KubernetesLease


def test_the_file_lock_is_held_by_one_process_and_freed_when_it_dies(tmp_path):
    path = tmp_path / "leader.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"from driftwatch.control.leader import FileLock; import time; "
                               f"assert FileLock(__import__('pathlib').Path({str(path)!r})).try_acquire(); "
                               f"print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = FileLock(path)
        assert not mine.try_acquire() and not mine.try_acquire()
        holder.kill()  # SIGKILL: no cleanup; the kernel drops the lock
        holder.wait()
        assert mine.try_acquire() and mine.try_acquire()  # taken, then kept
        other = FileLock(path)
        assert not other.try_acquire()
        mine.release()
        assert other.try_acquire()
        other.release()
    finally:
        holder.kill()


k8s = pytest.importorskip("kubernetes", reason="the k8s extra is part of the test environment")
from kubernetes.client.exceptions import ApiException  # noqa: E402


class LeaseApi:
    """read/create/replace of one namespace's Leases, with the API server's optimistic concurrency."""

    def __init__(self):
        self.leases, self.version, self.down = {}, 0, False

    def _check(self):
        if self.down:
            raise ConnectionError("API server unreachable")

    def read_namespaced_lease(self, name, namespace):
        self._check()
        if (namespace, name) not in self.leases:
            raise ApiException(status=404)
        return copy.deepcopy(self.leases[(namespace, name)])

    def create_namespaced_lease(self, namespace, body):
        self._check()
        key = (namespace, body.metadata.name)
        if key in self.leases:
            raise ApiException(status=409)
        self.version += 1
        body.metadata.resource_version = str(self.version)
        self.leases[key] = copy.deepcopy(body)
        return body

    def replace_namespaced_lease(self, name, namespace, body):
        self._check()
        if body.metadata.resource_version != self.leases[(namespace, name)].metadata.resource_version:
            raise ApiException(status=409)
        self.version += 1
        body.metadata.resource_version = str(self.version)
        self.leases[(namespace, name)] = copy.deepcopy(body)
        return body


def test_the_lease_is_taken_when_free_renewed_while_held_and_taken_over_once_expired():
    api, t = LeaseApi(), [0.0]
    a = KubernetesLease("leader", "ns", "pod-a", lease_s=15, api=api, clock=lambda: t[0])
    b = KubernetesLease("leader", "ns", "pod-b", lease_s=15, api=api, clock=lambda: t[0])
    assert a.try_acquire() and not b.try_acquire()
    lease = api.leases[("ns", "leader")]
    assert (lease.spec.holder_identity, lease.spec.lease_duration_seconds, lease.spec.lease_transitions) == ("pod-a", 15, 0)
    assert a.try_acquire() and not b.try_acquire()  # renewed
    api.leases[("ns", "leader")].spec.renew_time -= timedelta(seconds=16)  # a stopped renewing 16 s ago (it died)
    assert b.try_acquire() and not a.try_acquire()
    assert api.leases[("ns", "leader")].spec.holder_identity == "pod-b"
    assert api.leases[("ns", "leader")].spec.lease_transitions == 1
    b.release()  # handed back: a takes it without waiting for it to expire
    assert api.leases[("ns", "leader")].spec.holder_identity is None and a.try_acquire()


def test_two_replicas_that_both_see_an_expired_lease_cannot_both_take_it():
    api = LeaseApi()
    a = KubernetesLease("leader", "ns", "pod-a", lease_s=15, api=api)
    assert a.try_acquire()
    api.leases[("ns", "leader")].spec.renew_time -= timedelta(seconds=60)
    b = KubernetesLease("leader", "ns", "pod-b", lease_s=15, api=api)
    c = KubernetesLease("leader", "ns", "pod-c", lease_s=15, api=api)
    seen_by_c = api.read_namespaced_lease("leader", "ns")
    assert b.try_acquire()  # c writes what it read before b's write: the API server refuses it
    c._api = type("Stale", (), {"read_namespaced_lease": lambda self, n, ns: copy.deepcopy(seen_by_c),
                                "replace_namespaced_lease": api.replace_namespaced_lease})()
    assert not c.try_acquire()
    assert api.leases[("ns", "leader")].spec.holder_identity == "pod-b"


def test_a_leader_that_cannot_reach_the_api_steps_down_before_its_lease_could_be_taken():
    api, t = LeaseApi(), [100.0]
    a = KubernetesLease("leader", "ns", "pod-a", lease_s=15, api=api, clock=lambda: t[0])
    assert a.try_acquire()
    api.down = True
    t[0] += 5
    assert a.try_acquire()  # 5 s since the last renewal: still within the lease
    t[0] += 5.1
    assert not a.try_acquire()  # over two thirds of it: stop acting; another may take over at 15 s
    api.down = False
    assert a.try_acquire()  # nobody took it meanwhile: renewed


def test_a_window_travels_between_replicas_and_merges_exactly():
    from driftwatch.monitor.features import FeatureExtractor
    from driftwatch.monitor.monitor import Window, merge_views
    from driftwatch.monitor.monitor import build_profile
    from driftwatch.events import decode
    from driftwatch.dev.simulate import SimConfig, Simulator

    events = [decode("inference", o.value, 10**6) for o in Simulator(SimConfig(seed=3, feedback_rate=0)).stream(400)]
    ref = build_profile(events[:200])
    fx = FeatureExtractor()
    a, b, whole = (Window(ref, 50, 100, time.time(), 50) for _ in range(3))
    for i, e in enumerate(events[200:]):
        (a if i % 2 else b).add(fx(e), e.response)
        whole.add(fx(e), e.response)
    b.feedback["negative"] = 3
    copy_of_b, closed = Window.from_bytes(b.to_bytes(closed=True))
    assert closed and copy_of_b.to_bytes(True) == b.to_bytes(True)
    merged, merged_closed = merge_views({"x": (a, False)}, [("x", b.to_bytes(True)), ("y", b.to_bytes(False))])["x"]
    assert not merged_closed and merged.events == whole.events == 200
    assert {k: h.counts for k, h in merged.numeric.items()} == {k: h.counts for k, h in whole.numeric.items()}
    assert {k: c.counts for k, c in merged.categorical.items()} == {k: c.counts for k, c in whole.categorical.items()}
    assert merged.feedback["negative"] == 3 and merged.latency_ms_sum == pytest.approx(whole.latency_ms_sum)
