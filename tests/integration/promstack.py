"""Real Prometheus and Alertmanager (Debian's packages) as test processes, bound to 127.0.0.1, stopped by pid."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from driftwatch.dev.localbroker import free_port

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Server:
    def __init__(self, argv: list[str], port: int, ready: str, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"{argv[0]} exited {self.proc.returncode}:\n{log.read_text()}"
            try:
                if httpx.get(self.url + ready, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{argv[0]} not ready:\n{log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def alertmanager(workdir: Path, webhook_url: str, token: str) -> Server:
    """Alertmanager on deploy/prometheus/alertmanager.yaml, its webhook pointed at the daemon under test and
    grouping shortened to a second (the routes and receivers are the shipped ones)."""
    cfg = yaml.safe_load((ROOT / "deploy/prometheus/alertmanager.yaml").read_text())
    cfg["route"].update(group_wait="1s", group_interval="1s")
    token_file = workdir / "control-token"
    token_file.write_text(token)
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    (workdir / "alertmanager.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    return Server([ALERTMANAGER, f"--config.file={workdir / 'alertmanager.yaml'}", f"--storage.path={workdir / 'am-data'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                  port, "/-/ready", workdir / "alertmanager.log")


def prometheus(workdir: Path, target: str, alertmanager_url: str | None = None, for_s: str = "1s") -> Server:
    """Prometheus scraping ``target`` every second with deploy/prometheus/alerts.yaml, every alert's ``for``
    shortened to ``for_s`` (the expressions are the shipped ones)."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_s
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": [str(workdir / "rules.yaml")],
           "scrape_configs": [{"job_name": "driftwatch", "static_configs": [{"targets": [target]}]}]}
    if alertmanager_url:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.split("//")[1]]}]}]}
    (workdir / "prometheus.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    return Server(["prometheus", f"--config.file={workdir / 'prometheus.yaml'}",
                   f"--storage.tsdb.path={workdir / 'prom-data'}", f"--web.listen-address=127.0.0.1:{port}"],
                  port, "/-/ready", workdir / "prometheus.log")


def query(prom: Server, expr: str) -> dict:
    r = httpx.get(prom.url + "/api/v1/query", params={"query": expr}, timeout=10)
    return {**r.json(), "http": r.status_code}
