"""The digits example (examples/digits/train_digits.py) end to end, as a user runs it.

The script starts the real optd binary itself, spawns 4 worker processes that train a small MLP on
scikit-learn's bundled digits data through one SYNC session with optd.torch.RemoteOptimizer, and
reports test accuracy. Adam must reach >= 95% test accuracy; normalized GD runs beside it in the
same invocation and the loss figure is written as a PNG.

Run: /usr/bin/python3 -m pytest -q tests/digits_test.py   (OPTD_BUILD_DIR picks the build)
"""

import json
import os
import subprocess

from optd_testing import REPO_ROOT, build_dir

SCRIPT = REPO_ROOT / "examples" / "digits" / "train_digits.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_four_workers_train_digits_to_95_percent_with_adam(tmp_path):
    out_json, out_png = tmp_path / "digits.json", tmp_path / "digits.png"
    proc = subprocess.run(
        ["/usr/bin/python3", str(SCRIPT), "--optimizers=adam,normalized_gd", "--workers=4",
         f"--json={out_json}", f"--plot={out_png}", "--run-timeout=240"],
        env=dict(os.environ, OPTD_BUILD_DIR=str(build_dir()), MPLBACKEND="Agg"),
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out_json.read_text())
    results = {r["optimizer"]: r for r in report["results"]}
    assert set(results) == {"adam", "normalized_gd"}
    for name, r in results.items():
        assert r["status"] == "ok", (name, r["status"])
        assert r["workers"] == 4 and r["mode"] == "sync"
        # Every worker's steps went into one SYNC barrier: the session's version (steps applied)
        # equals the steps each worker took, and the loss fell.
        assert r["steps"] == len(r["step_loss"]) > 100, name
        assert r["step_loss"][-1] < r["step_loss"][0], name
    assert results["adam"]["test_accuracy"] >= 0.95, results["adam"]
    # The server was the script's own and it stopped cleanly (graceful SIGTERM).
    assert report["server_pid"] is not None
    assert "stopped, exit status 0" in proc.stdout, proc.stdout
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert "| Adam |" in proc.stdout and "| Normalized GD |" in proc.stdout
