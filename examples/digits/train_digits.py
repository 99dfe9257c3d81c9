#!/usr/bin/python3
"""Data-parallel training of a small MLP on scikit-learn's digits through ONE optd session.

Four worker processes (multiprocessing, each with its own gRPC channel) each hold a quarter of the
training set. Every step each worker computes the gradient of its shard's minibatch with torch and
hands it to ``optd.torch.RemoteOptimizer``; the session runs in SYNC mode with 4 workers and
REDUCE_MEAN, so the server averages the four gradients into one optimizer step and every worker
gets the same new parameters back.

Why SYNC and not ASYNC: with equal shards and equal minibatch sizes, the mean of the four
gradients is exactly the gradient of the combined minibatch, so the run is the same computation
as single-process training with a 4x batch, up to float summation order. Optimizers are then
compared on their update rule alone, not on how each one copes with stale gradients (ASYNC
applies each worker's gradient on arrival, computed at parameters up to three versions old, and
the result depends on scheduling). ``--mode=async`` is available for comparison.

    /usr/bin/python3 examples/digits/train_digits.py                  # Adam, 4 workers
    /usr/bin/python3 examples/digits/train_digits.py \\
        --optimizers=adam,normalized_gd,adagrad,sgd --sweep \\
        --plot=examples/digits/digits.png                               # the README comparison

Without ``--server`` the script starts the optd binary itself (``$OPTD_BUILD_DIR/server/optd`` or
``<repo>/build/server/optd``) on a free port and stops it (SIGTERM to its PID) at the end. It
prints a Markdown table per optimizer (lr, test accuracy, final training loss, steps) and, with
``--sweep``, test accuracy for every learning rate of the sweep. Runs offline: the digits data set
ships with scikit-learn.
"""

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _build_dir() -> Path:
    return Path(os.environ.get("OPTD_BUILD_DIR") or REPO_ROOT / "build").resolve()


# From a source checkout: the client sources and the stubs CMake generates (one 'optd' package
# over both folders). An installed optd is used when there is no checkout around this file.
if (REPO_ROOT / "client" / "python" / "optd" / "__init__.py").is_file():
    sys.path[:0] = [str(REPO_ROOT / "client" / "python"), str(_build_dir() / "python")]

import numpy as np  # noqa: E402

import optd  # noqa: E402

DEFAULT_LR = {"adam": 1e-2, "normalized_gd": 0.1, "adagrad": 0.1, "sgd": 0.3}
SWEEP_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
LABELS = {"adam": "Adam", "normalized_gd": "Normalized GD", "adagrad": "Adagrad", "sgd": "SGD",
          "adamw": "AdamW", "rmsprop": "RMSprop"}


# ---------------------------------------------------------------------------------------------------
# Data and model.

def load_data(seed: int):
    """(x_train, y_train, x_test, y_test): digits (1797 8x8 images), pixels scaled to [0, 1],
    a stratified 80/20 split."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed,
                                                        stratify=y)
    return x_train, y_train, x_test, y_test


def make_model(hidden: int, seed: int):
    import torch  # pylint: disable=import-outside-toplevel
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def evaluate(model, x, y):
    """(mean cross-entropy, accuracy) of the model on (x, y)."""
    import torch  # pylint: disable=import-outside-toplevel
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
        accuracy = (logits.argmax(1).numpy() == y).mean().item()
    return loss, accuracy


# ---------------------------------------------------------------------------------------------------
# Workers.

def worker_main(rank: int, workers: int, address: str, data, hidden: int, jobs, results,
                security=None) -> None:
    """One worker process: its own channel; runs every job it is given on its shard."""
    import torch  # pylint: disable=import-outside-toplevel
    import optd.torch  # noqa: F401  pylint: disable=import-outside-toplevel,redefined-outer-name
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = data
    shard = len(x_train) // workers  # equal shards: the SYNC mean is the global-batch gradient
    xs = torch.from_numpy(x_train[rank * shard:(rank + 1) * shard])
    ys = torch.from_numpy(y_train[rank * shard:(rank + 1) * shard])
    with optd.Client(address, timeout=120.0, **(security or {})) as client:
        while True:
            job = jobs.get()
            if job is None:
                return
            losses, epochs, status = [], [], "ok"
            try:
                model = make_model(hidden, job["seed"])
                opt = optd.torch.RemoteOptimizer(
                    model.named_parameters(),
                    session=client.session(job["session_id"], worker_id=f"worker-{rank}"))
                for epoch in range(job["epochs"]):
                    order = torch.from_numpy(np.random.default_rng(
                        [job["seed"], epoch, rank]).permutation(shard))
                    for start in range(0, shard, job["batch"]):
                        idx = order[start:start + job["batch"]]
                        opt.zero_grad()
                        loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
                        if not math.isfinite(loss.item()):
                            raise FloatingPointError(f"loss {loss.item()} at step {len(losses)}")
                        loss.backward()
                        opt.step(loss=loss.item())
                        losses.append(loss.item())
                    if rank == 0:  # every worker holds the same parameters after a SYNC step
                        train_loss, _ = evaluate(model, x_train, y_train)
                        _, test_accuracy = evaluate(model, x_test, y_test)
                        epochs.append((len(losses), train_loss, test_accuracy))
            except FloatingPointError as e:
                status = f"diverged ({e})"
            except optd.OptdError as e:
                status = f"stopped ({e.code.name}: {e.message[:120]})"
            results.put({"job": job["id"], "rank": rank, "losses": losses, "epochs": epochs,
                         "status": status})


class WorkerPool:
    """``workers`` processes (spawned: no gRPC state crosses a fork) that run one job at a time."""

    def __init__(self, workers: int, address: str, data, hidden: int, security=None) -> None:
        ctx = mp.get_context("spawn")
        self.workers = workers
        self.results = ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(workers)]
        self.procs = [ctx.Process(target=worker_main, name=f"digits-worker-{r}", daemon=True,
                                  args=(r, workers, address, data, hidden, self.jobs[r],
                                        self.results, security))
                      for r in range(workers)]
        for p in self.procs:
            p.start()

    def run(self, job, on_failure, timeout: float):
        """Gives ``job`` to every worker; returns their results by rank. ``on_failure`` is called
        once when a worker reports that it stopped early (so the others can be released)."""
        for q in self.jobs:
            q.put(job)
        out, failed = {}, False
        deadline = time.monotonic() + timeout
        while len(out) < self.workers:
            try:
                r = self.results.get(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            except queue.Empty:
                dead = [p.name for p in self.procs if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"job {job['id']}: workers dead {dead} or over {timeout} s")
                continue
            out[r["rank"]] = r
            if r["status"] != "ok" and not failed:
                failed = True
                on_failure()
        return [out[k] for k in range(self.workers)]

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


# ---------------------------------------------------------------------------------------------------
# The server.

class OptdServer:
    """The real optd binary on a free port, stopped by its PID."""

    def __init__(self, binary: Path) -> None:
        if not binary.is_file():
            sys.exit(f"train_digits: {binary} not found; build optd (ninja -C build optd) or pass "
                     f"--server=HOST:PORT")
        self.proc = subprocess.Popen([str(binary), "--listen=127.0.0.1:0", "--metrics_listen="],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.pid = self.proc.pid
        self.address = None
        deadline = time.monotonic() + 20
        for line in self.proc.stdout:
            m = re.match(r"^optd listening on (\S+:\d+)\s*$", line)
            if m:
                self.address = m.group(1)
                break
            if time.monotonic() > deadline:
                break
        if self.address is None:
            self.stop()
            sys.exit("train_digits: optd did not print its listen line")
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, 15)  # SIGTERM: graceful shutdown
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, 9)
                self.proc.wait()
        return self.proc.returncode


# ---------------------------------------------------------------------------------------------------
# Runs.

def run_one(client, pool, args, data, optimizer: str, lr: float, run_id: int):
    """Trains from scratch with ``optimizer`` at ``lr``; returns a result dict."""
    import torch  # pylint: disable=import-outside-toplevel
    x_train, y_train, x_test, y_test = data
    model = make_model(args.hidden, args.seed)
    initial = {n: p.detach().numpy() for n, p in model.named_parameters()}
    worker_ids = [f"worker-{r}" for r in range(args.workers)]
    consistency = (optd.consistency("sync", workers=args.workers, worker_ids=worker_ids,
                                    barrier_timeout_seconds=60)
                   if args.mode == "sync" else optd.consistency("async"))
    session = client.create_session(initial, optimizer, lr=lr, consistency=consistency,
                                    session_id=f"digits-{os.getpid()}-{run_id}-{optimizer}")
    job = {"id": run_id, "session_id": session.session_id, "seed": args.seed,
           "epochs": args.epochs, "batch": args.batch_size}

    def release():  # a worker stopped early: deleting the session releases the barrier
        try:
            session.delete()
        except optd.OptdError:
            pass

    start = time.monotonic()
    results = pool.run(job, release, timeout=args.run_timeout)
    seconds = time.monotonic() - start
    status = next((r["status"] for r in results if r["status"] != "ok"), "ok")
    if status == "ok":
        final = session.pull()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(final.tensors[name].copy()))
        steps = final.version
        session.delete()
    else:
        steps = min(len(r["losses"]) for r in results)
    train_loss, _ = evaluate(model, x_train, y_train)
    _, test_accuracy = evaluate(model, x_test, y_test)
    n = min(len(r["losses"]) for r in results)
    step_loss = np.mean([r["losses"][:n] for r in results], axis=0) if n else np.array([])
    if status != "ok":
        test_accuracy, train_loss = float("nan"), float("nan")
    return {"optimizer": optimizer, "lr": lr, "status": status, "steps": int(steps),
            "test_accuracy": test_accuracy, "train_loss": train_loss, "seconds": seconds,
            "step_loss": step_loss.tolist(), "epochs": results[0]["epochs"],
            "workers": args.workers, "mode": args.mode}


def fmt_acc(r) -> str:
    return "diverged" if r["status"] != "ok" else f"{100 * r['test_accuracy']:.1f}%"


def markdown_main(rows) -> str:
    lines = ["| optimizer | lr | test accuracy | final train loss | steps | time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        loss = "—" if r["status"] != "ok" else f"{r['train_loss']:.4f}"
        lines.append(f"| {LABELS.get(r['optimizer'], r['optimizer'])} | {r['lr']:g} | "
                     f"{fmt_acc(r)} | {loss} | {r['steps']} | {r['seconds']:.1f} s |")
    return "\n".join(lines)


def markdown_sweep(sweep, lrs) -> str:
    lines = ["| optimizer | " + " | ".join(f"lr={lr:g}" for lr in lrs) + " | lrs ≥ 95% |",
             "|---|" + "---|" * (len(lrs) + 1)]
    for name, runs in sweep.items():
        by_lr = {r["lr"]: r for r in runs}
        good = [lr for lr in lrs if by_lr[lr]["status"] == "ok" and
                by_lr[lr]["test_accuracy"] >= 0.95]
        span = f"{len(good)}/{len(lrs)}"
        if good:
            span += f" ({min(good):g}–{max(good):g})"
        lines.append(f"| {LABELS.get(name, name)} | " +
                     " | ".join(fmt_acc(by_lr[lr]) for lr in lrs) + f" | {span} |")
    return "\n".join(lines)


def plot(path: Path, rows, sweep, lrs, args) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    panels = 2 if sweep else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.6), squeeze=False)
    ax = axes[0][0]
    colors = {"adam": "tab:blue", "normalized_gd": "tab:red", "adagrad": "tab:green",
              "sgd": "tab:orange"}
    for r in rows:
        color = colors.get(r["optimizer"])
        label = f"{LABELS.get(r['optimizer'], r['optimizer'])} (lr={r['lr']:g})"
        if r["step_loss"]:
            ax.plot(np.arange(1, len(r["step_loss"]) + 1), r["step_loss"], color=color,
                    alpha=0.25, linewidth=0.8)
        if r["epochs"]:
            steps, losses, _ = zip(*r["epochs"])
            ax.plot(steps, losses, color=color, marker="o", markersize=3, linewidth=1.8,
                    label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step (one SYNC step = 4 workers' gradients averaged)")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(f"digits MLP, {args.workers} workers, global batch "
                 f"{args.workers * args.batch_size}: training loss\n"
                 "(bold: full training set per epoch; faint: minibatch)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    if sweep:
        ax = axes[0][1]
        for name, runs in sweep.items():
            xs = [r["lr"] for r in runs]
            ys = [100 * r["test_accuracy"] if r["status"] == "ok" else np.nan for r in runs]
            ax.plot(xs, ys, marker="o", color=colors.get(name),
                    label=LABELS.get(name, name))
        ax.axhline(95, color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("learning rate (constant)")
        ax.set_ylabel("test accuracy after training (%)")
        ax.set_title(f"learning-rate sweep, {args.epochs} epochs each "
                     f"(missing point: diverged)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=9, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", help="HOST:PORT of a running optd (default: start one)")
    p.add_argument("--tls-ca", dest="tls_ca", help="--server's CA certificate (PEM): TLS; the "
                   "token, if the server wants one, is read from OPTD_TOKEN")
    p.add_argument("--tls-cert", dest="tls_cert", help="client certificate (PEM), for mTLS")
    p.add_argument("--tls-key", dest="tls_key", help="the client certificate's key (PEM)")
    p.add_argument("--optimizers", default="adam",
                   help="comma-separated: adam, normalized_gd, adagrad, sgd (or any optd kind)")
    p.add_argument("--lr", default="",
                   help="learning rates, e.g. adam=0.01,sgd=0.3 (defaults: %s; with --sweep, the "
                        "best of the sweep by final training loss)" %
                        ", ".join(f"{k}={v:g}" for k, v in DEFAULT_LR.items()))
    p.add_argument("--sweep", action="store_true",
                   help="also train at every --sweep-lrs learning rate for every optimizer")
    p.add_argument("--sweep-lrs", default=",".join(f"{lr:g}" for lr in SWEEP_LRS))
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mode", choices=("sync", "async"), default="sync")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16, help="per worker")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", help="write the loss (and sweep) figure to this PNG")
    p.add_argument("--json", help="write every result to this JSON file")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds per training run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    lrs = {**DEFAULT_LR}
    explicit = {}
    for item in filter(None, args.lr.split(",")):
        name, value = item.split("=")
        explicit[name.strip()] = float(value)
    sweep_lrs = [float(v) for v in args.sweep_lrs.split(",")]
    data = load_data(args.seed)
    server = None if args.server else OptdServer(_build_dir() / "server" / "optd")
    address = args.server or server.address
    print(f"optd at {address}" + (f" (started, pid {server.pid})" if server else "") +
          f"; {args.workers} worker processes, {args.mode.upper()}, {args.epochs} epochs, "
          f"batch {args.batch_size}/worker, train {len(data[0])} / test {len(data[2])}",
          flush=True)
    started = time.monotonic()
    pool, client = None, None
    sweep, rows = {}, []
    try:
        # TLS to a --server with --tls_cert (and mTLS); the token, if any, from OPTD_TOKEN.
        security = {"tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key}
        client = optd.Client(address, **security)
        pool = WorkerPool(args.workers, address, data, args.hidden, security)
        run_id = 0
        for name in optimizers:
            if args.sweep:
                sweep[name] = []
                for lr in sweep_lrs:
                    run_id += 1
                    r = run_one(client, pool, args, data, name, lr, run_id)
                    sweep[name].append(r)
                    print(f"  sweep {name:14s} lr={lr:<6g} {fmt_acc(r):>9s} "
                          f"loss={r['train_loss']:.4f} ({r['seconds']:.1f} s)", flush=True)
            if name in explicit or not args.sweep:
                lr = explicit.get(name, lrs.get(name, 1e-2))
                run_id += 1
                r = run_one(client, pool, args, data, name, lr, run_id)
            else:  # the sweep's best by final training loss (the test set is not used to choose)
                ok = [x for x in sweep[name] if x["status"] == "ok"]
                r = min(ok, key=lambda x: x["train_loss"]) if ok else sweep[name][0]
            rows.append(r)
            print(f"{name:14s} lr={r['lr']:<6g} test accuracy {fmt_acc(r)}, train loss "
                  f"{r['train_loss']:.4f}, {r['steps']} steps, {r['seconds']:.1f} s", flush=True)
    finally:
        if pool is not None:
            pool.close()
        if client is not None:
            client.close()
        if server is not None:
            code = server.stop()
            print(f"optd (pid {server.pid}) stopped, exit status {code}", flush=True)

    print()
    print(markdown_main(rows))
    if sweep:
        print()
        print(f"Test accuracy after {args.epochs} epochs, by constant learning rate:")
        print()
        print(markdown_sweep(sweep, sweep_lrs))
    if args.plot:
        plot(Path(args.plot), rows, sweep, sweep_lrs, args)
        print(f"\nwrote {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "server_pid": server.pid if server else None,
            "seconds": time.monotonic() - started, "results": rows,
            "sweep": {k: [{kk: vv for kk, vv in r.items() if kk != "step_loss"} for r in v]
                      for k, v in sweep.items()}}, indent=1))
    print(f"total {time.monotonic() - started:.1f} s")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
