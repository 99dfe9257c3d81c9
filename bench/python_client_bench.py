"""Python workers against the C++ client and a torch.distributed.rpc parameter server (issue #14),
all side by side in one run.

Contestants, on one optd (Adam, lr 1e-3, a [rows, 256] matrix and a bias, like optd-bench's
session; each worker pushes a dense gradient and gets every parameter back):
  native   Python workers on optd's native data path (optd._native), one process each,
           ``session.step(grads, out=params)``: the reply decoded into the worker's array;
  pure     the same loop on the pure-Python path (grpcio; OPTD_PURE_PYTHON semantics via
           ``optd.Client(native=False)``);
  cpp      optd-bench (the C++ load generator) against the same optd, its "optd" row (it also
           runs its raw gRPC echo of the same bytes: the "echo" column, the transport ceiling);
  torchrpc the torch.distributed.rpc parameter server of bench/torch_rpc_ps.py (the tutorial's
           design), TensorPipe, one process per trainer.
Workloads: 1K and 1M parameters x 1 and 4 workers x F32 and BF16 on the wire (both directions;
BF16 conversion native in optd's C++, torch's own for the peer). Every round runs every workload's
contestants in a rotating order; a row reports the median over rounds and the range; ratios are
medians of per-round ratios. Speed is never asserted (scripts/bench.sh runs it; README has the
table).

    OPTD_BUILD_DIR=build /usr/bin/python3 bench/python_client_bench.py [--rounds 3] [--seconds 3]
    ... --smoke   # a few steps of each contestant at 1K: the script runs (ctest)
"""

import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from optd_testing import OptdProcess, build_dir  # noqa: E402
import torch_rpc_ps  # noqa: E402

CONTESTANTS = ("native", "pure", "cpp", "torchrpc")


def _optd_worker(conn, paths):
    """A Python optd worker process: runs ('run', ...) commands from the parent."""
    sys.path[:0] = paths
    import optd  # pylint: disable=import-outside-toplevel
    clients = {}
    while True:
        command = conn.recv()
        if command is None:
            return
        address, session_id, native, params, wire, seconds, warmup = command
        key = (address, native)
        if key not in clients:
            clients[key] = optd.Client(address, native=native, timeout=120)
        session = clients[key].session(session_id)
        rng = np.random.default_rng(os.getpid())
        grads = {name: rng.standard_normal(shape).astype(np.float32)
                 for name, shape in zip(("w", "b"), torch_rpc_ps.shapes(params))}
        out = {name: np.zeros(g.shape, np.float32) for name, g in grads.items()}
        for _ in range(warmup):
            session.step(grads, gradient_dtype=wire, return_dtype=wire, out=out)
        conn.send("ready")
        start_at = conn.recv()
        while time.time() < start_at:
            time.sleep(0.0005)
        latencies, end = [], start_at + seconds
        while True:
            t0 = time.perf_counter()
            session.step(grads, gradient_dtype=wire, return_dtype=wire, out=out)
            latencies.append(time.perf_counter() - t0)
            if time.time() >= end:
                break
        conn.send(latencies)


class OptdWorkers:
    def __init__(self, count):
        ctx = multiprocessing.get_context("spawn")
        paths = [str(HERE.parent / "client" / "python"), str(build_dir() / "python")]
        self.conns, self.procs = [], []
        for _ in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_optd_worker, args=(child, paths), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def run(self, address, session_id, native, params, workers, wire, seconds, warmup):
        for conn in self.conns[:workers]:
            conn.send((address, session_id, native, params, wire, seconds, warmup))
        for conn in self.conns[:workers]:  # warmed up (imported, connected, joined)
            if not conn.poll(300) or conn.recv() != "ready":
                raise RuntimeError("an optd Python worker did not warm up")
        start_at = time.time() + 0.05
        for conn in self.conns[:workers]:
            conn.send(start_at)
        latencies = []
        for conn in self.conns[:workers]:
            if not conn.poll(seconds + 300):
                raise RuntimeError("an optd Python worker did not answer")
            latencies += conn.recv()
        return len(latencies) / seconds, latencies

    def close(self):
        for conn in self.conns:
            conn.send(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


_ROW = re.compile(r"^(optd|echo)\s+([\d.]+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", re.M)


def run_cpp(address, params, workers, wire, seconds, warmup):
    """optd-bench against `address`: (optd steps/s, optd p50 s, echo steps/s)."""
    binary = build_dir() / "bench" / "optd-bench"
    command = [str(binary), f"--server={address}", f"--workers={workers}", f"--params={params}",
               f"--dtype={wire}", "--rounds=1", f"--seconds={2 * seconds}", "--steps=100000000",
               f"--warmup={warmup}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 2 + 300,
                         check=True).stdout
    rows = {m.group(1): m for m in _ROW.finditer(out)}
    if "optd" not in rows or "echo" not in rows:
        raise RuntimeError(f"cannot read optd-bench's output:\n{out}")
    return (float(rows["optd"].group(2)), float(rows["optd"].group(5)) * 1e-6,
            float(rows["echo"].group(2)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=int, default=10, help="unmeasured steps per worker")
    ap.add_argument("--params", default="1000,1000000")
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--smoke", action="store_true", help="1K, 1 worker, f32, 1 round, 0.3 s")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.warmup = 1, 0.3, 2
        args.params, args.workers, args.dtypes = "1000", "1", "f32"
    params_list = [int(p) for p in args.params.split(",")]
    workers_list = [int(w) for w in args.workers.split(",")]
    dtypes = args.dtypes.split(",")
    workloads = [(p, w, d) for p in params_list for w in workers_list for d in dtypes]
    max_workers = max(workers_list)

    sys.path[:0] = [str(HERE.parent / "client" / "python"), str(build_dir() / "python")]
    import optd  # pylint: disable=import-outside-toplevel
    if not optd.native.available():
        sys.exit(f"python_client_bench: {optd.native.reason()}")
    server = OptdProcess().start()
    peer = torch_rpc_ps.Peer(max_workers)
    workers = OptdWorkers(max_workers)
    results = {}  # (workload, contestant) -> [(steps/s, p50 s)] per round; ("echo") too
    try:
        with optd.Client(server.address, native=False, timeout=120) as admin:
            for rnd in range(args.rounds):
                for i, (params, nw, wire) in enumerate(workloads):
                    order = CONTESTANTS[(rnd + i) % 4:] + CONTESTANTS[:(rnd + i) % 4]
                    for who in order:
                        key = ((params, nw, wire), who)
                        if who in ("native", "pure"):
                            session = admin.create_session(
                                {n: np.zeros(s, np.float32) for n, s in
                                 zip(("w", "b"), torch_rpc_ps.shapes(params))}, "adam", lr=1e-3)
                            rate, lat = workers.run(server.address, session.session_id,
                                                    who == "native", params, nw, wire,
                                                    args.seconds, args.warmup)
                            session.delete()
                            p50 = float(np.median(lat))
                        elif who == "cpp":
                            rate, p50, echo = run_cpp(server.address, params, nw, wire,
                                                      args.seconds, args.warmup)
                            results.setdefault((key[0], "echo"), []).append((echo, 0.0))
                        else:
                            rate, lat = peer.run(params, nw, wire, args.seconds, args.warmup)
                            p50 = float(np.median(lat))
                        results.setdefault(key, []).append((rate, p50))
                        print(f"round {rnd + 1} {params:>8} params {nw} workers {wire:4} "
                              f"{who:8} {rate:9.1f} steps/s  p50 {p50 * 1e3:7.3f} ms",
                              file=sys.stderr, flush=True)
    finally:
        workers.close()
        peer.close()
        server.stop()
    print_table(results, workloads, args)


def _median_range(values):
    return statistics.median(values), min(values), max(values)


def print_table(results, workloads, args):
    print(f"\nPython client benchmark: {args.rounds} rounds x {args.seconds:g} s per phase; "
          f"median [min-max] over rounds")
    print("| params | workers | wire | native steps/s | pure steps/s | C++ optd-bench steps/s | "
          "torch RPC PS steps/s | native/C++ | native/torchrpc | pure/torchrpc | native p50 ms | "
          "torchrpc p50 ms | echo steps/s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in workloads:
        cells = []
        for who in CONTESTANTS:
            m, lo, hi = _median_range([r for r, _ in results[(w, who)]])
            cells.append(f"{m:.0f} [{lo:.0f}-{hi:.0f}]")
        ratios = []
        for a, b in (("native", "cpp"), ("native", "torchrpc"), ("pure", "torchrpc")):
            per_round = [x[0] / y[0] for x, y in zip(results[(w, a)], results[(w, b)])]
            m, lo, hi = _median_range(per_round)
            ratios.append(f"{m:.2f} [{lo:.2f}-{hi:.2f}]")
        p50s = [f"{statistics.median([p for _, p in results[(w, who)]]) * 1e3:.3f}"
                for who in ("native", "torchrpc")]
        echo = statistics.median([r for r, _ in results[(w, "echo")]])
        print(f"| {w[0]} | {w[1]} | {w[2].upper()} | " + " | ".join(cells + ratios + p50s) +
              f" | {echo:.0f} |")


if __name__ == "__main__":
    main()
