import json
import time

import numpy as np
import pytest

from driftwatch.monitor.sketch import OTHER, Categories, Histogram, Profile

rng = np.random.default_rng(1)


def test_quantile_edges_give_roughly_equal_reference_bins():
    h = Histogram.from_quantiles(rng.lognormal(5, 0.7, 10_000), bins=10)
    assert len(h.counts) == 10 and h.total == 10_000
    assert max(h.counts) - min(h.counts) <= 2


def test_ties_collapse_edges_and_values_land_in_the_right_bin():
    h = Histogram.from_quantiles([1, 1, 1, 1, 2, 3], bins=4)
    assert h.edges == sorted(set(h.edges))
    g = Histogram([0.0, 10.0])
    for v in (-5, 0.0, 0.5, 10.0, 10.5):
        g.add(v)
    assert g.counts == [2, 2, 1]  # (-inf, 0], (0, 10], (10, inf)
    g2 = Histogram([0.0, 10.0])
    g2.add_many([-5, 0.0, 0.5, 10.0, 10.5])
    assert g2 == g


def test_merging_replica_sketches_equals_one_sketch_of_all_data():
    ref = Histogram.from_quantiles(rng.normal(size=5000))
    data = rng.normal(size=9000)
    whole, a, b = ref.empty_like(), ref.empty_like(), ref.empty_like()
    whole.add_many(data)
    a.add_many(data[:4000])
    b.add_many(data[4000:])
    assert a.merge(b) == whole
    with pytest.raises(ValueError, match="different edges"):
        a.merge(Histogram([0.0]))


def test_categories_are_bounded_and_merge():
    c = Categories(max_values=3)
    for v in ["qa", "code", "qa", "chat", "poetry", "legal", None]:
        c.add(v)
    assert c.counts == {"qa": 2, "code": 1, "chat": 1, OTHER: 3}
    d = Categories(max_values=3, counts={"qa": 5, "extract": 1})
    merged = c.merge(d)
    assert merged.counts["qa"] == 7 and merged.total == c.total + d.total
    keys, x, y = c.aligned(d)
    assert keys == sorted(set(c.counts) | {"extract"}) and sum(x) == c.total and sum(y) == d.total


def test_memory_stays_flat_however_long_the_stream():
    h = Histogram.from_quantiles(rng.normal(size=1000))
    c = Categories(max_values=20)
    for i in range(200_000):
        h.add(i % 7 - 3.0)
        c.add(f"route-{i}")
    assert len(h.counts) == len(h.edges) + 1 and len(c.counts) == 21


def test_profile_round_trip_hash_is_content_only(tmp_path):
    def build():
        p = Profile(source="events.jsonl", created_ms=int(time.time() * 1000))
        p.numeric["prompt_chars"] = Histogram([10.0, 100.0, 1000.0], [5, 50, 40, 5])
        p.categorical["route"] = Categories(10, {"qa": 60, "code": 40})
        p.baselines["refusal_rate"] = 0.02
        return p

    a, b = build(), build()
    b.created_ms += 5000
    assert a.content_hash == b.content_hash  # same inputs, same version
    path = tmp_path / "ref.json"
    version = a.save(path)
    loaded = Profile.load(path)
    assert loaded.content_hash == version and loaded.numeric["prompt_chars"] == a.numeric["prompt_chars"]
    b.categorical["route"].add("qa")
    assert b.content_hash != a.content_hash
    doc = json.loads(path.read_text())
    doc["numeric"]["prompt_chars"]["counts"][0] = 6
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="hash mismatch"):
        Profile.load(path)
