
from click.testing import CliRunner

from driftwatch.app import build_monitor
from driftwatch.cli import main
from driftwatch.config import load_settings
from driftwatch.monitor.sketch import Profile
from driftwatch.dev.simulate import SimConfig, Simulator


def write_events(path, n=1500, bad_lines=2):
    sim = Simulator(SimConfig(seed=9, feedback_rate=0, adapters={"v1": 0.5, "v2": 0.5}))
    lines = [o.value for o in sim.stream(n, start_ms=1795514400000) if o.topic == "inference"]
    lines[10:10] = [b"not json"] * bad_lines
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_baseline_builds_versioned_profiles_and_skips_bad_lines(tmp_path):
    events, out = tmp_path / "events.jsonl", tmp_path / "ref.json"
    write_events(events)
    result = CliRunner().invoke(main, ["baseline", "--events", str(events), "--out", str(out), "--per-adapter"])
    assert result.exit_code == 0, result.output
    assert "2 line(s) skipped" in result.output and "line 11: skipped (not_json" in result.output
    profile = Profile.load(out)
    assert profile.baselines["events"] == 1500 and profile.scope == "global"
    assert Profile.load(tmp_path / "ref.v1.json").scope == "v1"
    assert profile.content_hash[:12] in result.output
    CliRunner().invoke(main, ["baseline", "--events", str(events), "--out", str(tmp_path / "b.json")])
    assert Profile.load(tmp_path / "b.json").content_hash == profile.content_hash  # same inputs, same version


def test_daemon_monitor_uses_the_configured_reference_and_patterns(tmp_path):
    events, out = tmp_path / "events.jsonl", tmp_path / "ref.json"
    write_events(events, bad_lines=0)
    CliRunner().invoke(main, ["baseline", "--events", str(events), "--out", str(out)])
    settings = load_settings(None, env={"DRIFTWATCH__MONITOR__REFERENCE_PATH": str(out),
                                        "DRIFTWATCH__MONITOR__REFUSAL_PATTERNS": "no way"})
    mon = build_monitor(settings)
    assert mon.reference.content_hash == Profile.load(out).content_hash
    assert mon.extract._refusal.pattern == "(?:no way)"


def test_missing_reference_and_bad_pattern_are_config_errors(tmp_path):
    result = CliRunner().invoke(main, ["config", "check", "/dev/null"],
                                env={"DRIFTWATCH__MONITOR__REFERENCE_PATH": str(tmp_path / "nope.json"),
                                     "DRIFTWATCH__MONITOR__REFUSAL_PATTERNS": "(unclosed"})
    assert result.exit_code == 2
    assert "monitor.reference_path" in result.output and "driftwatch baseline" in result.output
    assert "monitor.refusal_patterns" in result.output
