"""Gateway overhead, measured in one run: calls straight to the upstream and through the gateway.

1. Added latency at a fixed request rate: the same requests (greedy, one token) sent straight to vLLM and through
   the gateway, alternating, at --rate requests/s; p50/p99 of each path and of their difference. Real vLLM (CPU
   build, the tiny Llama) when it is installed, else the fast stand-in upstream.
2. Maximum request rate on one core: the gateway process pinned to CPU 0, a fast stand-in upstream (a canned
   completion) and the load generator on the other core(s); requests/s through the gateway vs straight to the
   stand-in (the anchor).

The gateway runs as `driftwatch gateway` with a real broker (Tansu) behind it: every request is logged.

    python bench/gateway.py [--rate 50] [--requests 1000] [--load-seconds 10] [--no-vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from driftwatch.dev.localbroker import LocalBroker, free_port

CANNED = json.dumps({"id": "cmpl-1", "object": "text_completion", "model": "x", "choices": [
    {"index": 0, "text": " hi", "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                                                       "total_tokens": 4}}).encode()


def stand_in(port: int) -> None:
    """A fast OpenAI-shaped upstream: a raw asyncio HTTP/1.1 server answering every POST with one canned body."""
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(CANNED)).encode() + b"\r\n\r\n" + CANNED)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def fixed_rate(direct: str, via: str, model: str, rate: float, n: int) -> tuple[list[float], list[float]]:
    body = {"model": model, "prompt": "hello", "max_tokens": 1, "temperature": 0}
    straight, through = [], []
    with httpx.Client(timeout=30) as c:
        for base in (direct, via):  # warm both connections
            c.post(f"{base}/v1/completions", json=body)
        t0 = time.perf_counter()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            for base, out in ((direct, straight), (via, through)) if i % 2 == 0 else ((via, through), (direct, straight)):
                t = time.perf_counter()
                r = c.post(f"{base}/v1/completions", json=body)
                out.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
    return straight, through


def max_rate(base: str, seconds: float, concurrency: int = 16, counts: dict | None = None) -> float:
    """Requests/s from keep-alive connections driven by a minimal raw-socket HTTP/1.1 client (httpx itself tops
    out near 300 requests/s here, below what is being measured). ``counts`` gets 'sent' and 'ok' added to it."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"model": "production", "prompt": "hello", "max_tokens": 1}).encode()
    sent = 0
    request = (f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body

    async def run() -> int:
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker():
            nonlocal done, sent
            reader, writer = await asyncio.open_connection(host, int(port))
            while time.perf_counter() < deadline:
                writer.write(request)
                sent += 1
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                done += head.startswith(b"HTTP/1.1 200")
            writer.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    ok = asyncio.run(run())
    if counts is not None:
        counts["sent"] = counts.get("sent", 0) + sent
        counts["ok"] = counts.get("ok", 0) + ok
    return ok / seconds


def report_fixed(upstream: str, url: str, label: str, args) -> None:
    straight, through = fixed_rate(upstream, url, "base", args.rate, args.requests)
    s50, s99, t50, t99 = (percentile(straight, 0.5), percentile(straight, 0.99), percentile(through, 0.5),
                          percentile(through, 0.99))
    print(f"fixed rate {args.rate:g} req/s, {args.requests} requests each way, upstream: {label}")
    print(f"  straight: p50 {s50 * 1000:.2f} ms  p99 {s99 * 1000:.2f} ms")
    print(f"  gateway:  p50 {t50 * 1000:.2f} ms  p99 {t99 * 1000:.2f} ms")
    print(f"  added:    p50 {(t50 - s50) * 1000:.2f} ms  p99 {(t99 - s99) * 1000:.2f} ms   (goal: <= 1 ms, <= 5 ms)")
    metrics = httpx.get(f"{url}/metrics").text
    value = lambda name: next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name))  # noqa: E731
    print(f"  the gateway's own time per request (upstream excluded): mean "
          f"{value('driftwatch_gateway_added_latency_seconds_sum') / value('driftwatch_gateway_added_latency_seconds_count') * 1000:.3f} ms")


def start_gateway(broker: LocalBroker, upstream: str, tmp: Path, cpu: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = {"kafka": {"bootstrap_servers": [broker.bootstrap], "create_topics": True},
           "gateway": {"port": port, "upstreams": [upstream]}, "daemon": {"state_dir": str(tmp / f"state-{port}")},
           "logging": {"level": "WARNING"}}
    path = tmp / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "driftwatch", "alias", "set", "production", "base", "-c", str(path)],
                   check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "driftwatch", "gateway", "-c", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("gateway did not start")


def main() -> None:
    from driftwatch.dev import unwind_on_sigterm

    unwind_on_sigterm()  # killed with SIGTERM, it still stops the servers it started
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--load-seconds", type=float, default=10.0)
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp_dir, LocalBroker("tansu") as broker:
        tmp = Path(tmp_dir)
        up_port = free_port()
        upstream_proc = multiprocessing.Process(target=stand_in, args=(up_port,), daemon=True)
        upstream_proc.start()
        if len(cpus) > 1:
            os.sched_setaffinity(upstream_proc.pid, set(cpus[1:]))
        fast = f"http://127.0.0.1:{up_port}"
        time.sleep(0.2)
        vllm = None
        upstream, label = fast, "fast stand-in upstream"
        if not args.no_vllm:
            try:
                import vllm as _  # noqa: F401

                from driftwatch.dev.localvllm import LocalVLLM
                from driftwatch.dev.models import build_tiny_llama

                vllm = LocalVLLM(build_tiny_llama(tmp / "tiny")).start()
                upstream, label = vllm.url, "vLLM CPU, tiny Llama, 1 token"
            except ImportError:
                pass
        procs = []
        try:
            gw, url = start_gateway(broker, upstream, tmp, None)
            procs.append(gw)
            report_fixed(upstream, url, label, args)
            if upstream != fast:
                gw_fast, url_fast = start_gateway(broker, fast, tmp, None)
                procs.append(gw_fast)
                report_fixed(fast, url_fast, "fast stand-in upstream (no model noise)", args)
            gw2, url2 = start_gateway(broker, fast, tmp, cpus[0])
            procs.append(gw2)
            anchor = max_rate(fast, args.load_seconds / 2)
            rate = max_rate(url2, args.load_seconds)
            print(f"max rate, gateway pinned to one core (CPU {cpus[0]}), fast stand-in upstream:")
            print(f"  straight to the stand-in (anchor): {anchor:,.0f} req/s")
            print(f"  through the gateway: {rate:,.0f} req/s  (ratio {rate / anchor:.2f}); every request logged to Kafka")
        finally:
            for p in procs:
                p.terminate()
                p.wait(15)
            if vllm is not None:
                vllm.stop()
            upstream_proc.terminate()


if __name__ == "__main__":
    main()
