"""The peer of bench/python_client_bench.py: a parameter server over torch.distributed.rpc, of the
design of PyTorch's tutorials ("Implementing a Parameter Server Using Distributed RPC Framework",
"Implementing Batch RPC Processing Using Asynchronous Executions"): rank 0 holds the parameters and
a torch.optim.Adam in a ParameterServer object; each trainer calls
``rpc.rpc_sync(ps_rref.owner(), ParameterServer.update_and_fetch_model, args=(ps_rref, grads))``,
the server sets the gradients, steps the optimizer under a lock and returns the new parameters
(``@rpc.functions.async_execution``, a batch of one: the asynchronous parameter server).

One RPC world lives for the whole benchmark: rank 0 ("ps") and ``max_workers`` trainers
("trainer1".."trainerN"), TensorPipe on 127.0.0.1 (a free port). The parent process drives rank 0
through a pipe: ``Peer.run(params, workers, dtype, seconds, warmup)`` builds a new
ParameterServer of ``params`` floats (a [rows, 256] matrix and a bias, as optd-bench's session),
has the first ``workers`` trainers step it for ``seconds`` after ``warmup`` steps each, and returns
(steps per second, per-step latencies in seconds). ``dtype`` "bf16" sends gradients and
parameters as torch.bfloat16 (converted by torch on each side).
"""

import multiprocessing
import os
import socket
import threading
import time
from typing import List, Tuple

import torch
from torch.distributed import rpc

COLUMNS = 256


def shapes(params: int) -> List[Tuple[int, ...]]:
    rows = (params - 1) // COLUMNS
    return [(rows, COLUMNS), (params - rows * COLUMNS,)]


class ParameterServer:
    """The tutorial's parameter server: the model's parameters, an optimizer, a lock."""

    def __init__(self, params: int, wire: str) -> None:
        self.params = [torch.zeros(s, requires_grad=True) for s in shapes(params)]
        self.optimizer = torch.optim.Adam(self.params, lr=1e-3)
        self.wire = torch.bfloat16 if wire == "bf16" else torch.float32
        self.lock = threading.Lock()

    @staticmethod
    @rpc.functions.async_execution
    def update_and_fetch_model(ps_rref, grads):
        self = ps_rref.local_value()
        with self.lock:
            for p, g in zip(self.params, grads):
                p.grad = g.to(torch.float32)
            self.optimizer.step()
            # A copy under the lock: the reply is serialised after it is released.
            reply = [p.detach().to(self.wire, copy=True) for p in self.params]
        fut = torch.futures.Future()
        fut.set_result(reply)
        return fut


def train(ps_rref, params: int, wire: str, seconds: float, warmup: int, start_at: float):
    """Runs on a trainer: warmup steps, then steps until `seconds` after `start_at` (wall
    clock). Returns the measured steps' latencies."""
    dtype = torch.bfloat16 if wire == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(os.getpid())
    grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes(params)]
    owner = ps_rref.owner()
    for _ in range(warmup):
        rpc.rpc_sync(owner, ParameterServer.update_and_fetch_model, args=(ps_rref, grads))
    while time.time() < start_at:
        time.sleep(0.001)
    latencies, end = [], start_at + seconds
    while True:
        t0 = time.perf_counter()
        rpc.rpc_sync(owner, ParameterServer.update_and_fetch_model, args=(ps_rref, grads))
        latencies.append(time.perf_counter() - t0)
        if time.time() >= end:
            return latencies


def _rank(rank: int, world: int, port: int, conn) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}",
                                              num_worker_threads=16, rpc_timeout=600)
    name = "ps" if rank == 0 else f"trainer{rank}"
    rpc.init_rpc(name, rank=rank, world_size=world, rpc_backend_options=options)
    if rank == 0:
        conn.send("ready")
        while True:
            command = conn.recv()
            if command is None:
                break
            params, workers, wire, seconds, warmup = command
            ps_rref = rpc.RRef(ParameterServer(params, wire))
            # After every trainer's warmup (a step is at most ~20 ms here).
            start_at = time.time() + 1.0 + 0.05 * warmup * workers
            futures = [rpc.rpc_async(f"trainer{r}", train,
                                     args=(ps_rref, params, wire, seconds, warmup, start_at),
                                     timeout=600) for r in range(1, workers + 1)]
            latencies = [lat for f in futures for lat in f.wait()]
            conn.send(latencies)
    rpc.shutdown()


class Peer:
    """The RPC world (rank 0 + max_workers trainers, spawned processes) and its control pipe."""

    def __init__(self, max_workers: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        world = max_workers + 1
        self._procs = [ctx.Process(target=_rank, args=(r, world, port, child if r == 0 else None),
                                   daemon=True) for r in range(world)]
        for p in self._procs:
            p.start()
        if not self._conn.poll(120) or self._conn.recv() != "ready":
            self.close()
            raise RuntimeError("the torch.distributed.rpc world did not start within 120 s")

    def run(self, params: int, workers: int, wire: str, seconds: float,
            warmup: int) -> Tuple[float, List[float]]:
        self._conn.send((params, workers, wire, seconds, warmup))
        if not self._conn.poll(seconds + 300):
            raise RuntimeError("the torch.distributed.rpc parameter server did not answer")
        latencies = self._conn.recv()
        # Each trainer stops at its first step that ends after the window: steps/s over it.
        return len(latencies) / seconds, latencies

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        for p in self._procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
