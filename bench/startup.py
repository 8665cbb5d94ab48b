"""Start-up time of `driftwatch run`, against the bare interpreter as anchor, measured in one run.

Three figures, each the median of --rounds starts: the anchor (`python -c pass`), importing the CLI (what
every command pays), and `driftwatch run` from exec to /healthz reporting state "running" against a local broker (config
load, HTTP server, topic check, consumer and producer created). Prints each and their ratios to the anchor.

    python bench/startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from driftwatch.dev.localbroker import LocalBroker, free_port


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def run_to_healthz(bootstrap: str, tmp: Path) -> float:
    port = free_port()
    cfg = tmp / "dw.yaml"
    cfg.write_text(f"kafka: {{bootstrap_servers: ['{bootstrap}'], create_topics: true}}\n"
                   f"http: {{port: {port}}}\ndaemon: {{state_dir: '{tmp / 'state'}'}}\n")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "driftwatch", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
                if r.status_code == 200 and r.json().get("state") == "running":
                    return time.perf_counter() - t
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"driftwatch run exited {proc.returncode}")
            time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    from driftwatch.dev import unwind_on_sigterm

    unwind_on_sigterm()  # killed with SIGTERM, it still stops the servers it started
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    with LocalBroker("tansu") as broker, tempfile.TemporaryDirectory() as tmp:
        base, cli, run = [], [], []
        for _ in range(args.rounds):
            base.append(timed([py, "-c", "pass"]))
            cli.append(timed([py, "-c", "import driftwatch.cli"]))
            run.append(run_to_healthz(broker.bootstrap, Path(tmp)))
    b, c, r = (statistics.median(x) for x in (base, cli, run))
    print(f"python -c pass (anchor):             {b * 1000:7.0f} ms")
    print(f"import driftwatch.cli:               {c * 1000:7.0f} ms  ({c / b:.1f}x anchor)")
    print(f"driftwatch run -> running:         {r * 1000:7.0f} ms  ({r / b:.1f}x anchor; goal about 1 s)")
    print(f"cpu count {os.cpu_count()}, rounds {args.rounds}, medians")


if __name__ == "__main__":
    main()
