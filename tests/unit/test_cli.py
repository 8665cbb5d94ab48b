import json
import logging
import subprocess
import sys

from driftwatch.log import JsonFormatter


def test_run_with_a_bad_config_exits_2_naming_field_and_fix(tmp_path):
    cfg = tmp_path / "dw.yaml"
    cfg.write_text("kafka:\n  consumer:\n    sesion_timeout_ms: 6000\n")
    proc = subprocess.run([sys.executable, "-m", "driftwatch", "run", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert "kafka.consumer.sesion_timeout_ms" in proc.stderr and "did you mean 'session_timeout_ms'" in proc.stderr


def test_simulate_refuses_unknown_bad_kind():
    proc = subprocess.run([sys.executable, "-m", "driftwatch", "simulate", "--bad", "gibberish=1"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown bad record kind" in proc.stderr


def test_json_log_lines_carry_extra_fields_and_exceptions():
    record = logging.LogRecord("driftwatch", logging.ERROR, __file__, 1, "commit failed for %s", ("g1",), None)
    record.partition = 3
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "commit failed for g1" and line["level"] == "error" and line["partition"] == 3
    assert "ValueError: boom" in line["exc"] and line["ts"].endswith("Z")



def test_a_dev_tool_stopped_with_sigterm_stops_what_it_started(tmp_path):
    """`make efficacy` killed with SIGTERM left its vLLM server running: Python dies at once on SIGTERM, and the
    ``finally`` that stops the server never ran. With unwind_on_sigterm it runs."""
    import os
    import signal

    script = tmp_path / "tool.py"
    script.write_text(
        "import subprocess, sys\n"
        "from driftwatch.dev import unwind_on_sigterm\n"
        "unwind_on_sigterm()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "try:\n"
        "    print(child.pid, flush=True)\n"
        "    child.wait()\n"
        "finally:\n"
        "    child.kill()\n"
        "    child.wait()\n")
    tool = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(tool.stdout.readline())
    tool.send_signal(signal.SIGTERM)
    assert tool.wait(30) == 128 + signal.SIGTERM
    try:
        os.kill(child, 0)
    except ProcessLookupError:
        return
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the tool's child outlived it")
