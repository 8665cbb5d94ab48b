"""The alert rules (deploy/prometheus/alerts.yaml): valid for Prometheus, unit-tested with promtool, every alert with
a runbook section and a firing test, every metric they read defined by driftwatch."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from driftwatch.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
TESTS = ROOT / "tests" / "alerts" / "alerts_test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool comes from Debian's prometheus package: "
                                    "apt-get install prometheus (.ci/run installs it)")


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@needs_promtool
def test_rules_are_valid_and_their_unit_tests_pass():
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=120)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_every_alert_has_a_runbook_section_and_a_test_that_fires_it():
    runbooks = {m.lower() for m in re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), flags=re.M)}
    firing = {case["alertname"] for test in yaml.safe_load(TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    for rule in alerts():
        name = rule["alert"]
        assert name.lower() in runbooks, f"{name}: no '## {name}' section in docs/runbooks.md"
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks.md#{name.lower()}"
        assert name in firing, f"{name}: no promtool test expects it to fire"
        assert rule["labels"]["severity"] in ("critical", "warning", "info")


def test_every_metric_the_rules_read_is_one_driftwatch_exports():
    registry = CollectorRegistry()
    Metrics(registry)
    exported = set()
    for family in registry.collect():
        exported |= {family.name, family.name + "_total", family.name + "_bucket", family.name + "_sum",
                     family.name + "_count"}
    used = {name for rule in alerts() for name in re.findall(r"\bdriftwatch_\w+", rule["expr"])}
    assert used and used <= exported, sorted(used - exported)


AMTOOL = shutil.which("amtool")


@pytest.mark.skipif(AMTOOL is None, reason="amtool comes from Debian's prometheus-alertmanager (.ci/run installs it)")
def test_alertmanager_routes_the_retrain_alerts_to_the_daemon_and_everything_to_on_call(tmp_path):
    from driftwatch.config import Control

    config = tmp_path / "alertmanager.yaml"  # the token file must exist for check-config
    (tmp_path / "token").write_text("x" * 32)
    config.write_text((ROOT / "deploy/prometheus/alertmanager.yaml").read_text().replace(
        "/etc/alertmanager/secrets/driftwatch-control/token", str(tmp_path / "token")))
    check = subprocess.run([AMTOOL, "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    def receivers(*labels: str) -> set[str]:
        out = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={config}", *labels],
                             capture_output=True, text=True, timeout=60)
        return set(out.stdout.strip().split(","))

    retrain = set(Control().retrain_alerts)  # the daemon's default: the route must send exactly these
    for rule in alerts():
        expected = {"driftwatch", "on-call"} if rule["alert"] in retrain else {"on-call"}
        assert receivers(f"alertname={rule['alert']}", "adapter=a") == expected, rule["alert"]
