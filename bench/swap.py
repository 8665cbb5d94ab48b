"""Adapter swap and rollback under load: how long each takes and how many client requests fail.

Real vLLM (CPU build) serving the tiny Llama with runtime LoRA loading, the driftwatch gateway in its own process
(every request logged to a real broker), closed-loop clients calling `production` through it. The rollout
controller promotes a new version name every cycle (load on vLLM, warm, flip the alias; evaluation skipped as
forced, so the figure is the swap itself) and either rolls it back by hand or lets the bake end; retired versions are
unloaded by reconcile after the drain time, under the same load.

Anchor, in the same run: the same clients for the same time with no swaps (failed requests, p99 latency).

    python bench/swap.py [--cycles 10] [--clients 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from gateway import percentile, start_gateway  # noqa: E402

from driftwatch.config import Settings  # noqa: E402
from driftwatch.dev.localbroker import LocalBroker  # noqa: E402


class Load:
    def __init__(self, url: str, clients: int):
        self.url, self.clients = url, clients
        self.stop = threading.Event()
        self.results: list[tuple[float, int, float]] = []  # (time, status, latency)

    def _client(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    status = http.post(f"{self.url}/v1/completions", json={
                        "model": "production", "prompt": "Say something", "max_tokens": 1, "temperature": 0}).status_code
                except httpx.HTTPError:
                    status = -1
                self.results.append((time.monotonic(), status, time.perf_counter() - t0))

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def between(self, t0: float, t1: float) -> list[tuple[float, int, float]]:
        return [r for r in self.results if t0 <= r[0] <= t1]


def served_after(url: str, store) -> float:
    """Seconds from the flip (the last promoted or rolled-back event's commit) until the gateway routes by the alias
    table version it wrote. (Measured from before the promotion, as this bench first did, it counted the load and
    the warm-up too: 1.1 s median.)"""
    want = store.alias_table_version()
    flip = next(e.at for e in store.events(limit=20) if e.kind in ("promoted", "rolled-back"))
    with httpx.Client(timeout=10) as http:  # one client: a new one per call cost tens of ms under this load
        while http.get(f"{url}/healthz").json()["alias_table_version"] < want:
            time.sleep(0.005)
    return time.time() - flip


def summary(rows) -> str:
    failed = sum(s != 200 for _, s, _ in rows)
    lat = [x for _, _, x in rows]
    return (f"{len(rows)} requests, {failed} failed, p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(lat, 0.99) * 1000:.1f} ms") if rows else "no requests"


def main() -> None:
    from driftwatch.dev import unwind_on_sigterm

    unwind_on_sigterm()  # killed with SIGTERM, it still stops the servers it started
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()

    from driftwatch.dev.localvllm import LocalVLLM
    from driftwatch.dev.models import build_tiny_llama
    from driftwatch.retrain.trainer import TrainSpec, train
    from driftwatch.control.rollout import RolloutController
    from driftwatch.state.store import SqliteStore

    with tempfile.TemporaryDirectory() as tmp_dir, LocalBroker("tansu") as broker:
        tmp = Path(tmp_dir)
        model = build_tiny_llama(tmp / "tiny")
        data = tmp / "data"
        data.mkdir()
        rows = "".join('{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a"}]}\n'
                       % i for i in range(10))
        (data / "train.jsonl").write_text(rows)
        (data / "validation.jsonl").write_text(rows)
        train(TrainSpec(base_model=str(model), dataset=str(data), output=str(tmp / "lora"), max_steps=2, progress=False))
        adapter = tmp / "lora" / "adapter"
        vllm = LocalVLLM(model).start()
        gw = None
        try:
            gw, url = start_gateway(broker, vllm.url, tmp, None)
            port = int(url.rsplit(":", 1)[1])
            settings = Settings.model_validate({
                "gateway": {"upstreams": [vllm.url]}, "daemon": {"state_dir": str(tmp / f"state-{port}")},
                "rollout": {"warm_requests": 2, "bake": {"duration_s": 0.5, "deadline_s": 0.5}}})
            store = SqliteStore(settings.registry_path)
            ctl = RolloutController(settings, store)  # drain_s: 2 x gateway.alias_poll_s + 5 s
            ctl.register("v0", adapter)
            ctl.start("v0", who="bench", force=True)
            ctl.drive(until=(), interval_s=0.05)  # to done: no traffic yet, the short bake deadline keeps it
            time.sleep(1.0)  # the gateway's alias poll

            with Load(url, args.clients) as load:
                time.sleep(1.0)
                t0 = time.monotonic()
                time.sleep(10.0)
                anchor = load.between(t0, time.monotonic())
                swaps, rollbacks = [], []
                for cycle in range(1, args.cycles + 1):
                    version = f"v{cycle}"
                    ctl.register(version, adapter)
                    start = time.monotonic()
                    ctl.start(version, who="bench", force=True)
                    r = ctl.drive(interval_s=0.01)
                    assert r.phase == "baking", r
                    swaps.append((time.monotonic() - start, served_after(url, store)))
                    time.sleep(1.0)
                    if cycle % 2:
                        t = time.monotonic()
                        ctl.rollback(who="bench", why="bench")
                        rollbacks.append((time.monotonic() - t, served_after(url, store)))
                    else:
                        time.sleep(0.6)
                        assert ctl.step().phase == "rebaselining" and ctl.step().phase == "done"
                    for _ in range(20):  # unload what is retired or rolled back once drained, under load
                        ctl.reconcile()
                        time.sleep(0.1)
                t_swaps = (t0 + 10.0, time.monotonic())
                time.sleep(7.0)  # the last drain, then the last unloads
                ctl.reconcile()
                time.sleep(1.0)
            during = load.between(t_swaps[0], time.monotonic())
            registered = len(store.adapters())
            loaded = sorted(vllm.client().adapters())
            print(f"swap under load: {args.cycles} promotions ({len(rollbacks)} rolled back by hand), "
                  f"{args.clients} closed-loop clients through the gateway, vLLM CPU, tiny Llama, 1 token")
            print(f"  anchor, no swaps, 10 s:     {summary(anchor)}")
            print(f"  swaps and rollbacks:        {summary(during)}")
            for name, xs in (("promote (load + warm + flip)", swaps), ("rollback (flip back)", rollbacks)):
                done, live = [x for x, _ in xs], [y for _, y in xs]
                print(f"  {name:<29} median {percentile(done, 0.5) * 1000:.0f} ms, max {max(done) * 1000:.0f} ms; "
                      f"in effect at the gateway, from the flip, after median {percentile(live, 0.5) * 1000:.0f} ms, "
                      f"max {max(live) * 1000:.0f} ms (gateway.alias_poll_s {Settings().gateway.alias_poll_s:g})")
            p99 = lambda rows: percentile([x for _, _, x in rows], 0.99)  # noqa: E731
            print(f"  p99 latency during swaps / anchor: {p99(during) / p99(anchor):.2f}")
            print(f"  versions registered {registered}; still loaded on vLLM at the end: {', '.join(loaded)}")
            failed = sum(s != 200 for _, s, _ in during)
            print(f"  failed client requests during swaps and rollbacks: {failed}")
            ctl.close()
            store.close()
            if failed:
                sys.exit(1)
        finally:
            if gw is not None:
                gw.terminate()
                gw.wait(15)
            vllm.stop()


if __name__ == "__main__":
    main()
