import subprocess
import sys


def test_demo_runs_20_seconds_reads_back_exact_counts_and_fires_a_rule():
    proc = subprocess.run([sys.executable, "-m", "driftwatch", "demo", "--duration", "20"], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all counts match" in proc.stdout
    assert "MISMATCH" not in proc.stdout
    for line in ("inference accepted", "dead letters: bad_utf8", "duplicates"):
        assert line in proc.stdout
    assert "retrain support-v2: input-drift" in proc.stdout  # the drifting adapter triggers a retrain request
    assert "retrain support-v1" not in proc.stdout
