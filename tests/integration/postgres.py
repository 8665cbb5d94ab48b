"""A real PostgreSQL (Debian's postgresql package) as a test process: its own cluster in a temporary directory, bound
to 127.0.0.1 on a free port, run as the `postgres` user when the tests run as root (initdb refuses root), stopped by
pid."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from driftwatch.dev.localbroker import free_port


def bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else (Path(p).parent if (p := shutil.which("initdb")) else None)


class Postgres:
    def __init__(self, workdir: Path) -> None:
        bin_ = bindir()
        assert bin_ is not None, "PostgreSQL is not installed (.ci/run installs Debian's postgresql)"
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # pytest's temporary directories are private to root: the cluster lives in one of its own
        self.home = Path(tempfile.mkdtemp(prefix="driftwatch-pg-"))
        self.data, self.port, self.log = self.home / "pgdata", free_port(), workdir / "postgres.log"
        if as_user:
            shutil.chown(self.home, "postgres")
        workdir = self.home
        subprocess.run([*as_user, str(bin_ / "initdb"), "-D", str(self.data), "-U", "driftwatch", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [*as_user, str(bin_ / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(workdir), "-c", "fsync=off", "-c", "max_connections=50"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        self.url = f"postgresql://driftwatch@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while subprocess.run([str(bin_ / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            assert self.proc.poll() is None, f"postgres exited {self.proc.returncode}:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"postgres not ready:\n{self.log.read_text()}"
            time.sleep(0.1)

    def database(self, name: str) -> str:
        """A fresh database; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to runuser is passed on; postgres: smart shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)
