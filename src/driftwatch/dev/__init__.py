"""Development tools: local brokers and vLLM, the demo, the simulator, the efficacy study."""

from __future__ import annotations

import signal
import sys


def unwind_on_sigterm() -> None:
    """SIGTERM from outside unwinds the way Ctrl-C does (``finally`` blocks and context managers run), so the vLLM,
    broker and gateways a tool started stop with it instead of outliving it. Python's default for SIGTERM is to die
    at once."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
