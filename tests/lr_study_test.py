"""The learning-rate study (examples/lr_study/lr_study.py), in its --tiny configuration.

The whole design runs -- every default optimizer, both problems (the 4-worker SYNC digits MLP and
the breast-cancer logistic regression), several knob values and seeds, the normalized-GD edge
case, the tables and the four figures -- through the optd binary the script starts itself, with
1 epoch and 3 knob values per optimizer so it takes about a minute. Outputs go to a temporary
folder: the committed figures and tables in examples/lr_study are checked to be left alone. The
analysis (the decades within the margin) is also checked on made-up numbers.

Run: /usr/bin/python3 -m pytest -q tests/lr_study_test.py   (OPTD_BUILD_DIR picks the build)
"""

import hashlib
import json
import os
import subprocess
import sys

from optd_testing import REPO_ROOT, build_dir

STUDY_DIR = REPO_ROOT / "examples" / "lr_study"
SCRIPT = STUDY_DIR / "lr_study.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("sweep_digits.png", "sweep_breast_cancer.png", "decades.png", "ngd_near_minimum.png",
           "results.md", "results.json")


def _committed():
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(STUDY_DIR.iterdir()) if p.is_file()}


def test_tiny_study_runs_end_to_end_through_optd(tmp_path):
    before = _committed()
    out = tmp_path / "study"
    proc = subprocess.run(
        ["/usr/bin/python3", str(SCRIPT), "--tiny", f"--out-dir={out}"],
        env=dict(os.environ, OPTD_BUILD_DIR=str(build_dir()), MPLBACKEND="Agg"),
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    for name in OUTPUTS[:4]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert _committed() == before, "the tiny run wrote over examples/lr_study"

    report = json.loads((out / "results.json").read_text())
    assert report["server_pid"] is not None
    assert "stopped, exit status 0" in proc.stdout, proc.stdout
    runs = report["runs"]
    optimizers = {"sgd", "normalized_gd", "adagrad", "adadelta", "adam", "schedulefree_adamw",
                  "prodigy", "prodigy_d0", "dadapt_adam", "dog"}
    assert {r["optimizer"] for r in runs} == optimizers
    assert {r["problem"] for r in runs} == {"digits", "breast_cancer"}
    # 2 problems x 10 sweeps (Prodigy twice: d_coef and d0) x 3 knob values x 2 seeds, each a
    # session of its own.
    assert len(runs) == 2 * 10 * 3 * 2
    assert len({r["session_id"] for r in runs}) == len(runs)
    for r in runs:
        # Runs either finish or diverge (the sweep's ends may); never an RPC failure.
        assert r["status"] == "ok" or r["status"].startswith("diverged"), r
        if r["status"] == "ok" and r["problem"] == "digits":
            # One epoch: 359 examples per worker in batches of 16 -> 23 SYNC steps, each one
            # version of the session (all 4 workers' gradients went into every step).
            assert r["steps"] == 23, r
            assert 0.0 <= r["test_accuracy"] <= 1.0
        if r["status"] == "ok" and r["problem"] == "breast_cancer":
            assert r["objective"] >= report["summary"]["breast_cancer"]["f_star"] * (1 - 1e-6)
    # Adam at lr 0.01 learns digits in one epoch (far above chance).
    adam = [r for r in runs if r["problem"] == "digits" and r["optimizer"] == "adam" and
            r["knob_value"] == 0.01]
    assert adam and all(r["test_accuracy"] > 0.5 for r in adam), adam
    # The edge case: normalized GD at a fixed lr moves the weights exactly lr in every step,
    # however small the gradient; the eps guard makes the steps shrink as ||g|| does.
    edge = {e["label"]: e for e in report["edge"]["runs"]}
    fixed = next(e for label, e in edge.items() if label.startswith("fixed lr 0.1"))
    assert all(abs(s - 0.1) < 1e-3 for s in fixed["step_length"]), fixed["step_length"][:5]
    guarded = next(e for label, e in edge.items() if label.startswith("guard g/(‖g‖+eps)"))
    assert guarded["step_length"][-1] < 0.1 * 0.99
    table = (out / "results.md").read_text()
    for label in ("| SGD |", "| Normalized GD |", "| Prodigy |", "| DoG |",
                  "| Schedule-Free AdamW |"):
        assert label in table, label


def test_decades_within_the_margin():
    sys.path.insert(0, str(STUDY_DIR))
    import lr_study  # pylint: disable=import-outside-toplevel
    knobs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    assert lr_study.band(knobs, [False, True, True, True, False]) == (2.0, 1e-2, 1.0, False)
    assert lr_study.band(knobs, [True, True, False, True, False]) == (1.0, 1e-3, 1e-2, True)
    assert lr_study.band(knobs, [False] * 5) == (0.0, None, None, False)
    assert lr_study.fmt_band((0.0, None, None, False)) == "none"
    assert lr_study.fmt_band((0.0, 0.1, 0.1, False)) == "0.0 (0.1–0.1)"
    assert lr_study.band(knobs, [False, False, True, False, False]) == (0.0, 0.1, 0.1, False)

    def run(opt, knob, seed, acc):
        return {"optimizer": opt, "knob_value": knob, "seed": seed, "status": "ok",
                "test_accuracy": acc}
    runs = [run("adam", k, s, a) for k, a in zip(knobs, (0.90, 0.965, 0.97, 0.962, 0.5))
            for s in range(2)]
    runs += [run("sgd", k, s, a) for k, a in zip(knobs, (0.2, 0.6, 0.95, 0.955, 0.94))
             for s in range(2)]
    runs.append({"optimizer": "sgd", "knob_value": 10.0, "seed": 2, "status": "diverged (nan)"})
    summary = lr_study.summarize("digits", runs)
    assert abs(summary["overall_best"] - 97.0) < 1e-9
    adam, sgd = summary["table"]["adam"], summary["table"]["sgd"]
    assert adam["best_knob"] == 0.1 and adam["band_mean"][1:3] == (1e-2, 1.0)
    assert abs(adam["band_mean"][0] - 2.0) < 1e-9
    # SGD: 95.5% at best is 1.5 points below Adam's best: nothing within the margin, but two
    # points within 1 point of its own best (10 failed one seed: not counted).
    assert sgd["band_mean"][1] is None
    assert sgd["band_own"][:3] == (1.0, 0.1, 1.0)
    assert sgd["failed"][-1] == 1
