from prometheus_client import generate_latest

from driftwatch.metrics import Metrics


def test_ten_thousand_adapters_make_at_most_the_configured_series():
    m = Metrics(max_adapters=25)
    for i in range(10_000):
        m.requests.labels(adapter=m.adapter_cap(f"adapter-{i}"), status="ok").inc()
    series = [s for fam in m.registry.collect() if fam.name == "driftwatch_requests" for s in fam.samples
              if s.name.endswith("_total")]
    assert len(series) == 26  # 25 admitted + "other"
    assert m.registry.get_sample_value("driftwatch_requests_total", {"adapter": "other", "status": "ok"}) == 9_975
    assert m.registry.get_sample_value("driftwatch_label_values_capped_total", {"label": "adapter"}) == 9_975
    assert m.adapter_cap("adapter-3") == "adapter-3"  # admitted values stay themselves


def test_names_follow_conventions():
    m = Metrics()
    m.requests.labels(adapter="a", status="ok").inc()
    m.set_lag({("t", 0): 5})
    for family in m.registry.collect():
        assert family.name.startswith("driftwatch_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_records")), family.name
    text = generate_latest(m.registry).decode()
    assert 'driftwatch_consumer_lag_records{partition="0",topic="t"} 5.0' in text


def test_lag_snapshot_replaces_revoked_partitions():
    m = Metrics()
    m.set_lag({("t", 0): 5, ("t", 1): 7})
    m.set_lag({("t", 1): 2})
    assert m.registry.get_sample_value("driftwatch_consumer_lag_records", {"topic": "t", "partition": "0"}) is None
    assert m.registry.get_sample_value("driftwatch_consumer_lag_records", {"topic": "t", "partition": "1"}) == 2
