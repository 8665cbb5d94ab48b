"""The gateway beside a peer, in one run: straight to the upstream, through driftwatch's gateway (every request
logged to Kafka) and through the LiteLLM proxy (its logging and callbacks off), on bench/gateway.py's fast
stand-in upstream (a canned one-token completion).

1. Added latency at a fixed rate: the same request (/v1/completions, model ``production``) sent along every path
   in turn, --rate requests/s on each, the order rotating every round; p50/p99 of each path and added latency (a
   path's percentile minus the direct one's). A fourth path, "bare hop", is a minimal uvloop relay (no JSON, no
   routing, no logging): what one more Python hop costs on this machine, the floor under any Python gateway.
2. Maximum rate on one core: each proxy pinned to CPU 0 for the whole run (taskset), the load generator and the
   stand-in on the other CPU(s); requests/s from 16 kept-alive connections (bench/gateway.py's raw client), and
   each proxy's CPU time a request (all its threads, from /proc): the rate it would reach on a core of its own,
   a figure that other load on the machine disturbs far less than the rate itself.
3. Every request the gateway answered is counted on the broker's inference topic (Tansu).

LiteLLM never enters driftwatch's environment: it lives in a venv of its own, created on first use
(``python -m venv .bench/peers-venv`` and ``pip install 'litellm[proxy]==1.108.7'``, about a minute), and runs
with no database, no master key (LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY), no callbacks, message
logging off and its log level at ERROR (no access log). ``--profile`` also installs py-spy there and samples the
pinned gateway during its maximum-rate run.

    python bench/peers.py [--rate 20] [--requests 1000] [--load-seconds 10] [--profile] [--no-litellm]

Goals (issue 18): added p50 <= 0.5 ms, >= 4,000 requests/s on one core, every request logged.
"""

from __future__ import annotations

import argparse
import collections
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

from driftwatch.config import Settings
from driftwatch.dev.localbroker import LocalBroker, free_port
from driftwatch.ingest.kafka import read_range

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import max_rate, percentile, stand_in, start_gateway  # noqa: E402 - bench/gateway.py, beside this file

ROOT = Path(__file__).resolve().parents[1]
LITELLM = "litellm[proxy]==1.108.7"
MODEL = "production"


def bare_proxy(port: int, upstream_port: int) -> None:
    """The floor of a Python hop: uvloop, one kept-alive upstream connection per client connection, requests and
    answers relayed by content-length; no JSON, no routing, no logging."""
    import asyncio

    import uvloop

    async def read_message(reader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return head + await reader.readexactly(length)

    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        try:
            while True:
                up_writer.write(await read_message(reader))
                writer.write(await read_message(up_reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            up_writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 1)[0]


def peers_venv(venv: Path, *packages: str) -> Path:
    """The peers' own venv, created and filled on first use; its bin directory."""
    if not (venv / "bin" / "python").exists():
        print(f"creating {venv} (LiteLLM's own venv, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    missing = [p for p in packages if not (venv / "bin" / p.split("[")[0].split("=")[0]).exists()]
    if missing:
        print(f"installing {' '.join(missing)} into {venv}", flush=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *missing], check=True)
    return venv / "bin"


def start_litellm(bin_dir: Path, upstream: str, tmp: Path, cpu: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": "openai/base", "api_base": f"{upstream}/v1",
                                                               "api_key": "none"}}],
        "litellm_settings": {"callbacks": [], "success_callback": [], "failure_callback": [],
                             "turn_off_message_logging": True, "telemetry": False},
        "general_settings": {"disable_spend_logs": True},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "LITELLM_", "OPENAI_"))}
    env.update(LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true", LITELLM_LOG="ERROR",
               NO_DOCS="True", DISABLE_ADMIN_UI="True")
    command = [str(bin_dir / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
               "--num_workers", "1"]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    log = open(tmp / "litellm.log", "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM exited {proc.returncode}: {(tmp / 'litellm.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("LiteLLM did not start in 180 s")


def fixed_rate(paths: dict[str, str], rate: float, n: int) -> dict[str, list[float]]:
    """n rounds at ``rate`` rounds/s; each round sends one request along every path, the order rotating."""
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 1, "temperature": 0}
    names = list(paths)
    out: dict[str, list[float]] = {name: [] for name in names}
    with httpx.Client(timeout=30) as c:
        for name in names:  # warm every connection (and LiteLLM's router)
            for _ in range(3):
                assert c.post(f"{paths[name]}/v1/completions", json=body).status_code == 200
        t0 = time.perf_counter()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            for name in names[i % len(names):] + names[:i % len(names)]:
                t = time.perf_counter()
                r = c.post(f"{paths[name]}/v1/completions", json=body)
                out[name].append(time.perf_counter() - t)
                assert r.status_code == 200, (name, r.status_code, r.text[:300])
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) and of its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def measured(pid: int | None, fn, *args, **kwargs) -> tuple[float, float]:
    """(requests/s, CPU microseconds per request of process ``pid``) of a max_rate run."""
    counts = kwargs.setdefault("counts", {})
    before = cpu_s(pid) if pid else 0.0
    rate = fn(*args, **kwargs)
    used = (cpu_s(pid) - before) if pid else 0.0
    return rate, used / max(counts.get("ok", 0), 1) * 1e6


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def profile_summary(raw: Path, top: int = 25) -> None:
    """py-spy's raw (collapsed) stacks: share of samples by thread, by leaf function and by function anywhere on
    the stack (driftwatch's, starlette's, uvicorn's and kafka-python's frames)."""
    threads, leaf, inclusive, total = collections.Counter(), collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n, frames = int(count), stack.split(";")
        total += n
        threads[frames[0].split(": ", 1)[-1]] += n  # "thread (tid): name"
        leaf[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    if not total:
        print("  (no samples)")
        return
    print(f"  {total} samples; by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in threads.most_common(6)))
    print("  leaf functions (where the CPU is):")
    for frame, n in leaf.most_common(top):
        print(f"    {n / total:6.1%}  {frame}")
    print("  on the stack (inclusive), driftwatch / starlette / uvicorn / kafka frames:")
    shown = 0
    for frame, n in inclusive.most_common():
        if any(k in frame for k in ("driftwatch/", "starlette/", "uvicorn/", "kafka/", "pydantic/")):
            print(f"    {n / total:6.1%}  {frame}")
            shown += 1
            if shown == top:
                break


def main() -> None:
    from driftwatch.dev import unwind_on_sigterm

    unwind_on_sigterm()  # killed with SIGTERM, it still stops the servers it started
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20.0, help="requests/s on each path in the fixed-rate run")
    ap.add_argument("--requests", type=int, default=1000, help="requests on each path in the fixed-rate run")
    ap.add_argument("--load-seconds", type=float, default=10.0, help="seconds of each maximum-rate run")
    ap.add_argument("--venv", type=Path, default=ROOT / ".bench" / "peers-venv", help="LiteLLM's own venv")
    ap.add_argument("--no-litellm", action="store_true", help="direct and gateway only")
    ap.add_argument("--profile", action="store_true", help="sample the gateway with py-spy during its max-rate run")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs two CPUs: one for the proxy under test, one for the load generator and the stand-in")
    pinned, rest = cpus[0], set(cpus[1:])
    bin_dir = None
    if not args.no_litellm or args.profile:
        bin_dir = peers_venv(args.venv, *([] if args.no_litellm else [LITELLM]), *(["py-spy"] if args.profile else []))
    procs: list[subprocess.Popen] = []
    floor = None
    with tempfile.TemporaryDirectory() as tmp_dir, LocalBroker("tansu") as broker:
        tmp = Path(tmp_dir)
        up_port = free_port()
        upstream_proc = multiprocessing.Process(target=stand_in, args=(up_port,), daemon=True)
        upstream_proc.start()
        os.sched_setaffinity(upstream_proc.pid, rest)
        os.sched_setaffinity(0, rest)  # the load generator (this process) beside the stand-in
        upstream = f"http://127.0.0.1:{up_port}"
        try:
            floor_port = free_port()
            floor = multiprocessing.Process(target=bare_proxy, args=(floor_port, up_port), daemon=True)
            floor.start()
            os.sched_setaffinity(floor.pid, {pinned})
            gw, gw_url = start_gateway(broker, upstream, tmp, pinned)
            procs.append(gw)
            paths = {"direct": upstream, "bare hop": f"http://127.0.0.1:{floor_port}", "gateway": gw_url}
            if not args.no_litellm:
                ll, ll_url = start_litellm(bin_dir, upstream, tmp, pinned)
                procs.append(ll)
                paths["litellm"] = ll_url
            print(f"proxies pinned to CPU {pinned}; load generator and stand-in upstream on CPU(s) "
                  f"{','.join(map(str, sorted(rest)))}; gateway logs every request to Kafka (Tansu); LiteLLM "
                  f"{'off' if args.no_litellm else LITELLM + ', logging and callbacks off'}", flush=True)

            load0 = loadavg()
            lat = fixed_rate(paths, args.rate, args.requests)
            print(f"\n1. fixed rate: {args.rate:g} requests/s on each path, {args.requests} each, alternating "
                  f"(load {load0} -> {loadavg()})")
            p = {name: (percentile(xs, 0.5), percentile(xs, 0.99)) for name, xs in lat.items()}
            for name, (p50, p99) in p.items():
                added = "" if name == "direct" else (f"   added p50 {(p50 - p['direct'][0]) * 1000:6.2f} ms  "
                                                     f"p99 {(p99 - p['direct'][1]) * 1000:6.2f} ms")
                print(f"  {name:8s} p50 {p50 * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms{added}")
            print("  (bare hop: a minimal uvloop relay on the proxies' core, no JSON, routing or logging: what one "
                  "more Python hop costs here)")
            own = (metric(gw_url, "driftwatch_gateway_added_latency_seconds_sum")
                   / metric(gw_url, "driftwatch_gateway_added_latency_seconds_count"))
            print(f"  the gateway's own time per request (its metric, upstream excluded): mean {own * 1000:.3f} ms")

            print(f"\n2. maximum rate, {args.load_seconds:g} s each, the proxy pinned to CPU {pinned}:")
            counts: dict[str, int] = {}
            rates, cpu = {}, {}
            load0 = loadavg()
            rates["direct"], _ = measured(None, max_rate, upstream, args.load_seconds / 2)
            prof = None
            if args.profile:
                raw = tmp / "gateway.pyspy"
                prof = subprocess.Popen([str(bin_dir / "py-spy"), "record", "-p", str(gw.pid), "-r", "250", "-f", "raw",
                                         "-o", str(raw), "-d", str(max(1, int(args.load_seconds))), "--nonblocking",
                                         "--threads"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
            rates["bare hop"], cpu["bare hop"] = measured(floor.pid, max_rate, paths["bare hop"], args.load_seconds / 2)
            rates["gateway"], cpu["gateway"] = measured(gw.pid, max_rate, gw_url, args.load_seconds, counts=counts)
            if prof is not None:
                prof.wait(60)
            if "litellm" in paths:
                rates["litellm"], cpu["litellm"] = measured(ll.pid, max_rate, paths["litellm"], args.load_seconds)
            for name, rate in rates.items():
                note = (" (the stand-in alone, unpinned)" if name == "direct" else
                        f"   CPU {cpu[name]:,.0f} us a request (all its threads): {1e6 / cpu[name]:,.0f}/s on a "
                        "core of its own")
                print(f"  {name:8s} {rate:9,.0f} requests/s{note}")
            print(f"  (load {load0} -> {loadavg()})")

            # every request the gateway answered, on the broker
            deadline = time.monotonic() + 60
            while httpx.get(f"{gw_url}/healthz", timeout=5).json()["events_buffered"] and time.monotonic() < deadline:
                time.sleep(0.2)
            answered = int(metric(gw_url, "driftwatch_gateway_requests_total"))
            settings = Settings.model_validate({"kafka": {"bootstrap_servers": [broker.bootstrap]}})
            values = read_range(settings.kafka, settings.kafka.topics.inference, idle_s=3.0)
            ids = {json.loads(v)["request_id"] for v in values}
            sent = 3 + args.requests + counts["sent"]
            print(f"\n3. logging: {sent:,} requests sent to the gateway, {answered:,} answered (its metric), "
                  f"{len(values):,} events on the topic, {len(ids):,} distinct request ids: "
                  + ("every request logged" + (f" ({len(values) - len(ids)} re-sent copies, dropped by the daemon's "
                                               "dedup)" if len(values) > len(ids) else " exactly once")
                     if len(ids) == answered == sent else "MISMATCH"))

            if "litellm" in paths:
                g, l_ = p["gateway"], p["litellm"]
                d = p["direct"]
                print(f"\nratios: LiteLLM's added p50 / the gateway's {(l_[0] - d[0]) / max(g[0] - d[0], 1e-6):.0f}x, "
                      f"p99 {(l_[1] - d[1]) / max(g[1] - d[1], 1e-6):.0f}x; the gateway's max rate / LiteLLM's "
                      f"{rates['gateway'] / rates['litellm']:.0f}x")
            print(f"goals: added p50 <= 0.5 ms: {(p['gateway'][0] - p['direct'][0]) * 1000:.2f} ms; >= 4,000 "
                  f"requests/s on one core: {rates['gateway']:,.0f}")
            if args.profile:
                print(f"\nprofile of the gateway at its maximum rate (py-spy, {max(1, int(args.load_seconds))} s, "
                      "250 Hz, GIL waits count where they happen):")
                profile_summary(tmp / "gateway.pyspy")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            upstream_proc.terminate()
            if floor is not None:
                floor.terminate()


if __name__ == "__main__":
    main()
