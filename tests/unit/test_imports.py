import subprocess
import sys

import driftwatch

HEAVY = ["torch", "transformers", "peft", "evidently", "pandas", "vllm"]


def test_cli_and_daemon_import_no_heavy_library():
    code = (
        "import sys, driftwatch.cli, driftwatch.app, driftwatch.ingest.kafka, driftwatch.dev.demo; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_public_names():
    assert driftwatch.__all__ == sorted(driftwatch.__all__, key=lambda n: (n != "__version__", n))
    for name in driftwatch.__all__:
        assert getattr(driftwatch, name) is not None
    assert issubclass(driftwatch.TopicLayoutError, driftwatch.DriftwatchError)
