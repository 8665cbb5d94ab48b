"""Long work off the control thread: training runs, evaluations, the evidence of a decision.

A job is a function of a cancel event; it records its own result in the state store (a run's status, an
evaluation's record, a decision's evidence), and the reconciler's next tick reads it there. So the tick never waits
for a job, a job never moves the loop by itself, and a job lost with its process (a restart, a new leader) shows as
"no result and not running", which the tick knows how to handle. A job that raises is logged with its trace.

:class:`Jobs` runs them on a small thread pool (locally, training itself is a subprocess the job watches; on
Kubernetes, a Job it watches). :class:`InlineJobs` runs them on the spot, for `driftwatch promote --wait` and tests.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

log = logging.getLogger(__name__)

Job = Callable[[threading.Event], object]


class Jobs:
    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="driftwatch-job")
        self._running: dict[str, tuple[Future, threading.Event]] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, job: Job) -> bool:
        """Start ``job`` unless one under ``key`` is still running (then False)."""
        with self._lock:
            if key in self._running and not self._running[key][0].done():
                return False
            cancel = threading.Event()
            future = self._pool.submit(job, cancel)
            self._running[key] = (future, cancel)
        future.add_done_callback(lambda f: self._done(key, f))
        return True

    def _done(self, key: str, future: Future) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            log.error("job %s failed", key, exc_info=(type(exc), exc, exc.__traceback__))

    def running(self, key: str) -> bool:
        with self._lock:
            entry = self._running.get(key)
        return entry is not None and not entry[0].done()

    def cancel(self, key: str) -> None:
        """Ask the job to stop (it checks its event); what it recorded stays recorded."""
        with self._lock:
            entry = self._running.get(key)
        if entry is not None:
            entry[1].set()

    def shutdown(self, cancel: bool = True) -> None:
        """Cancel every job (a training run stops and is recorded as cancelled) and wait for them."""
        if cancel:
            with self._lock:
                for _, event in self._running.values():
                    event.set()
        self._pool.shutdown(wait=True)


class InlineJobs:
    """Runs each job at once, on the caller's thread (the CLI driving a rollout; tests)."""

    def submit(self, key: str, job: Job) -> bool:
        job(threading.Event())
        return True

    def running(self, key: str) -> bool:
        return False

    def cancel(self, key: str) -> None:
        pass

    def shutdown(self, cancel: bool = True) -> None:
        pass
