"""Idle cost: a daemon with no traffic beside a bare kafka-python consumer on the same broker, CPU in cores.

For each broker (Tansu and noida-db, both via driftwatch.dev.localbroker): `driftwatch run` (a real process: the
ingest loop, the control thread's tick, the HTTP server, leadership, the dead-letter producer) and a bare
kafka-python consumer (a process of its own: subscribe to the same two topics in a group of its own with the
daemon's consumer settings, poll in a loop, nothing else) run side by side with no traffic. Both are measured over
the same --seconds from /proc/<pid>/stat (user + system time of every thread), after both joined their groups;
then the broker is restarted (noida-db keeps its topics and groups on disk; Tansu's memory storage starts empty
and re-creates the topics when the clients ask) and, once both have rejoined, measured again.

    python bench/idle.py [--seconds 60] [--brokers tansu,noida] [--settle 5]

Goal: the daemon within 1.2x the bare consumer on the same broker, and no growth after a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

from driftwatch.config import Settings
from driftwatch.dev.localbroker import LocalBroker, free_port

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def bare(bootstrap: str, topics: list[str], group: str, consumer: dict) -> None:
    """The anchor: what any kafka-python consumer of these topics costs on this broker. Prints 'joined' each time
    the group hands it partitions."""
    from kafka import KafkaConsumer
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, assigned):
            print("joined", flush=True)

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                      auto_offset_reset=consumer["auto_offset_reset"], max_poll_records=consumer["max_poll_records"],
                      session_timeout_ms=consumer["session_timeout_ms"],
                      heartbeat_interval_ms=consumer["heartbeat_interval_ms"],
                      max_poll_interval_ms=consumer["max_poll_interval_ms"],
                      fetch_max_bytes=consumer["fetch_max_bytes"],
                      max_partition_fetch_bytes=consumer["max_partition_fetch_bytes"])
    c.subscribe(topics, listener=Listener())
    while True:
        c.poll(timeout_ms=consumer["poll_timeout_ms"], max_records=consumer["max_poll_records"])


class Pair:
    """The daemon and the bare consumer on one broker, started as processes."""

    def __init__(self, broker: LocalBroker, tmp: Path) -> None:
        suffix = broker.kind
        self.topics = {"inference": f"idle-inf-{suffix}", "feedback": f"idle-fb-{suffix}",
                       "dead_letter": f"idle-dlq-{suffix}"}
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        raw = {"kafka": {"bootstrap_servers": [broker.bootstrap], "create_topics": True, "topics": self.topics,
                         "consumer": {"group_id": f"idle-daemon-{suffix}"}},
               "http": {"host": "127.0.0.1", "port": port},
               "daemon": {"state_dir": str(tmp / f"state-{suffix}")}, "logging": {"level": "WARNING"}}
        consumer = Settings.model_validate(raw).kafka.consumer.model_dump()  # the daemon's consumer settings
        config = tmp / f"daemon-{suffix}.yaml"
        config.write_text(yaml.safe_dump(raw))
        self.daemon_log = tmp / f"daemon-{suffix}.log"
        self.daemon = subprocess.Popen([sys.executable, "-m", "driftwatch", "run", "--config", str(config)],
                                       stdout=open(self.daemon_log, "wb"), stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.wait_daemon()  # the daemon creates the topics; the bare consumer then finds them
        spec = json.dumps([broker.bootstrap, [self.topics["inference"], self.topics["feedback"]],
                           f"idle-bare-{suffix}", consumer])
        self.bare = subprocess.Popen([sys.executable, __file__, "--bare", spec], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.joins = 0
        threading.Thread(target=self._count_joins, daemon=True).start()
        if not self.wait_bare(1):
            raise RuntimeError("the bare consumer did not join its group in 120 s")

    def wait_daemon(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"daemon exited {self.daemon.returncode}:\n{self.daemon_log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"daemon not ready in {timeout_s}s:\n{self.daemon_log.read_text()[-3000:]}")

    def _count_joins(self) -> None:
        for line in self.bare.stdout:  # one 'joined' line per assignment
            self.joins += line.strip() == "joined"

    def wait_bare(self, joins: int, timeout_s: float = 120) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.joins >= joins:
                return True
            if self.bare.poll() is not None:
                raise RuntimeError(f"bare consumer exited {self.bare.returncode}")
            time.sleep(0.1)
        return False

    def measure(self, seconds: float) -> tuple[float, float]:
        pids = (self.daemon.pid, self.bare.pid)
        before, t0 = [cpu_s(p) for p in pids], time.monotonic()
        time.sleep(seconds)
        after, wall = [cpu_s(p) for p in pids], time.monotonic() - t0
        return (after[0] - before[0]) / wall, (after[1] - before[1]) / wall

    def stop(self) -> None:
        for proc in (self.bare, self.daemon):
            if proc.poll() is None:
                proc.terminate()
        for proc in (self.bare, self.daemon):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 1)[0]


def main() -> None:
    from driftwatch.dev import unwind_on_sigterm

    unwind_on_sigterm()  # killed with SIGTERM, it still stops the servers it started
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after both joined before measuring")
    ap.add_argument("--brokers", default="tansu,noida")
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        bare(*json.loads(args.bare))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        for kind in args.brokers.split(","):
            with LocalBroker(kind) as broker:
                pair = Pair(broker, Path(tmp_dir))
                try:
                    for phase in ("fresh", "after restart"):
                        if phase == "after restart":
                            joins = pair.joins
                            broker.restart(down_s=1.0)
                            pair.wait_daemon()
                            if not pair.wait_bare(joins + 1, timeout_s=30):  # it may keep its membership
                                print(f"{kind}: the bare consumer was not reassigned after the restart (kept its "
                                      "membership)", flush=True)
                        time.sleep(args.settle)
                        load0 = loadavg()
                        daemon, anchor = pair.measure(args.seconds)
                        rows.append((kind, phase, daemon, anchor, f"{load0}->{loadavg()}"))
                        print(f"{kind:5s} {phase:13s}: daemon {daemon:.3f} cores, bare kafka-python consumer "
                              f"{anchor:.3f} cores, ratio {daemon / max(anchor, 1e-9):.2f}  (load {rows[-1][4]})",
                              flush=True)
                finally:
                    pair.stop()
    print(f"\nidle CPU over {args.seconds:g} s, no traffic (cores; goal: daemon <= 1.2x bare, no growth after a "
          "restart)")
    print("| broker | phase | daemon | bare consumer | ratio | load avg |")
    print("|---|---|---|---|---|---|")
    for kind, phase, daemon, anchor, load in rows:
        print(f"| {kind} | {phase} | {daemon:.3f} | {anchor:.3f} | {daemon / max(anchor, 1e-9):.2f} | {load} |")


if __name__ == "__main__":
    main()
