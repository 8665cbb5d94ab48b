from pathlib import Path

from driftwatch.config import reference

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    assert (ROOT / "docs" / "configuration.md").read_text() == reference(), "run `make docs`"


def test_every_metric_in_the_readme_exists():
    from driftwatch.metrics import GatewayMetrics, Metrics

    names = {f.name for f in Metrics().registry.collect()} | {f.name for f in GatewayMetrics().registry.collect()}
    readme = (ROOT / "README.md").read_text()
    for name in names:
        assert f"`{name.removeprefix('driftwatch_')}" in readme, f"{name} is not documented in README.md"


def test_the_phase_deadline_table_in_the_docs_is_the_code_s():
    import re

    from driftwatch.control.rollout import DEADLINES

    text = (ROOT / "docs" / "rollout.md").read_text()
    rows = re.findall(r"^\| (\w+) \| `([\w.]+)` \| (.+) \|$", text, flags=re.M)
    assert {phase: (setting, outcome) for phase, setting, outcome in rows} == DEADLINES
