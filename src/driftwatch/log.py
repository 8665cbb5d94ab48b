"""Logging set-up: plain text for people, JSON lines for log pipelines. Never logs secrets (config is redacted)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class Kept(logging.Handler):
    """A library's warnings and errors kept rather than printed: the last one (what failed) and how many. kafka-python
    logs every failed connection attempt (212 lines in two minutes of broker restarts); driftwatch's broker watch
    (app.BrokerWatch) says the same in a line when the broker is lost, one a minute, and one when it is back."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.last, self.count = record.getMessage()[:500], self.count + 1


KAFKA = Kept()  # kafka-python's


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet = os.environ.get("DRIFTWATCH_QUIET_LIBRARIES") == "1"
    # kafka-python warns about its own event loop under load ("blocking the event loop"): driftwatch reports what
    # matters (poll failures, readiness); --verbose lets it through
    keep_kafka_logs(quiet, level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # httpx logs every request at INFO (an evaluation's hundreds, each vLLM call): driftwatch logs what they mean
    logging.getLogger("httpx").setLevel(logging.WARNING if quiet else logging.getLevelName(level))


def keep_kafka_logs(quiet: bool = True, level: str = "INFO") -> None:
    """kafka-python's lines go to :data:`KAFKA` (kept, not printed); --verbose prints them too."""
    kafka = logging.getLogger("kafka")
    kafka.setLevel(logging.WARNING if quiet else max(logging.WARNING, logging.getLevelName(level)))
    kafka.handlers[:] = [KAFKA]
    kafka.propagate = not quiet


def quiet_libraries() -> None:
    """Before any library is imported (and for the subprocesses: the trainer, vLLM): no progress bars, and only the
    libraries' errors. The CLI calls it unless --verbose."""
    for name, value in (("DRIFTWATCH_QUIET_LIBRARIES", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TQDM_DISABLE", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)
