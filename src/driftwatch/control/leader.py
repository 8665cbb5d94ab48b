"""Leader election: every replica ingests its share of the partitions; one of them, the leader, decides and acts.

``try_acquire()`` is called every ``leader.renew_s``; it takes leadership when it is free and keeps it while held,
and answers whether this replica leads now. Three ways to hold it:

* :class:`Always` — ``leader.backend: none``: one replica, always the leader.
* :class:`FileLock` — ``file``: an exclusive ``flock`` on a file beside the state (replicas on one machine, tests).
  The kernel releases it when the process dies, however it dies, so a follower takes over at its next tick.
* :class:`KubernetesLease` — ``kubernetes``: a ``coordination.k8s.io/v1`` Lease, as client-go's leader election
  does it: the holder renews ``renewTime`` every tick; another replica takes the Lease once it has not been renewed
  for ``leaseDurationSeconds``; every write carries the resourceVersion it read, so two replicas that both see it
  expired cannot both win (one gets 409 Conflict). A leader that cannot renew for ``lease_s`` steps down on its own,
  before another can take over.

What leading means is the daemon's (app.py): the policy, retrain, rollout and the control API's actions run on the
leader only, and its monitor verdict covers the followers' windows (published to the shared store).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def identity() -> str:
    """This replica's name: the pod's name in Kubernetes (POD_NAME, else the hostname), with the process id."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}:{os.getpid()}"


class Leadership(Protocol):
    def try_acquire(self) -> bool: ...
    def release(self) -> None: ...


class Always:
    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{identity()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class KubernetesLease:
    def __init__(self, name: str, namespace: str | None, holder: str, lease_s: float, api: Any = None,
                 clock=time.monotonic) -> None:
        self.name, self.holder, self.lease_s, self.clock = name, holder, lease_s, clock
        self.namespace = namespace or (SERVICE_ACCOUNT / "namespace").read_text().strip()
        self._api = api
        self._renewed: float | None = None  # when this replica last renewed (its own clock)

    @property
    def api(self):
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            self._api = client.CoordinationV1Api()
        return self._api

    def try_acquire(self) -> bool:
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta
        from kubernetes.client.exceptions import ApiException

        now = datetime.now(timezone.utc)
        try:
            try:
                lease = self.api.read_namespaced_lease(self.name, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.api.create_namespaced_lease(self.namespace, V1Lease(
                    metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
                    spec=V1LeaseSpec(holder_identity=self.holder, lease_duration_seconds=int(self.lease_s),
                                     acquire_time=now, renew_time=now, lease_transitions=0)))
                return self._won()
            spec = lease.spec
            mine = spec.holder_identity == self.holder
            expired = (not spec.holder_identity or spec.renew_time is None or
                       spec.renew_time + timedelta(seconds=spec.lease_duration_seconds or self.lease_s) < now)
            if not (mine or expired):
                self._renewed = None
                return False
            if not mine:
                spec.acquire_time = now
                spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.holder_identity, spec.renew_time = self.holder, now
            spec.lease_duration_seconds = int(self.lease_s)
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)  # carries the resourceVersion read
            return self._won()
        except ApiException as exc:
            if exc.status == 409:  # another replica wrote first
                self._renewed = None
                return False
            log.warning("leader lease %s/%s: %s", self.namespace, self.name, exc)
        except Exception as exc:  # noqa: BLE001 - the API server is unreachable: keep leading only within the lease
            log.warning("leader lease %s/%s: %s", self.namespace, self.name, exc)
        # could not renew: lead on only while the last renewal holds, and step down before another can take over
        held = self._renewed is not None and self.clock() - self._renewed < self.lease_s * 2 / 3
        if not held:
            self._renewed = None
        return held

    def _won(self) -> bool:
        self._renewed = self.clock()
        return True

    def release(self) -> None:
        """Hand the Lease back (holder cleared) so a follower need not wait for it to expire."""
        if self._renewed is None:
            return
        self._renewed = None
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.holder:
                lease.spec.holder_identity, lease.spec.renew_time = None, None
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except Exception as exc:  # noqa: BLE001 - shutting down: the Lease expires anyway
            log.warning("could not release the leader lease: %s", exc)


def build(cfg, state_dir: Path, holder: str) -> Leadership:
    """From the ``leader`` settings."""
    if cfg.backend == "none":
        return Always()
    if cfg.backend == "file":
        return FileLock(cfg.lock_path or state_dir / "leader.lock")
    return KubernetesLease(cfg.lease_name, cfg.namespace, holder, cfg.lease_s)
