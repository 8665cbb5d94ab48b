"""The ingest thread writes windows while checks, followers' publishing, the status API and scrapes read them.
Readers see publications only: every one they hold is whole (a window's sketches and counters agree) and stays as
it was, however long they hold it. Thousands of iterations, no sleeps: the threads run flat out against each other."""

import threading

from prometheus_client import generate_latest

from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import Monitor, MonitorSettings, Window, merge_views, window_samples

from .test_monitor import Clock, stream
from .test_reconciler import reference  # noqa: F401 - the module's reference profile fixture

BATCHES, CHECKS = 3000, 100  # at least this many of each, run against each other


def whole(win: Window) -> tuple:
    """A window's counts, each from another sketch: equal in a window nobody is writing."""
    return (win.events, sum(win.numeric["prompt_chars"].counts), sum(win.categorical["route"].counts.values()),
            sum(win.categorical["status"].counts.values()))


def test_readers_see_whole_publications_while_the_ingest_thread_writes(reference):  # noqa: F811
    clock = Clock()
    monitor = Monitor(reference, MonitorSettings(window_events=300, report_sample=200, diversity_sample=100),
                      clock=clock)
    metrics = Metrics()
    items = stream(3000, seed=700, feedback_rate=0.3, adapters={"a": 0.5, "b": 0.3, "c": 0.2})
    done, errors, seen = threading.Event(), [], {"publications": 0, "checks": 0, "scrapes": 0}
    observed = {"inference": 0}

    def ingest():  # the only writer: observe small batches, step between them (time moves on too)
        try:
            i = 0
            while (i < BATCHES or seen["checks"] < CHECKS) and i < 100 * BATCHES:
                i += 1
                batch = items[(i * 7) % 2990:(i * 7) % 2990 + 7]
                monitor.observe(batch)
                observed["inference"] += sum(it.kind == "inference" for it in batch)
                clock.t += 0.01
                monitor.maintain()
        except Exception as exc:  # noqa: BLE001
            errors.append(("ingest", exc))
        finally:
            done.set()

    def checker():  # the control thread: fresh windows, merged as a leader merges, checked, gauges replaced
        try:
            while not done.is_set():
                windows = monitor.fresh(0.05)
                held = {a: whole(w) for a, (w, _) in windows.views.items()}
                for a, (w, _) in windows.views.items():
                    assert len(set(whole(w))) == 1, (a, whole(w))
                merged = merge_views(dict(windows.views), [(a, w.to_bytes(c)) for a, (w, c) in windows.views.items()])
                snapshot = monitor.snapshot(windows)
                metrics.set_windows(window_samples(snapshot))
                for a, view in snapshot.adapters.items():
                    assert view.window_events == held[a][0] and merged[a][0].events == 2 * held[a][0]
                assert {a: whole(w) for a, (w, _) in windows.views.items()} == held  # unchanged while held
                seen["checks"] += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(("checker", exc))

    def reader():  # the status API, the report route, a follower publishing: the latest publication, as it is
        try:
            last = -1
            while not done.is_set():
                windows = monitor.latest()
                for a, (w, closed) in windows.views.items():
                    assert len(set(whole(w))) == 1, (a, whole(w))
                    w.to_bytes(closed)
                    monitor.rows(a)
                seen["publications"] += windows.seq != last
                last = windows.seq
        except Exception as exc:  # noqa: BLE001
            errors.append(("reader", exc))

    def scraper():  # Prometheus
        try:
            while not done.is_set():
                generate_latest(metrics.registry)
                seen["scrapes"] += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(("scraper", exc))

    threads = [threading.Thread(target=f) for f in (ingest, checker, reader, scraper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert seen["checks"] >= CHECKS and seen["publications"] > CHECKS and seen["scrapes"] > 20, seen
    # nothing lost or counted twice: what the windows hold now is what the last ones were fed
    monitor.ask()
    final = monitor.maintain()
    total = sum(w.events for w, _ in final.views.values())
    assert 0 < total <= observed["inference"] and all(len(set(whole(w))) == 1 for w, _ in final.views.values())
    text = generate_latest(metrics.registry).decode()
    assert 'driftwatch_window_events{adapter="a"}' in text and "driftwatch_drift_score" in text
