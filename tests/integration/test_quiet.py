"""An operator reads the daemon's log: over a quiet minute it says nothing (no line per tick, poll or scheduler
run), and at no time does it carry APScheduler's, tqdm's or kafka-python's own lines (``driftwatch --verbose``
lets the libraries through)."""

from __future__ import annotations

import time

from .conftest import DaemonProcess, settings_dict, wait_for

LIBRARIES = ("apscheduler", " kafka.", "it/s]", "s/it]", "blocking the event loop")


def test_a_quiet_minute_adds_no_log_line(tansu, tmp_path):
    # the loop ticks twice a second and checks every second: 120 ticks and 60 checks in the minute
    raw = settings_dict(tansu, tmp_path, monitor={"check_interval_s": 1.0}, rollout={"tick_s": 0.5})
    proc = DaemonProcess(raw, tmp_path)
    try:
        proc.wait_ready()
        before = len(proc.output().splitlines())
        end = time.monotonic() + 60
        wait_for(lambda: time.monotonic() >= end and proc.proc.poll() is None, 75, "a quiet minute", interval_s=1)
        during = proc.output().splitlines()[before:]
        ready = proc.get("/readyz")
        proc.signal()
        assert proc.wait(20) == 0, proc.output()
    finally:
        proc.kill()
    assert during == [], during
    assert ready is not None and ready.status_code == 200  # quiet, not stuck: still in its group and ticking
    noisy = [line for line in proc.output().splitlines() if any(word in line for word in LIBRARIES)]
    assert noisy == [], noisy
