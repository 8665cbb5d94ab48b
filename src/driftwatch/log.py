"""Logging set-up: plain text for people, JSON lines for log pipelines. Never logs secrets (config is redacted)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


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
    logging.getLogger("kafka").setLevel(logging.ERROR if quiet else max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # httpx logs every request at INFO (an evaluation's hundreds, each vLLM call): driftwatch logs what they mean
    logging.getLogger("httpx").setLevel(logging.WARNING if quiet else logging.getLevelName(level))


def quiet_libraries() -> None:
    """Before any library is imported (and for the subprocesses: the trainer, vLLM): no progress bars, and only the
    libraries' errors. The CLI calls it unless --verbose."""
    for name, value in (("DRIFTWATCH_QUIET_LIBRARIES", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TQDM_DISABLE", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)
