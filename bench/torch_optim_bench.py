#!/usr/bin/python3
"""torch_optim_bench: ns per parameter of torch.optim.<X>.step() on one CPU thread.

The torch side of the optimizer kernel benchmark (bench/optimizer_bench.cc, README "Benchmarks ->
optimizer kernels"): the same optimizers, options and sizes as the optd rows that torch has:

  sgd (lr 0.01), sgd_momentum (momentum 0.9), adam, adam_amsgrad, adamw, adagrad, adadelta,
  rmsprop, nadam, radam -- default options otherwise, foreach=False (torch 1.13's default on CPU:
  the single-tensor code path), one float32 tensor of N parameters, torch.set_num_threads(1).

Each optimizer is warmed (--warmup steps, as optd's rows: state allocated, RAdam rectified), then
timed in --repeats blocks of k steps (k makes a block last about --min-time seconds); the result is
the median block's time per step per parameter. Timed with the calling thread's CPU time (as the
optd one-thread rows, which Google Benchmark times in CPU time); wall time is reported beside it.

Prints one JSON object: {"torch_version", "threads", "results": [{"name", "size", "ns_per_param",
"wall_ns_per_param", "steps", "repeats"}]}.

Run with /usr/bin/python3 (the interpreter torch 1.13 is installed for):
  /usr/bin/python3 bench/torch_optim_bench.py [--sizes=1000,1000000,10000000] [--filter=REGEX]
      [--names=adam,sgd] [--min-time=0.1] [--repeats=5] [--warmup=6] [--threads=1]
"""

import argparse
import json
import math
import re
import statistics
import sys
import time

import torch

# name -> constructor, as optd's rows (bench/optimizer_bench.cc Variants()).
VARIANTS = [
    ("sgd", lambda p: torch.optim.SGD([p], lr=0.01, foreach=False)),
    ("sgd_momentum", lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9, foreach=False)),
    ("adam", lambda p: torch.optim.Adam([p], foreach=False)),
    ("adam_amsgrad", lambda p: torch.optim.Adam([p], amsgrad=True, foreach=False)),
    ("adamw", lambda p: torch.optim.AdamW([p], foreach=False)),
    ("adagrad", lambda p: torch.optim.Adagrad([p], foreach=False)),
    ("adadelta", lambda p: torch.optim.Adadelta([p], foreach=False)),
    ("rmsprop", lambda p: torch.optim.RMSprop([p], foreach=False)),
    ("nadam", lambda p: torch.optim.NAdam([p], foreach=False)),
    ("radam", lambda p: torch.optim.RAdam([p], foreach=False)),
]


def make_tensor(n, generator):
    """A parameter in [-1, 1) with a gradient of magnitude [0.01, 1) and alternating signs."""
    p = torch.empty(n, dtype=torch.float32).uniform_(-1.0, 1.0, generator=generator)
    g = torch.empty(n, dtype=torch.float32).uniform_(0.01, 1.0, generator=generator)
    g[1::2].neg_()
    p.grad = g
    return p


def time_steps(opt, steps):
    """(thread CPU seconds, wall seconds) of `steps` calls to opt.step()."""
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for _ in range(steps):
        opt.step()
    return time.thread_time() - cpu0, time.perf_counter() - wall0


def bench(name, ctor, n, args, generator):
    p = make_tensor(n, generator)
    opt = ctor(p)
    for _ in range(args.warmup):
        opt.step()
    one_step, _ = time_steps(opt, 1)
    steps = max(1, math.ceil(args.min_time / max(one_step, 1e-7)))
    cpu, wall = [], []
    for _ in range(args.repeats):
        c, w = time_steps(opt, steps)
        cpu.append(c / (steps * n) * 1e9)
        wall.append(w / (steps * n) * 1e9)
    return {
        "name": name,
        "size": n,
        "ns_per_param": statistics.median(cpu),
        "wall_ns_per_param": statistics.median(wall),
        "steps": steps,
        "repeats": args.repeats,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,1000000,10000000",
                        help="comma-separated parameter counts")
    parser.add_argument("--filter", default="", help="regex on the optimizer name")
    parser.add_argument("--names", default="", help="comma-separated optimizer names (exact)")
    parser.add_argument("--min-time", type=float, default=0.1,
                        help="seconds per timed block (default 0.1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks (default 5)")
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps first (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pattern = re.compile(args.filter)
    names = {s for s in args.names.split(",") if s}
    results = []
    with torch.no_grad():
        for name, ctor in VARIANTS:
            if not pattern.search(name) or (names and name not in names):
                continue
            for n in sizes:
                results.append(bench(name, ctor, n, args, generator))
                print(f"torch {name} {n}: {results[-1]['ns_per_param']:.3f} ns/param",
                      file=sys.stderr)
    json.dump({"torch_version": torch.__version__, "threads": torch.get_num_threads(),
               "results": results}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
