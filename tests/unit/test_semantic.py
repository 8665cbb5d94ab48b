"""The semantic drift check with the real packaged embedding model (all-MiniLM-L6-v2, offline)."""

import numpy as np
import pytest
from click.testing import CliRunner

from driftwatch.app import build_monitor
from driftwatch.cli import main
from driftwatch.config import load_settings
from driftwatch.errors import ConfigError
from driftwatch.monitor.monitor import Monitor, MonitorSettings, build_profile
from driftwatch.monitor.semantic import Embedder, model_dir
from driftwatch.monitor.sketch import Profile
from driftwatch.dev.simulate import SimConfig, Simulator

from .test_monitor import Clock, inference, observe, stream

pytestmark = pytest.mark.skipif(model_dir() is None, reason="needs driftwatch[semantic] (installed by make test)")


@pytest.fixture(scope="module")
def embed():
    return Embedder()


@pytest.fixture(scope="module")
def reference(embed):
    return build_profile(inference(stream(3000, seed=400, feedback_rate=0)), embed=embed, semantic_sample=150)


def test_embeddings_are_unit_vectors_and_mean_something(embed):
    v = embed(["How do I reset my password?", "I forgot my password, how can I change it?", "Bake the bread at 200 C."])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > 0.6 > 0.2 > v[0] @ v[2]


def window(reference, embed, **shift):
    mon = Monitor(reference, MonitorSettings(window_events=1500, semantic_sample=120), clock=Clock(), embed=embed)
    observe(mon, stream(1600, feedback_rate=0, **shift))
    (view,) = mon.snapshot().adapters.values()
    return view


def test_a_new_topic_is_seen_only_by_the_semantic_check(reference, embed):
    view = window(reference, embed, seed=404, topic_rate=0.3)
    assert view.drifted_features == ["semantic"], {k: v.reason for k, v in view.drift.items() if v.drifted}
    assert "MMD²" in view.drift["semantic"].reason and view.drift["semantic"].n_cur == 120


def test_stationary_prompts_are_not_semantic_drift(reference, embed):
    view = window(reference, embed, seed=401)
    assert view.drift["semantic"].value is not None and not view.drift["semantic"].drifted


def test_baseline_semantic_and_config_errors(tmp_path):
    events = tmp_path / "events.jsonl"
    sim = Simulator(SimConfig(seed=5, feedback_rate=0))
    events.write_bytes(b"\n".join(o.value for o in sim.stream(400) if o.topic == "inference"))
    plain, sem = tmp_path / "plain.json", tmp_path / "sem.json"
    assert CliRunner().invoke(main, ["baseline", "--events", str(events), "--out", str(plain)]).exit_code == 0
    result = CliRunner().invoke(main, ["baseline", "--events", str(events), "--out", str(sem), "--semantic"])
    assert result.exit_code == 0, result.output
    profile = Profile.load(sem)
    assert len(profile.semantic["embeddings"]) == 300 and len(profile.semantic["embeddings"][0]) == 384
    with pytest.raises(ConfigError, match="baseline --semantic"):
        build_monitor(load_settings(None, env={"DRIFTWATCH__MONITOR__REFERENCE_PATH": str(plain),
                                               "DRIFTWATCH__MONITOR__SEMANTIC_SAMPLE": "100"}))
    mon = build_monitor(load_settings(None, env={"DRIFTWATCH__MONITOR__REFERENCE_PATH": str(sem),
                                                 "DRIFTWATCH__MONITOR__SEMANTIC_SAMPLE": "100"}))
    assert mon.embed is not None and mon.settings.semantic_sample == 100
