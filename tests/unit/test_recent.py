from driftwatch.ingest.recent import DedupWindow


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_duplicates_detected_within_window():
    w = DedupWindow(10, 60)
    assert w.add("a") is False
    assert w.add("a") is True
    assert w.add("b", value="v-b") is False
    assert w.get("b") == "v-b" and w.get("zzz", "d") == "d"


def test_memory_is_bounded_by_count_oldest_evicted_first():
    w = DedupWindow(1000, 3600)
    for i in range(100_000):
        w.add(i)
    assert len(w) == 1000
    assert w.add(99_999) is True  # newest kept
    assert w.add(0) is False  # oldest evicted, so it looks new again


def test_entries_expire_by_age():
    clock = Clock()
    w = DedupWindow(1000, max_age_s=10, clock=clock)
    w.add("old", "x")
    clock.t = 5
    w.add("mid")
    clock.t = 11
    assert w.get("old") is None  # expired on read
    w.add("new")  # eviction happens on insert
    assert len(w) == 2
    assert w.add("old") is False and w.add("mid") is True
