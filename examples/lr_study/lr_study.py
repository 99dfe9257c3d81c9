#!/usr/bin/python3
"""How much tuning does each optimizer need? A sweep of every optimizer's knob, through optd.

The study of issue #15: for SGD, normalized GD, Adagrad, Adadelta, Adam and the learning-rate-free
optimizers (Prodigy, D-Adaptation Adam, DoG, Schedule-Free AdamW, ...), the one knob each keeps
(the learning rate; Prodigy's d_coef; D-Adaptation's lr multiplier; DoG's r_eps) is swept over six
or more decades at half-decade steps, with several seeds per point, on two problems that ship with
Debian's packages (no download):

* digits: the 64-64-10 MLP of examples/digits on scikit-learn's digits, 4 workers through one
  SYNC session (REDUCE_MEAN), here 4 threads of one process per run (each with its own channel and
  worker id, the same protocol as the 4 processes of train_digits.py). Result: test accuracy.
* breast_cancer: L2-regularized logistic regression on scikit-learn's breast-cancer set
  (standardized features), one worker, minibatches of 32. Result: the full training objective
  f(w) against its optimum f* (computed here in float64 by Newton's method).

and the edge case of the seed question: normalized GD near the minimum of a convex quadratic,
where ||g|| -> 0 but the step stays lr long (fixed lr, the eps guard in both forms, schedules, and
DoG beside them), one figure.

Every run is a session on a real optd that the script starts (``$OPTD_BUILD_DIR/server/optd`` or
``<repo>/build/server/optd``, on 127.0.0.1 port 0) and stops (SIGTERM) at the end. Runs go
``--parallel`` at a time (separate processes). The answer -- how many decades of the knob stay
within the margin of the best result -- is printed as Markdown and written with the figures:

    /usr/bin/python3 examples/lr_study/lr_study.py            # the README study (~5 min, 2 cores)
    /usr/bin/python3 examples/lr_study/lr_study.py --tiny --out-dir=/tmp/s   # a 1-minute smoke run

Outputs in ``--out-dir`` (default examples/lr_study): sweep_digits.png, sweep_breast_cancer.png,
decades.png, ngd_near_minimum.png, results.md (the tables) and results.json (every run).
"""

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "digits"))

# train_digits puts the client sources and the generated stubs on sys.path, and gives us the data,
# the model and the server wrapper (one place for all three).
import train_digits as td  # noqa: E402  pylint: disable=wrong-import-position

import numpy as np  # noqa: E402

import optd  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# The optimizers and their knobs.


def grid(lo: float, hi: float, per_decade: int):
    """Powers of ten from 10^lo to 10^hi, ``per_decade`` points per decade."""
    n = int(round((hi - lo) * per_decade))
    return [float(f"{10 ** (lo + i / per_decade):.3g}") for i in range(n + 1)]


# name -> label, colour (one per optimizer in every figure), the knob's field, its default (None:
# no default), the swept range in decades (log10 lo, hi), fixed hyperparameters, and whether the
# result is read at the evaluation point (Schedule-Free's x).
OPTIMIZERS = {
    "sgd": dict(label="SGD", color="#ff7f0e", knob="lr", default=None, range=(-4, 2)),
    "normalized_gd": dict(label="Normalized GD", color="#d62728", knob="lr", default=1e-2,
                          range=(-4, 2)),
    "adagrad": dict(label="Adagrad", color="#2ca02c", knob="lr", default=1e-2, range=(-4, 2)),
    "adadelta": dict(label="Adadelta", color="#8c564b", knob="lr", default=1.0, range=(-2, 4)),
    "adam": dict(label="Adam", color="#1f77b4", knob="lr", default=1e-3, range=(-5, 1)),
    "schedulefree_adamw": dict(label="Schedule-Free AdamW", color="#17becf", knob="lr",
                               default=2.5e-3, range=(-5, 1), point="evaluation"),
    "prodigy": dict(label="Prodigy", color="#9467bd", knob="d_coef", default=1.0, range=(-3, 3)),
    # Prodigy's other knob: the initial estimate d0 (d_coef at its default).
    "prodigy_d0": dict(label="Prodigy (d0)", color="#5e3c99", kind="prodigy", knob="d0",
                       default=1e-6, range=(-9, 0)),
    "dadapt_adam": dict(label="D-Adapt Adam", color="#e377c2", knob="lr", default=1.0,
                        range=(-3, 3)),
    # DoG with its polynomial-decay iterate average, read at the average (as its authors advise).
    "dog": dict(label="DoG", color="#7f7f7f", knob="reps_rel", default=1e-6, range=(-8, 1),
                fixed={"averaging": True}, point="evaluation"),
    # Cheap extras (--optimizers=all): the SGD variants of D-Adaptation and Schedule-Free, L-DoG.
    "dadapt_sgd": dict(label="D-Adapt SGD", color="#bcbd22", knob="lr", default=1.0,
                       range=(-3, 3)),
    "schedulefree_sgd": dict(label="Schedule-Free SGD", color="#aec7e8", knob="lr", default=1.0,
                             range=(-4, 2), point="evaluation"),
    "ldog": dict(label="L-DoG", color="#c7c7c7", knob="reps_rel", default=1e-6, range=(-8, 1),
                 fixed={"averaging": True}, point="evaluation"),
}
DEFAULT_SET = ("sgd", "normalized_gd", "adagrad", "adadelta", "adam", "schedulefree_adamw",
               "prodigy", "prodigy_d0", "dadapt_adam", "dog")
KNOB_LABELS = {"lr": "learning rate", "d_coef": "d_coef (multiplier of the estimated d)",
               "d0": "d0 (initial estimate of d)",
               "reps_rel": "r_ε (first step, relative to 1+‖x₀‖)"}

PROBLEMS = {
    "digits": dict(title="digits MLP, 4 workers, SYNC", metric="test accuracy (%)",
                   margin="1 percentage point of test accuracy"),
    "breast_cancer": dict(title="logistic regression, breast cancer", metric="f(w) / f*",
                          margin="1% of the objective (f ≤ 1.01·f*)"),
}

# ---------------------------------------------------------------------------------------------------
# Problem B: L2-regularized logistic regression on the breast-cancer set.

LOGREG_L2 = 1e-2


def load_breast_cancer():
    """(x_train, y_train, x_test, y_test): standardized with the training split's statistics and a
    constant column for the bias; stratified 80/20 split (fixed)."""
    # pylint: disable-next=import-outside-toplevel
    from sklearn.datasets import load_breast_cancer as load
    from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel
    data = load()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target.astype(np.float64), test_size=0.2, random_state=0,
        stratify=data.target)
    mean, std = x_train.mean(0), x_train.std(0)

    def prep(x):
        x = (x - mean) / std
        return np.hstack([x, np.ones((len(x), 1))])
    return prep(x_train), y_train, prep(x_test), y_test


def logreg_objective(w, x, y):
    """Mean logistic loss + LOGREG_L2/2 ||w||^2 (bias included), and its gradient, in float64."""
    w = np.asarray(w, np.float64)
    z = x @ w
    loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * LOGREG_L2 * w @ w
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
    grad = x.T @ (p - y) / len(y) + LOGREG_L2 * w
    return loss, grad


def logreg_optimum(x, y):
    """f* and w* by Newton's method in float64 (strongly convex: a few iterations)."""
    w = np.zeros(x.shape[1])
    for _ in range(50):
        loss, grad = logreg_objective(w, x, y)
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ w)))
        hess = (x.T * (p * (1 - p))) @ x / len(y) + LOGREG_L2 * np.eye(x.shape[1])
        w = w - np.linalg.solve(hess, grad)
        if np.linalg.norm(grad) < 1e-13:
            break
    return logreg_objective(w, x, y)[0], w


# ---------------------------------------------------------------------------------------------------
# Runs (in the runner processes).

_RUNNER = {}


def runner_init(address: str, workers: int, hidden: int) -> None:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(1)
    _RUNNER["clients"] = [optd.Client(address, timeout=120.0) for _ in range(workers)]
    _RUNNER["digits"] = td.load_data(0)
    _RUNNER["breast_cancer"] = load_breast_cancer()
    _RUNNER["hidden"] = hidden


def hyperparameters(name: str, knob_value: float):
    spec = OPTIMIZERS[name]
    return {spec["knob"]: knob_value, **spec.get("fixed", {})}


def kind(name: str) -> str:
    return OPTIMIZERS[name].get("kind", name)


def run_job(job):
    start = time.monotonic()
    try:
        out = (digits_run if job["problem"] == "digits" else logreg_run)(job)
    except optd.OptdError as e:
        out = {"status": f"error ({e.code.name}: {e.message[:160]})"}
    out.update(job)
    out["seconds"] = time.monotonic() - start
    return out


def digits_run(job):
    """One training run: 4 threads, each a worker with its own channel, one SYNC session."""
    import torch  # pylint: disable=import-outside-toplevel
    x_train, y_train, x_test, y_test = _RUNNER["digits"]
    clients, hidden = _RUNNER["clients"], _RUNNER["hidden"]
    workers = len(clients)
    model = td.make_model(hidden, job["seed"])
    names = [n for n, _ in model.named_parameters()]
    initial = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    worker_ids = [f"worker-{r}" for r in range(workers)]
    session = clients[0].create_session(
        initial, kind(job["optimizer"]), session_id=job["session_id"],
        consistency=optd.consistency("sync", workers=workers, worker_ids=worker_ids,
                                     barrier_timeout_seconds=60),
        **hyperparameters(job["optimizer"], job["knob_value"]))
    shard = len(x_train) // workers
    status = ["ok"] * workers
    steps = [0] * workers
    first_loss = [None] * workers

    def worker(rank):
        # The session's initial parameters, copied: not make_model again, whose torch.manual_seed
        # is process-wide, so four threads seeding and drawing at once raced (a worker's first
        # gradient then came from other weights, and 1 run in 3 did not repeat).
        net = copy.deepcopy(model)
        params = dict(net.named_parameters())
        xs = torch.from_numpy(x_train[rank * shard:(rank + 1) * shard])
        ys = torch.from_numpy(y_train[rank * shard:(rank + 1) * shard])
        s = clients[rank].session(session.session_id, worker_id=worker_ids[rank], version=0)
        try:
            for epoch in range(job["epochs"]):
                order = torch.from_numpy(
                    np.random.default_rng([job["seed"], epoch, rank]).permutation(shard))
                for begin in range(0, shard, job["batch"]):
                    idx = order[begin:begin + job["batch"]]
                    net.zero_grad()
                    loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
                    if not math.isfinite(loss.item()):
                        raise FloatingPointError(f"loss {loss.item()} at step {steps[rank]}")
                    loss.backward()
                    if first_loss[rank] is None:
                        first_loss[rank] = loss.item()
                    r = s.step({n: params[n].grad.numpy() for n in names}, loss=loss.item())
                    with torch.no_grad():
                        for n in names:
                            params[n].copy_(torch.tensor(r.parameters[n]))
                    steps[rank] += 1
        except FloatingPointError as e:
            status[rank] = f"diverged ({e})"
        except optd.OptdError as e:
            status[rank] = f"stopped ({e.code.name}: {e.message[:200]})"
        if status[rank] != "ok":
            try:  # releases the other workers from the barrier
                session.delete()
            except optd.OptdError:
                pass

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [s for s in status if s != "ok"]
    if failed:
        diverged = [s for s in failed if s.startswith("diverged")]
        return {"status": (diverged or failed)[0], "steps": min(steps), "test_accuracy": None,
                "train_loss": None}
    point = OPTIMIZERS[job["optimizer"]].get("point", "training")
    final = session.pull(point=point)
    info = session.info()
    session.delete()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.array(final.tensors[n], np.float32)))
    train_loss, _ = td.evaluate(model, x_train, y_train)
    _, accuracy = td.evaluate(model, x_test, y_test)
    if not math.isfinite(train_loss):
        return {"status": "diverged (final loss not finite)", "steps": final.version,
                "test_accuracy": None, "train_loss": None}
    return {"status": "ok", "steps": final.version, "test_accuracy": accuracy,
            "train_loss": train_loss, "point": point,
            "estimates": dict(info.optimizer_estimates)}


def logreg_run(job):
    """One worker, minibatches of ``batch``, ``epochs`` passes; f(w) at the end (at the evaluation
    point for Schedule-Free)."""
    x, y, x_test, y_test = _RUNNER["breast_cancer"]
    rng = np.random.default_rng([job["seed"], 1])
    w0 = (rng.standard_normal(x.shape[1]) / math.sqrt(x.shape[1])).astype(np.float32)
    client = _RUNNER["clients"][0]
    session = client.create_session({"w": w0}, kind(job["optimizer"]), session_id=job["session_id"],
                                    **hyperparameters(job["optimizer"], job["knob_value"]))
    w = w0.astype(np.float64)
    steps = 0
    status = "ok"
    for epoch in range(job["epochs"]):
        order = np.random.default_rng([job["seed"], epoch]).permutation(len(y))
        for begin in range(0, len(y), job["batch"]):
            idx = order[begin:begin + job["batch"]]
            loss, grad = logreg_objective(w, x[idx], y[idx])
            if not (math.isfinite(loss) and np.all(np.isfinite(grad))):
                status = f"diverged (loss {loss} at step {steps})"
                break
            r = session.step({"w": grad.astype(np.float32)}, loss=float(loss))
            w = r.parameters["w"].astype(np.float64)
            steps += 1
        if status != "ok":
            break
    if status == "ok":
        point = OPTIMIZERS[job["optimizer"]].get("point", "training")
        w = np.asarray(session.pull(point=point).tensors["w"], np.float64)
        objective = logreg_objective(w, x, y)[0]
        if not math.isfinite(objective):
            status = "diverged (final objective not finite)"
    session.delete()
    if status != "ok":
        return {"status": status, "steps": steps, "objective": None, "test_accuracy": None}
    accuracy = float(np.mean((x_test @ w > 0) == (y_test > 0.5)))
    return {"status": "ok", "steps": steps, "objective": objective, "test_accuracy": accuracy}


# ---------------------------------------------------------------------------------------------------
# The edge case: normalized GD near the minimum of a convex quadratic.

def edge_case(address: str, steps: int):
    """f(w) = 1/2 (w - w*)^T A (w - w*), A = diag(logspace(0, 1, 20)) (condition 10), w* ~ N(0, 1)
    (fixed seed), w0 = 0: full-batch gradients, one worker. Returns {label: series}."""
    dim = 20
    a = np.logspace(0, 1, dim)
    w_star = np.random.default_rng(15).standard_normal(dim)
    lr = 0.1
    runs = [
        ("fixed lr 0.1 (eps 1e-6, the default guard)",
         "normalized_gd", dict(lr=lr), None),
        ("fixed lr 0.02", "normalized_gd", dict(lr=0.02), None),
        ("guard g/(‖g‖+eps), eps 1", "normalized_gd", dict(lr=lr, eps=1.0, guard="add_eps"),
         None),
        ("guard g/max(‖g‖, eps), eps 1", "normalized_gd", dict(lr=lr, eps=1.0, guard="max_eps"),
         None),
        ("schedule: cosine to 0 over the run", "normalized_gd", dict(lr=lr),
         optd.schedule("cosine_annealing", t_max=steps)),
        ("schedule: exponential, γ = 0.98", "normalized_gd", dict(lr=lr),
         optd.schedule("exponential", gamma=0.98)),
        ("DoG (r_ε 1e-6): distance estimate, no lr", "dog", dict(), None),
    ]
    out = {"lr": lr, "w_star_norm": float(np.linalg.norm(w_star)), "runs": []}
    with optd.Client(address, timeout=60.0) as client:
        for i, (label, kind, hyper, sched) in enumerate(runs):
            w = np.zeros(dim, np.float32)
            session = client.create_session({"w": w}, kind, session_id=f"edge-{os.getpid()}-{i}",
                                            schedule=sched, **hyper)
            dist, step_len, gnorm, lrs = [float(np.linalg.norm(w - w_star))], [], [], []
            for _ in range(steps):
                g = a * (w.astype(np.float64) - w_star)
                r = session.step({"w": g.astype(np.float32)})
                new = r.parameters["w"]
                step_len.append(float(np.linalg.norm(new.astype(np.float64) - w)))
                gnorm.append(float(np.linalg.norm(g)))
                lrs.append(r.learning_rate)
                w = new
                dist.append(float(np.linalg.norm(w.astype(np.float64) - w_star)))
            session.delete()
            out["runs"].append({"label": label, "optimizer": kind,
                                "hyperparameters": {k: v for k, v in hyper.items()},
                                "distance": dist, "step_length": step_len,
                                "gradient_norm": gnorm, "learning_rate": lrs})
    return out


# ---------------------------------------------------------------------------------------------------
# Analysis.

# The margins: (tight, loose). digits: points of test accuracy below the best of all optimizers;
# breast_cancer: relative excess of the objective over the optimum f* (the best possible result).
MARGINS = {"digits": (1.0, 3.0), "breast_cancer": (0.01, 0.05)}


def result_value(problem: str, r):
    """The run's result, or None when it failed: test accuracy in % (digits, higher is better),
    the training objective f(w) (breast_cancer, lower is better)."""
    if r["status"] != "ok":
        return None
    if problem == "digits":
        return 100.0 * r["test_accuracy"]
    return r["objective"]


def within(problem: str, value, best, margin):
    """Is ``value`` within ``margin`` of ``best``? digits: at most ``margin`` points of accuracy
    below; breast_cancer: f <= (1 + margin) best (best: f*, or the optimizer's own best)."""
    if value is None or not math.isfinite(value):
        return False
    if problem == "digits":
        return value >= best - margin
    return value <= (1.0 + margin) * best


def band(knobs, ok):
    """The widest run of consecutive grid points that pass, in decades: (width, lo, hi,
    censored), where censored says the run touches an end of the sweep (the true width is
    larger). (0, None, None, False) when no point passes. A single point counts 0 decades."""
    best = (0.0, None, None, False, -1)
    i = 0
    while i < len(knobs):
        if not ok[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(knobs) and ok[j + 1]:
            j += 1
        width = math.log10(knobs[j]) - math.log10(knobs[i])
        if j - i > best[4]:
            best = (width, knobs[i], knobs[j], i == 0 or j == len(knobs) - 1, j - i)
        i = j + 1
    return best[:4]


def summarize(problem: str, runs, f_star=None):
    """Per optimizer: the knob grid, per-point mean/min/max over seeds, the best point, the
    result at the knob's default, and the decades within the margins:

    * band_mean: the seeds' mean within the tight margin of the best result (digits: the best
      mean of any optimizer and knob; breast_cancer: f*),
    * band_all: every seed within it,
    * band_own: the mean within the tight margin of the optimizer's own best,
    * band_loose: the mean within the loose margin of the best result.
    A point where a seed failed (diverged) passes none."""
    by_opt = {}
    for r in runs:
        by_opt.setdefault(r["optimizer"], {}).setdefault(r["knob_value"], []).append(r)
    higher = problem == "digits"
    tight, loose = MARGINS[problem]
    table = {}
    for name, points in by_opt.items():
        knobs = sorted(points)
        values = [[result_value(problem, r) for r in points[k]] for k in knobs]
        means = [None if any(v is None for v in vs) else float(np.mean(vs)) for vs in values]
        worst = [None if any(v is None for v in vs) else (min(vs) if higher else max(vs))
                 for vs in values]
        table[name] = {"knobs": knobs, "values": values, "mean": means, "worst": worst,
                       "failed": [sum(v is None for v in vs) for vs in values]}
    pick = max if higher else min
    finite = [m for t in table.values() for m in t["mean"] if m is not None]
    overall = pick(finite) if finite else None
    ref = overall if problem == "digits" else f_star
    for name, t in table.items():
        ok_means = [(m, k) for m, k in zip(t["mean"], t["knobs"]) if m is not None]
        own_best, own_knob = pick(ok_means, key=lambda mk: mk[0]) if ok_means else (None, None)
        t["best_knob"], t["best_mean"] = own_knob, own_best
        t["best_values"] = t["values"][t["knobs"].index(own_knob)] if ok_means else []
        # At the knob's default, or at the grid point nearest to it (Schedule-Free AdamW's 0.0025
        # is between 0.001 and 0.00316).
        default = OPTIMIZERS.get(name, {}).get("default")
        t["default_knob"], t["default_mean"] = None, None
        if default is not None:
            i = min(range(len(t["knobs"])),
                    key=lambda j: abs(math.log10(t["knobs"][j] / default)))
            t["default_knob"], t["default_mean"] = t["knobs"][i], t["mean"][i]
        t["band_mean"] = band(t["knobs"], [within(problem, m, ref, tight) for m in t["mean"]])
        t["band_all"] = band(t["knobs"], [within(problem, w, ref, tight) for w in t["worst"]])
        t["band_own"] = band(t["knobs"], [own_best is not None and
                                          within(problem, m, own_best, tight)
                                          for m in t["mean"]])
        t["band_loose"] = band(t["knobs"], [within(problem, m, ref, loose) for m in t["mean"]])
    return {"table": table, "overall_best": overall, "f_star": f_star}


def fmt_knob(v):
    return "—" if v is None else f"{v:g}"


def fmt_band(b):
    width, lo, hi, censored = b
    if lo is None:
        return "none"
    return f"{'≥ ' if censored else ''}{width:.1f} ({lo:g}–{hi:g})"


def markdown(problem: str, summary, seeds: int) -> str:
    t_all, f_star = summary["table"], summary["f_star"]
    tight, loose = MARGINS[problem]
    if problem == "digits":
        def show(v):
            return "fails" if v is None else f"{v:.1f}%"
        head = (f"| optimizer | knob (default) | at the default | best knob | at the best: mean "
                f"(min–max of {seeds} seeds) | decades ≥ best − {tight:g} pt | … every seed | "
                f"… of its own best | decades ≥ best − {loose:g} pt |")
    else:
        def show(v):
            return "fails" if v is None else f"{v / f_star:.4f}"
        head = (f"| optimizer | knob (default) | f/f* at the default | best knob | f/f* at the "
                f"best: mean (min–max of {seeds} seeds) | decades f ≤ {1 + tight:g} f* | … every "
                f"seed | … ≤ {1 + tight:g} × its own best | decades f ≤ {1 + loose:g} f* |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name in [n for n in OPTIMIZERS if n in t_all]:
        t, spec = t_all[name], OPTIMIZERS[name]
        vs = [v for v in t["best_values"] if v is not None]
        best = (f"{show(t['best_mean'])} ({show(min(vs))}–{show(max(vs))})"
                if t["best_mean"] is not None else "fails")
        default = "—" if spec["default"] is None else show(t["default_mean"])
        if spec["default"] is not None and not math.isclose(t["default_knob"], spec["default"],
                                                             rel_tol=0.01):
            default += f" (at {t['default_knob']:g})"
        lines.append(f"| {spec['label']} | {spec['knob']} ({fmt_knob(spec['default'])}) | "
                     f"{default} | {fmt_knob(t['best_knob'])} | {best} | "
                     f"{fmt_band(t['band_mean'])} | {fmt_band(t['band_all'])} | "
                     f"{fmt_band(t['band_own'])} | {fmt_band(t['band_loose'])} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Figures.

def _plt():
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt


def plot_sweep(path: Path, problem: str, summary, args) -> None:
    """One panel per optimizer: every seed (dots), the mean (line), min-max (band), the margin
    (dashed) and the knobs that stay within it (shaded), the knob's default (dotted)."""
    plt = _plt()
    table = summary["table"]
    names = [n for n in OPTIMIZERS if n in table]
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False)
    f_star = summary["f_star"]
    if problem == "digits":  # test error on a log axis: the top and the failures both visible
        best_error = 100.0 - summary["overall_best"]
        ylo, yhi = max(0.1, best_error / 2), 100.0
        to_y = lambda v: 100.0 - v  # noqa: E731
        ref_line, ref_text = best_error + 1.0, f"best + 1 pt ({best_error + 1.0:.1f}% error)"
        ylabel = "test error (%), log scale"
    else:
        ylo = 1e-4
        worst = [v / f_star - 1.0 for t in table.values() for vs in t["values"] for v in vs
                 if v is not None]
        yhi = min(1e3, 10 ** math.ceil(math.log10(max(worst + [1.0]) * 1.5)))
        to_y = lambda v: v / f_star - 1.0  # noqa: E731  excess objective, relative
        ref_line, ref_text = 0.01, "f = 1.01 f*"
        ylabel = "(f − f*) / f*, log scale"
    for ax, name in zip(axes.flat, names):
        t, spec = table[name], OPTIMIZERS[name]
        color = spec["color"]
        knobs = np.array(t["knobs"])
        width, lo, hi, censored = t["band_mean"]
        if lo is not None:
            ax.axvspan(lo / 10 ** 0.25, hi * 10 ** 0.25, color=color, alpha=0.12, linewidth=0)
        ys = [[to_y(v) for v in vs if v is not None] for vs in t["values"]]
        lows = np.array([min(v) if v else np.nan for v in ys])
        highs = np.array([max(v) if v else np.nan for v in ys])
        mean = np.array([to_y(m) if m is not None else np.nan for m in t["mean"]])
        ax.fill_between(knobs, lows, highs, color=color, alpha=0.3, linewidth=0)
        ax.plot(knobs, mean, color=color, linewidth=1.8)
        for k, v in zip(knobs, ys):
            ax.plot([k] * len(v), v, linestyle="none", marker="o", markersize=2.5, color=color,
                    alpha=0.8)
        # Failed (diverged) and off-scale points: markers on the bottom/top edge.
        for k, vs, fails in zip(knobs, ys, t["failed"]):
            if fails:
                ax.plot(k, yhi, marker="x", color="black", markersize=7, clip_on=False,
                        linestyle="none")
            elif vs and max(vs) > yhi:
                ax.plot(k, yhi, marker="^", color=color, markersize=5, clip_on=False)
        ax.axhline(ref_line, color="black", linestyle="--", linewidth=0.9)
        if spec["default"] is not None:
            ax.axvline(spec["default"], color="gray", linestyle=":", linewidth=1.2)
        if problem == "digits":
            ax.axhline(90.0, color="gray", linestyle="-", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(ylo, yhi)
        ax.set_xlim(knobs[0] / 10 ** 0.3, knobs[-1] * 10 ** 0.3)
        ax.set_xlabel(KNOB_LABELS.get(spec["knob"], spec["knob"]), fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        band_text = (f"{'≥ ' if censored else ''}{width:.1f} decades within margin"
                     if lo is not None else "no knob within margin")
        ax.set_title(f"{spec['label']}: {band_text}", fontsize=10, color=color)
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    info = PROBLEMS[problem]
    if problem == "digits":
        detail = (f"{args.epochs} epochs, 4 workers × batch {args.batch}, SYNC; "
                  f"{args.seeds} seeds per point")
    else:
        detail = (f"{args.lr_epochs} epochs, batch 32, L2 {LOGREG_L2:g}; f* = {f_star:.5f}; "
                  f"{args.seeds} seeds per point")
    fig.suptitle(f"{info['title']} ({detail})\nline: mean over seeds, band: min–max, dots: "
                 f"seeds, ×: diverged, dashed: margin ({ref_text}), shaded: knobs within it "
                 f"(mean), dotted: default" + (", grey: chance (90% error)" if problem == "digits"
                                          else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96 if rows > 3 else 0.95 if rows > 2 else 0.9))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_decades(path: Path, summaries, problems) -> None:
    """Per optimizer and problem: the knob intervals within the margins, as bars on the log10
    axis of the knob (dark: the seeds' mean within the tight margin; black: every seed; light:
    the mean within the loose margin), the best knob as a circle."""
    plt = _plt()
    names = [n for n in OPTIMIZERS if any(n in summaries[p]["table"] for p in problems)]
    fig, axes = plt.subplots(1, len(problems), figsize=(6.8 * len(problems), 0.45 * len(names)
                                                                          + 1.6), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        table = summaries[problem]["table"]
        for row, name in enumerate(names):
            y = len(names) - 1 - row
            spec = OPTIMIZERS[name]
            if name not in table:
                continue
            t = table[name]
            for key, height, color, alpha in (("band_loose", 0.75, spec["color"], 0.3),
                                              ("band_mean", 0.5, spec["color"], 0.9),
                                              ("band_all", 0.16, "black", 1.0)):
                width, lo, hi, censored = t[key]
                if lo is None:
                    continue
                x0, x1 = math.log10(lo), math.log10(hi)
                ax.barh(y, max(x1 - x0, 0.06), left=x0 if x1 > x0 else x0 - 0.03,
                        height=height, color=color, alpha=alpha, linewidth=0)
            width, lo, hi, censored = t["band_mean"]
            kn = t["knobs"]
            if t["best_knob"] is not None:
                ax.plot(math.log10(t["best_knob"]), y, marker="o", color="white",
                        markeredgecolor="black", markersize=5)
            ax.plot([math.log10(kn[0]), math.log10(kn[-1])], [y, y], color="gray",
                    linewidth=0.6, linestyle=":")
            def decades(b):
                return f"{'≥' if b[3] else ''}{b[0]:.1f}" if b[1] is not None else "none"
            ax.text(math.log10(kn[-1]) + 0.15, y,
                    f"{decades(t['band_mean'])} ({decades(t['band_loose'])})", va="center",
                    fontsize=9)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([OPTIMIZERS[n]["label"] if "(" in OPTIMIZERS[n]["label"] else
                            f"{OPTIMIZERS[n]['label']} ({OPTIMIZERS[n]['knob']})"
                            for n in reversed(names)], fontsize=9)
        ax.set_xlabel("log10 of the knob (dotted: swept range; circle: best point)")
        lo_x = min(OPTIMIZERS[n]["range"][0] for n in names)
        hi_x = max(OPTIMIZERS[n]["range"][1] for n in names)
        ax.set_xlim(lo_x - 0.5, hi_x + 2.2)
        ax.grid(True, axis="x", alpha=0.3)
        tight, loose = MARGINS[problem]
        loose_text = (f"{loose:g} points" if problem == "digits" else f"f ≤ {1 + loose:g} f*")
        ax.set_title(f"{PROBLEMS[problem]['title']}:\nknobs within {PROBLEMS[problem]['margin']}"
                     f"\n(dark bar: mean of seeds; black: every seed; light: within {loose_text};"
                     f"\nnumbers: decades within the margin (within the loose one))", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_edge(path: Path, edge) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = ["#d62728", "#ff9896", "#2ca02c", "#98df8a", "#1f77b4", "#9edae5", "#7f7f7f"]
    styles = ["-", "-", "--", "--", "-.", "-.", ":"]
    for run, color, style in zip(edge["runs"], colors, styles):
        steps = np.arange(len(run["distance"]))
        axes[0].plot(steps, run["distance"], color=color, linestyle=style, linewidth=1.5,
                     label=run["label"])
        axes[1].plot(steps[1:], run["step_length"], color=color, linestyle=style, linewidth=1.5)
    lr = edge["lr"]
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("step")
    axes[0].axhline(lr / 2, color="black", linestyle="--", linewidth=0.9)
    axes[0].text(2, lr / 2 * 1.15, "lr / 2 = 0.05", fontsize=8)
    axes[0].axhline(0.02 / 2, color="black", linestyle="--", linewidth=0.9)
    axes[0].text(2, 0.01 * 1.15, "0.02 / 2", fontsize=8)
    axes[0].set_ylabel("distance to the minimum ‖w − w*‖")
    axes[0].set_title("normalized GD on a convex quadratic (20-D, condition 10, ‖w*‖ = "
                      f"{edge['w_star_norm']:.1f}):\ndistance to the minimum", fontsize=10)
    axes[1].axhline(lr, color="black", linestyle="--", linewidth=0.9)
    axes[1].text(2, lr * 1.15, "lr = 0.1", fontsize=8)
    axes[1].set_ylabel("step length ‖w_{t+1} − w_t‖")
    axes[1].set_title("what the server moved the weights in each step\n"
                      "(normalized GD: lr, however small ‖g‖ is, unless guarded or scheduled)",
                      fontsize=10)
    floor = min(min(r["distance"]) for r in edge["runs"])
    axes[0].text(len(edge["runs"][0]["distance"]) * 0.7, floor * 0.4,
                 f"float32 floor (≈ {floor:.0e})", fontsize=8, ha="center")
    axes[0].set_ylim(bottom=1e-7)
    axes[1].set_ylim(bottom=1e-7)
    fig.legend(loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", help="HOST:PORT of a running optd (default: start one)")
    p.add_argument("--out-dir", default=str(HERE), help="where the figures and tables go")
    p.add_argument("--optimizers", default=",".join(DEFAULT_SET),
                   help=f"comma-separated, or 'all' ({', '.join(OPTIMIZERS)})")
    p.add_argument("--problems", default="digits,breast_cancer")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--per-decade", type=int, default=2, help="grid points per decade")
    p.add_argument("--epochs", type=int, default=10, help="digits epochs")
    p.add_argument("--batch", type=int, default=16, help="digits batch per worker")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr-epochs", type=int, default=20, help="breast-cancer epochs")
    p.add_argument("--edge-steps", type=int, default=400)
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (processes)")
    p.add_argument("--tiny", action="store_true",
                   help="smoke configuration: 2 seeds, 1 point per 3 decades, 1 epoch, 60 edge "
                        "steps (the design unchanged, the numbers meaningless)")
    args = p.parse_args(argv)
    if args.tiny:
        args.seeds, args.epochs, args.lr_epochs, args.edge_steps = 2, 1, 2, 60
        args.per_decade = 0  # ends of the range and its middle
    return args


def knob_grid(name: str, per_decade: int):
    lo, hi = OPTIMIZERS[name]["range"]
    if per_decade == 0:
        return grid(lo, hi, 1)[::(hi - lo) // 2]
    return grid(lo, hi, per_decade)


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(OPTIMIZERS) if args.optimizers == "all" else \
        [n.strip() for n in args.optimizers.split(",") if n.strip()]
    for n in names:
        if n not in OPTIMIZERS:
            sys.exit(f"lr_study: unknown optimizer {n}; known: {', '.join(OPTIMIZERS)}")
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    started = time.monotonic()
    server = None if args.server else td.OptdServer(td._build_dir() / "server" / "optd")
    address = args.server or server.address
    jobs = []
    for problem in problems:
        for name in names:
            for k in knob_grid(name, args.per_decade):
                for seed in range(args.seeds):
                    jobs.append({"problem": problem, "optimizer": name, "knob": OPTIMIZERS[name]
                                 ["knob"], "knob_value": k, "seed": seed,
                                 "epochs": args.epochs if problem == "digits" else args.lr_epochs,
                                 "batch": args.batch if problem == "digits" else 32,
                                 "session_id": f"study-{os.getpid()}-{len(jobs)}"})
    print(f"optd at {address}" + (f" (started, pid {server.pid})" if server else "") +
          f"; {len(jobs)} runs ({', '.join(problems)}; {len(names)} optimizers; {args.seeds} "
          f"seeds), {args.parallel} at a time", flush=True)
    results = []
    try:
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.parallel, initializer=runner_init,
                      initargs=(address, 4, args.hidden)) as pool:
            last = time.monotonic()
            for r in pool.imap_unordered(run_job, jobs):
                results.append(r)
                if r["status"] != "ok" and not r["status"].startswith("diverged"):
                    print(f"  {r['problem']} {r['optimizer']} {r['knob']}={r['knob_value']:g} "
                          f"seed {r['seed']}: {r['status']}", flush=True)
                if time.monotonic() - last > 30 or len(results) == len(jobs):
                    last = time.monotonic()
                    print(f"  {len(results)}/{len(jobs)} runs, {last - started:.0f} s", flush=True)
        edge = edge_case(address, args.edge_steps)
    finally:
        if server is not None:
            code = server.stop()
            print(f"optd (pid {server.pid}) stopped, exit status {code}", flush=True)

    summaries, sections = {}, []
    f_star = None
    if "breast_cancer" in problems:
        x, y, _, _ = load_breast_cancer()
        f_star = logreg_optimum(x, y)[0]
    for problem in problems:
        runs = [r for r in results if r["problem"] == problem]
        summaries[problem] = summarize(problem, runs, f_star if problem == "breast_cancer"
                                       else None)
        sections.append(f"### {PROBLEMS[problem]['title']}: margin "
                        f"{PROBLEMS[problem]['margin']}\n\n" +
                        markdown(problem, summaries[problem], args.seeds))
        plot_sweep(out_dir / f"sweep_{problem}.png", problem, summaries[problem], args)
    plot_decades(out_dir / "decades.png", summaries, problems)
    plot_edge(out_dir / "ngd_near_minimum.png", edge)
    edge_lines = ["| normalized GD run | distance to w* after "
                  f"{args.edge_steps} steps | min over the last 50 | max over the last 50 |",
                  "|---|---|---|---|"]
    for run in edge["runs"]:
        tail = run["distance"][-50:]
        edge_lines.append(f"| {run['label']} | {run['distance'][-1]:.2e} | {min(tail):.2e} | "
                          f"{max(tail):.2e} |")
    seconds = time.monotonic() - started
    text = "\n\n".join(sections + ["### normalized GD near the minimum\n\n" +
                                   "\n".join(edge_lines)])
    text += (f"\n\n{len(jobs)} runs + {len(edge['runs'])} edge runs in {seconds:.0f} s, "
             f"{args.parallel} at a time.\n")
    print()
    print(text)
    (out_dir / "results.md").write_text(text)

    def clean(s):
        return {p: {"overall_best": v["overall_best"], "f_star": v["f_star"],
                    "table": {n: {k: t[k] for k in ("knobs", "mean", "worst", "values", "failed",
                                                     "best_knob", "best_mean", "default_knob", "default_mean",
                                                     "band_mean", "band_all", "band_own",
                                                     "band_loose")}
                              for n, t in v["table"].items()}} for p, v in s.items()}
    def rounded(v):  # 6 significant digits keep the file small
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [rounded(x) for x in v]
        return v
    (out_dir / "results.json").write_text(json.dumps(rounded({
        "args": vars(args), "server_pid": server.pid if server else None, "seconds": seconds,
        "summary": clean(summaries), "runs": results,
        "edge": {"lr": edge["lr"], "runs": [{k: v for k, v in r.items()}
                                            for r in edge["runs"]]}}), indent=None))
    print(f"wrote {out_dir}/sweep_*.png, decades.png, ngd_near_minimum.png, results.md, "
          f"results.json; total {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
