"""The chaos soak: the whole loop for a compressed day under faults injected at random from a seed, its invariants
checked all along (src/driftwatch/dev/soak.py says what runs, which faults and which invariants). Offline.

    python bench/soak.py [--minutes 30] [--seed 0] [--rate 100]

Run time: --minutes of traffic plus about a minute to start the stack and to check the end (~32 min by default).
A violation prints the seed and the fault schedule and exits 1; the CI-sized form is tests/integration/test_soak.py.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    from driftwatch.dev import unwind_on_sigterm
    from driftwatch.dev.soak import run

    unwind_on_sigterm()  # killed with SIGTERM, it still stops the daemon, broker and servers it started
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0, help="of traffic (a day compressed)")
    ap.add_argument("--seed", type=int, default=0, help="the fault schedule's")
    ap.add_argument("--rate", type=float, default=100.0, help="mean requests/s (rising and falling 0.25x-1.75x)")
    args = ap.parse_args()
    return run(args.seed, args.minutes, args.rate)


if __name__ == "__main__":
    sys.exit(main())
