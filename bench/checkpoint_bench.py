#!/usr/bin/python3
"""Checkpoint benchmark (issue #12): what durability costs, as ratios measured side by side in one run.

Absolute times on the shared 2-core machines swing by +-20% from run to run, so every number that
matters here is a ratio of two things measured alternately, in the same run, on the same filesystem:

a. **Write.** A session of N parameters (default 100M, Adam, one step taken so its moments exist:
   12 bytes per parameter, about 1.2 GB of file) checkpointed through the Checkpoint RPC, against
   writing the same number of bytes to the same filesystem the same way optd does (a temporary
   file written with os.write in 8 MiB pieces, fsync, rename over the previous one, fsync of the
   folder). Alternated round by round (ABBA order); the ratio is the median of per-round ratios of
   throughput, optd / plain. The server's own optd_checkpoint_duration_seconds is reported beside
   the client's clock, and the CPU seconds each side spent (optd: /proc/<pid>/stat of the whole
   process; plain: this process's user + system time, the kernel's copy into the page cache
   included).
b. **Step latency of another session while checkpoints run.** A small session (1M parameters,
   Adam) stepped by one worker with unary Step (dense F32 gradient, every parameter returned), in
   three arms per round, in rotating order: "quiet" (nothing else runs), "busy" (a thread
   checkpoints the large session back to back through the Checkpoint RPC, on a connection of its
   own unless --same_channel) and "io", the control: a child process writes as many bytes as the
   checkpoint, with fsync, back to back (a checkpoint's I/O without optd). busy and io last until
   at least one whole checkpoint (or write) has finished, so every part of it (snapshot, CRC,
   write, fsync) overlaps steps, and at least --steps steps; quiet takes as many steps as the
   last busy arm. Ratios: median over rounds of (arm's p50/p99/max) / (quiet's, same round). The
   slowest busy steps are located within their checkpoint (seconds after it started).
c. **Restore.** Time from starting the optd process until a Pull of the restored session succeeds,
   with the N-parameter session's checkpoint in --checkpoint_dir, against reading the same file
   into memory (np.empty + readinto, 8 MiB pieces) and against optd starting with an empty folder
   (until ListSessions succeeds). Cold: the checkpoint's pages are evicted from the page cache
   before each cold measurement with posix_fadvise(POSIX_FADV_DONTNEED) (the file only, not the
   whole machine's cache; `fincore` confirms nothing of it stays resident) or, with
   --cold=drop_caches, `echo 3 > /proc/sys/vm/drop_caches` (root). Warm: right after a read.

Usage:
  /usr/bin/python3 bench/checkpoint_bench.py [--params N] [--small_params N] [--steps N]
      [--rounds N] [--write_rounds N] [--restore_rounds N] [--same_channel]
      [--cold fadvise|drop_caches|none] [--dir DIR] [--json FILE] [--smoke]
Needs the build: OPTD_BUILD_DIR (default <repo>/build) with server/optd and the Python stubs.
--smoke: 2M parameters (a 0.1M session stepped), a few steps per arm, about 3 s; checks that every number is there
(bench/CMakeLists.txt registers it as the ctest checkpoint_bench_smoke). Speed is never asserted.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from optd_testing import OptdProcess, build_dir, to_tensor  # noqa: E402

BIG = "big"
SMALL = "small"
PROBE = "probe"                      # a 16-element tensor of the big session, pulled after restore
CHUNK = 25_000_000                   # parameters per tensor of the big session (100 MB)
MESSAGE_BYTES = 1 << 30              # CreateSession of 100M parameters is a 400 MB request
PIECE = 8 << 20                      # write and read size of the plain-file baselines
RPC_TIMEOUT_S = 600.0


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def channel_to(address):
    return grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MESSAGE_BYTES)])


def metric_value(text, name):
    """Sum of the samples of `name` (exact name, any labels) in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_optd(ckpt_dir, metrics=False):
    return OptdProcess(metrics=metrics, extra_args=[
        f"--checkpoint_dir={ckpt_dir}", "--checkpoint_interval=0", "--checkpoint_keep=1",
        f"--max_message_bytes={MESSAGE_BYTES}"]).start()


# ---------------------------------------------------------------------------------------------------
# Sessions.

def big_tensor_sizes(n):
    sizes = []
    while n > 0:
        sizes.append(min(CHUNK, n))
        n -= sizes[-1]
    return sizes


def create_big(pb2, stub, n):
    """Creates the N-parameter Adam session and takes one step, so that its moments are allocated."""
    sizes = big_tensor_sizes(n)
    req = pb2.CreateSessionRequest(session_id=BIG)
    req.config.optimizer.adam.lr = 1e-3
    for k, size in enumerate(sizes):
        req.tensors.append(to_tensor(f"w{k}", np.zeros(size, np.float32)))
    req.tensors.append(to_tensor(PROBE, np.zeros(16, np.float32)))
    stub.CreateSession(req, timeout=RPC_TIMEOUT_S)
    del req
    step = pb2.StepRequest(session_id=BIG, return_parameters=pb2.RETURN_PARAMETERS_NONE)
    for k, size in enumerate(sizes):
        step.gradients.append(to_tensor(f"w{k}", np.full(size, 0.01, np.float32)))
    step.gradients.append(to_tensor(PROBE, np.full(16, 0.01, np.float32)))
    reply = stub.Step(step, timeout=RPC_TIMEOUT_S)
    return reply.version


def create_small(pb2, stub, n):
    req = pb2.CreateSessionRequest(session_id=SMALL)
    req.config.optimizer.adam.lr = 1e-3
    req.tensors.append(to_tensor("w", np.zeros(n, np.float32)))
    stub.CreateSession(req, timeout=60)
    step = pb2.StepRequest(session_id=SMALL)  # RETURN_PARAMETERS_ALL: a worker's usual step
    step.gradients.append(to_tensor("w", np.full(n, 0.01, np.float32)))
    return step


# ---------------------------------------------------------------------------------------------------
# a. Write throughput.

def plain_write(folder, nbytes, piece):
    """Writes nbytes as optd writes a checkpoint: tmp file, fsync, rename, fsync of the folder."""
    target = os.path.join(folder, "plain.bin")
    tmp = target + ".tmp"
    start = time.monotonic()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(piece)
        left = nbytes
        while left > 0:
            left -= os.write(fd, view[:min(left, len(view))])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, target)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return time.monotonic() - start


def process_cpu_s(pid):
    """User + system CPU seconds of process `pid`, all its threads (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    t = os.times()
    return t.user + t.system


def bench_write(server, stub, plain_dir, rounds):
    pb2 = server.pb2
    piece = np.random.default_rng(1).integers(0, 256, PIECE, dtype=np.uint8).tobytes()
    rows = []
    for r in range(rounds):
        order = ("optd", "plain") if r % 2 == 0 else ("plain", "optd")
        row = {}
        for which in order:
            if which == "optd":
                before = server.metrics_text()
                cpu = process_cpu_s(server.proc.pid)
                start = time.monotonic()
                reply = stub.Checkpoint(pb2.CheckpointRequest(session_id=BIG),
                                        timeout=RPC_TIMEOUT_S)
                row["optd_s"] = time.monotonic() - start
                row["optd_cpu_s"] = process_cpu_s(server.proc.pid) - cpu
                after = server.metrics_text()
                row["bytes"] = reply.bytes
                row["path"] = reply.path
                row["server_s"] = (metric_value(after, "optd_checkpoint_duration_seconds_sum") -
                                   metric_value(before, "optd_checkpoint_duration_seconds_sum"))
            else:
                # Round 1 writes optd's checkpoint first, so its size is known here.
                nbytes = row["bytes"] if "bytes" in row else rows[0]["bytes"]
                cpu = own_cpu_s()
                row["plain_s"] = plain_write(plain_dir, nbytes, piece)
                row["plain_cpu_s"] = own_cpu_s() - cpu
        if rows and row["bytes"] != rows[0]["bytes"]:
            raise AssertionError("checkpoint size changed between rounds")
        row["ratio"] = row["plain_s"] / row["optd_s"]  # throughput optd / plain
        log(f"  write round {r + 1}: optd {row['optd_s']:.2f} s (server {row['server_s']:.2f} s, "
            f"CPU {row['optd_cpu_s']:.2f} s), plain {row['plain_s']:.2f} s (CPU "
            f"{row['plain_cpu_s']:.2f} s), {row['bytes'] / 1e9:.3f} GB")
        rows.append(row)
    os.remove(os.path.join(plain_dir, "plain.bin"))
    nbytes = rows[0]["bytes"]
    optd_s = statistics.median(r["optd_s"] for r in rows)
    plain_s = statistics.median(r["plain_s"] for r in rows)
    return {
        "rounds": rows, "bytes": nbytes,
        "optd_s": optd_s, "server_s": statistics.median(r["server_s"] for r in rows),
        "plain_s": plain_s,
        "optd_gbps": nbytes / optd_s / 1e9, "plain_gbps": nbytes / plain_s / 1e9,
        "ratio": statistics.median(r["ratio"] for r in rows),
        "optd_cpu_s": statistics.median(r["optd_cpu_s"] for r in rows),
        "plain_cpu_s": statistics.median(r["plain_cpu_s"] for r in rows),
        # CPU seconds, optd / plain, per round (the plain write's CPU is this process's: the
        # kernel's copy into the page cache, counted as system time, and the loop).
        "cpu_ratio": statistics.median(r["optd_cpu_s"] / max(r["plain_cpu_s"], 1e-3)
                                       for r in rows),
    }


# ---------------------------------------------------------------------------------------------------
# b. Step latency of a small session while the big one checkpoints.

class Checkpointing:
    """A thread checkpointing the big session back to back until asked to stop."""

    def __init__(self, pb2, stub):
        self.pb2, self.stub = pb2, stub
        self.spans = []          # (start, end) monotonic of each finished checkpoint
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            while not self.stop.is_set():
                start = time.monotonic()
                self.stub.Checkpoint(self.pb2.CheckpointRequest(session_id=BIG),
                                     timeout=RPC_TIMEOUT_S)
                self.spans.append((start, time.monotonic()))
        except Exception as e:  # pylint: disable=broad-except
            self.error = e

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(RPC_TIMEOUT_S)
        if self.error is not None:
            raise self.error


class PlainWriting:
    """A child process writing `nbytes` durably (as plain_write does) back to back until stopped:
    the I/O of a checkpoint without optd, for the control arm of the step-latency measurement."""

    CHILD = r"""
import os, sys, time
folder, nbytes = sys.argv[1], int(sys.argv[2])
piece = os.urandom(8 << 20)
while True:
    print("start", flush=True)
    target = os.path.join(folder, "io.bin"); tmp = target + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    left = nbytes
    while left > 0:
        left -= os.write(fd, piece[:min(left, len(piece))])
    os.fsync(fd); os.close(fd); os.rename(tmp, target)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY); os.fsync(dfd); os.close(dfd)
    print("done", flush=True)
"""

    def __init__(self, folder, nbytes):
        self.spans = []
        self._start = None
        self.proc = subprocess.Popen([sys.executable, "-c", self.CHILD, folder, str(nbytes)],
                                     stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("start"):
                self._start = time.monotonic()
            elif line.startswith("done") and self._start is not None:
                self.spans.append((self._start, time.monotonic()))

    def __enter__(self):
        self.reader.start()
        while self._start is None and self.proc.poll() is None:
            time.sleep(0.001)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()  # our own child, by its PID
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)


def step_loop(stub, request, count, until=None):
    """(start, latency) of unary steps: `count` of them, and then more while until() is false."""
    out = []
    while len(out) < count or (until is not None and not until()):
        start = time.monotonic()
        stub.Step(request, timeout=60)
        out.append((start, time.monotonic() - start))
    return out


def latency_stats(lat):
    v = [l for _, l in lat]
    return {"steps": len(v), "p50_ms": percentile(v, 50) * 1e3, "p99_ms": percentile(v, 99) * 1e3,
            "max_ms": max(v) * 1e3}


def where_in(spans, start):
    return next(((s, e) for s, e in spans if s <= start <= e), None)


def bench_steps(pb2, stub, ckpt_stub, step_request, steps, rounds, io_dir, nbytes):
    """Arms per round, in rotating order: quiet (no checkpoint), busy (the big session checkpointed
    back to back through ckpt_stub) and io (a child process writing as many bytes with fsync, back
    to back: the same I/O without optd). busy and io run until one whole checkpoint or write has
    finished and at least `steps` steps; quiet runs as many steps as the last busy arm."""
    step_loop(stub, step_request, 20)  # warm-up: the moments, malloc's retained buffers, the channel
    arms = {"quiet": [], "busy": [], "io": []}
    spans = {"busy": [], "io": []}
    per_round = []
    count = steps
    order = ["busy", "quiet", "io"]
    for r in range(rounds):
        this = {}
        for arm in order[r % 3:] + order[:r % 3]:
            if arm == "quiet":
                lat = step_loop(stub, step_request, count)
            else:
                bg = Checkpointing(pb2, ckpt_stub) if arm == "busy" else PlainWriting(io_dir, nbytes)
                with bg:
                    lat = step_loop(stub, step_request, steps, until=lambda: len(bg.spans) >= 1)
                    if arm == "busy":
                        bg.stop.set()
                spans[arm].extend(bg.spans)
                if arm == "busy":
                    count = len(lat)
            arms[arm].extend(lat)
            this[arm] = latency_stats(lat)
            log(f"  steps round {r + 1} {arm}: {len(lat)} steps, p50 {this[arm]['p50_ms']:.2f} ms, "
                f"p99 {this[arm]['p99_ms']:.1f} ms, max {this[arm]['max_ms']:.1f} ms")
        per_round.append(this)

    res = {name: latency_stats(lat) for name, lat in arms.items()}
    res["rounds"] = per_round
    for arm in ("busy", "io"):
        res[arm]["spans"] = len(spans[arm])
        res[arm]["span_s"] = statistics.median(e - s for s, e in spans[arm]) if spans[arm] else None
        # Ratios: the median over rounds of this round's arm / this round's quiet (side by side).
        for q in ("p50", "p99", "max"):
            res[f"{arm}_{q}_ratio"] = statistics.median(
                x[arm][f"{q}_ms"] / x["quiet"][f"{q}_ms"] for x in per_round)
    # Where the slowest busy steps started, in seconds after their checkpoint started.
    res["worst_busy_steps"] = []
    for start, lat in sorted(arms["busy"], key=lambda x: -x[1])[:5]:
        span = where_in(spans["busy"], start)
        res["worst_busy_steps"].append({
            "latency_ms": lat * 1e3,
            "when": "between checkpoints" if span is None else
                    f"{start - span[0]:.2f} s into a {span[1] - span[0]:.2f} s checkpoint"})
    res["worst_io_steps_ms"] = sorted((l * 1e3 for _, l in arms["io"]), reverse=True)[:5]
    # Busy-step latency by where the step started within its checkpoint (tenths of its duration).
    profile = [[] for _ in range(10)]
    samples = []
    for start, lat in arms["busy"]:
        span = where_in(spans["busy"], start)
        samples.append([None if span is None else round(start - span[0], 4), round(lat * 1e3, 3)])
        if span is not None:
            frac = (start - span[0]) / max(span[1] - span[0], 1e-9)
            profile[min(int(frac * 10), 9)].append(lat * 1e3)
    res["busy_profile"] = [{"tenth": k, "steps": len(v),
                            "p50_ms": percentile(v, 50) if v else None,
                            "max_ms": max(v) if v else None} for k, v in enumerate(profile)]
    res["busy_samples"] = samples  # [seconds after its checkpoint started (None: between), ms]
    res["quiet_samples_ms"] = [round(l * 1e3, 3) for _, l in arms["quiet"]]
    res["io_samples_ms"] = [round(l * 1e3, 3) for _, l in arms["io"]]
    res["checkpoint_spans_s"] = [round(e - s, 3) for s, e in spans["busy"]]
    return res


# ---------------------------------------------------------------------------------------------------
# c. Restore.

def files_under(folder):
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]


def resident_bytes(paths):
    """Bytes of these files in the page cache (util-linux fincore), or None if unavailable."""
    fincore = shutil.which("fincore")
    if not fincore or not paths:
        return None
    out = subprocess.run([fincore, "--bytes", "--noheadings", "--raw", "--output", "RES", *paths],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    return sum(int(x) for x in out.stdout.split())


def evict(paths, how):
    if how == "drop_caches":
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_file(path):
    """Reads the whole file into fresh memory, as a restore must; returns seconds."""
    start = time.monotonic()
    size = os.path.getsize(path)
    buf = np.empty(size, np.uint8)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < size:
            n = f.readinto(view[done:done + PIECE])
            if not n:
                raise IOError(f"{path}: short read at {done}")
            done += n
    elapsed = time.monotonic() - start
    del view, buf
    return elapsed


def time_startup(ckpt_dir, expect_version=None):
    """Seconds from starting optd until it serves: a Pull of the big session's probe tensor when
    expect_version is given, else ListSessions. Also the time to its listen line."""
    start = time.monotonic()
    server = start_optd(ckpt_dir)
    listening = time.monotonic() - start
    try:
        pb2 = server.pb2
        if expect_version is not None:
            reply = server.stub.Pull(pb2.PullRequest(session_id=BIG, names=[PROBE]), timeout=60)
            if reply.version != expect_version:
                raise AssertionError(f"restored version {reply.version}, expected {expect_version}")
        else:
            server.stub.ListSessions(pb2.ListSessionsRequest(), timeout=60)
        serving = time.monotonic() - start
        rss = server.status().get("VmRSS", 0)
    finally:
        server.stop(timeout=30)
    return serving, listening, rss


def bench_restore(ckpt_dir, empty_dir, version, rounds, cold_how):
    paths = files_under(ckpt_dir)
    ckpt_file = max(paths, key=os.path.getsize)
    rows = []
    for r in range(rounds):
        row = {}
        # Cold: optd and the plain read alternate which goes first.
        for which in (("optd", "read") if r % 2 == 0 else ("read", "optd")):
            evict(paths, cold_how)
            row[f"cold_{which}_resident_before"] = resident_bytes(paths)
            if which == "optd":
                row["cold_optd_s"], row["cold_optd_listen_s"], row["optd_rss"] = time_startup(
                    ckpt_dir, version)
            else:
                row["cold_read_s"] = read_file(ckpt_file)
        # Warm: the file was just read (by optd or by us) and is in the page cache.
        read_file(ckpt_file)
        row["warm_resident_before"] = resident_bytes(paths)
        for which in (("optd", "read") if r % 2 == 0 else ("read", "optd")):
            if which == "optd":
                row["warm_optd_s"], row["warm_optd_listen_s"], _ = time_startup(ckpt_dir, version)
            else:
                row["warm_read_s"] = read_file(ckpt_file)
        row["empty_s"], row["empty_listen_s"], _ = time_startup(empty_dir)
        log(f"  restore round {r + 1}: cold optd {row['cold_optd_s']:.2f} s, read "
            f"{row['cold_read_s']:.2f} s; warm optd {row['warm_optd_s']:.2f} s, read "
            f"{row['warm_read_s']:.2f} s; empty {row['empty_s']:.2f} s")
        rows.append(row)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("cold_optd_s", "cold_read_s", "warm_optd_s", "warm_read_s", "empty_s")}
    return {
        "rounds": rows, "file": ckpt_file, "file_bytes": os.path.getsize(ckpt_file),
        "cold_method": cold_how, **med,
        "cold_optd_read_ratio": statistics.median(r["cold_optd_s"] / r["cold_read_s"] for r in rows),
        "warm_optd_read_ratio": statistics.median(r["warm_optd_s"] / r["warm_read_s"] for r in rows),
        "cold_optd_empty_ratio": statistics.median(r["cold_optd_s"] / r["empty_s"] for r in rows),
        "warm_optd_empty_ratio": statistics.median(r["warm_optd_s"] / r["empty_s"] for r in rows),
    }


# ---------------------------------------------------------------------------------------------------

def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) * 1024
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem / 2**30, 1),
            "kernel": platform.release()}


def filesystem_of(path):
    out = subprocess.run(["df", "-T", path], capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    return " ".join(lines[-1].split()[:2]) if len(lines) >= 2 else "?"


def table(res):
    w, s, r = res["write"], res["steps"], res["restore"]
    n = res["params"]
    small = f"{res['small_params'] / 1e6:g}M"
    lines = [
        f"Checkpoint benchmark: {n / 1e6:g}M-parameter Adam session ({w['bytes'] / 1e9:.3f} GB "
        f"file), {small}-parameter Adam session stepped; filesystem {res['filesystem']}; "
        f"{res['machine']['cpus']} CPUs ({res['machine']['cpu']}), {res['machine']['mem_gib']} GiB.",
        "",
        "| measure | optd | baseline | ratio |",
        "|---|---:|---:|---:|",
        f"| a. write {w['bytes'] / 1e9:.2f} GB durably, s (GB/s): Checkpoint RPC vs the same bytes "
        f"written + fsync + rename + fsync dir (median of {len(w['rounds'])}) | {w['optd_s']:.2f} "
        f"({w['optd_gbps']:.2f}) | {w['plain_s']:.2f} ({w['plain_gbps']:.2f}) | "
        f"{w['ratio']:.2f} (throughput optd/plain) |",
        f"| a. CPU seconds to write it (optd: the whole process; plain: the writing process) | "
        f"{w['optd_cpu_s']:.2f} | {w['plain_cpu_s']:.2f} | {w['cpu_ratio']:.2f} |",
    ]
    for q in ("p50", "p99", "max"):
        lines.append(
            f"| b. {small} unary Step {q} ms: other session checkpointing vs none | "
            f"{s['busy'][q + '_ms']:.2f} | {s['quiet'][q + '_ms']:.2f} | "
            f"{s['busy_' + q + '_ratio']:.2f} |")
    for q in ("p50", "p99", "max"):
        lines.append(
            f"| b. control: {small} Step {q} ms: another process writing as many bytes with fsync "
            f"vs none | {s['io'][q + '_ms']:.2f} | {s['quiet'][q + '_ms']:.2f} | "
            f"{s['io_' + q + '_ratio']:.2f} |")
    lines += [
        f"| c. restore, cold cache: start to first Pull s, vs reading the file into memory | "
        f"{r['cold_optd_s']:.2f} | {r['cold_read_s']:.2f} | {r['cold_optd_read_ratio']:.2f} |",
        f"| c. restore, warm cache: same | {r['warm_optd_s']:.2f} | {r['warm_read_s']:.2f} | "
        f"{r['warm_optd_read_ratio']:.2f} |",
        f"| c. restore (cold) vs start-up with an empty --checkpoint_dir, s | {r['cold_optd_s']:.2f} "
        f"| {r['empty_s']:.3f} | {r['cold_optd_empty_ratio']:.0f} |",
        "",
        f"Ratios: medians of per-round ratios (a: {len(w['rounds'])} rounds, b: "
        f"{len(s['rounds'])}, c: {len(r['rounds'])}); the optd and baseline columns are medians (a, "
        f"c) or pooled percentiles (b).",
        f"b: {s['quiet']['steps']} quiet, {s['busy']['steps']} busy and {s['io']['steps']} io "
        f"steps; {s['busy']['spans']} checkpoints during busy arms, median "
        f"{s['busy']['span_s']:.2f} s each (alone: {w['optd_s']:.2f} s); {s['io']['spans']} plain "
        f"writes during io arms, median {s['io']['span_s']:.2f} s.",
        "b: busy step p50/max ms by tenth of the checkpoint it started in: " + ", ".join(
            f"{x['p50_ms']:.1f}/{x['max_ms']:.0f}" if x["steps"] else "-"
            for x in s["busy_profile"]) + ".",
        "b: slowest busy steps: " + "; ".join(f"{x['latency_ms']:.1f} ms ({x['when']})"
                                              for x in s["worst_busy_steps"][:3]) + "; slowest io "
        "steps: " + ", ".join(f"{x:.1f}" for x in s["worst_io_steps_ms"][:3]) + " ms.",
        f"c: cold = {r['cold_method']} of the checkpoint file before each cold measurement "
        f"(bytes of it resident before: {[x.get('cold_optd_resident_before') for x in r['rounds']]}); "
        f"optd RSS after restore {r['rounds'][0]['optd_rss'] / 1e9:.2f} GB.",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, default=100_000_000)
    ap.add_argument("--small_params", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=200, help="least steps per phase (b)")
    ap.add_argument("--rounds", type=int, default=3, help="quiet/busy/io rounds (b)")
    ap.add_argument("--write_rounds", type=int, default=4, help="optd/plain write rounds (a)")
    ap.add_argument("--restore_rounds", type=int, default=2, help="restore rounds (c)")
    ap.add_argument("--same_channel", action="store_true", help="ask for checkpoints on the "
                    "stepping worker's connection (default: a connection of their own)")
    ap.add_argument("--cold", choices=("fadvise", "drop_caches", "none"), default="fadvise")
    ap.add_argument("--dir", default=None, help="where checkpoints are written (default: a "
                    "temporary folder under $TMPDIR)")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this file")
    ap.add_argument("--smoke", action="store_true", help="2M parameters, a few steps, one round "
                    "each: checks the script works, not speed")
    args = ap.parse_args()
    if args.smoke:
        args.params, args.small_params, args.steps = 2_000_000, 100_000, 20
        args.rounds, args.write_rounds, args.restore_rounds = 3, 2, 1

    t_start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="optd-ckpt-bench-", dir=args.dir))
    ckpt_dir, empty_dir, plain_dir = root / "ckpt", root / "empty", root / "plain"
    for d in (ckpt_dir, empty_dir, plain_dir):
        d.mkdir()
    res = {"params": args.params, "small_params": args.small_params, "machine": machine(),
           "filesystem": filesystem_of(str(root)), "optd": str(build_dir() / "server" / "optd"),
           "args": vars(args)}
    server = None
    try:
        log(f"optd {res['optd']}; checkpoints in {root} ({res['filesystem']})")
        server = start_optd(ckpt_dir, metrics=True)
        channel = channel_to(server.address)
        stub = server.pb2_grpc.OptimizerStub(channel)
        pb2 = server.pb2
        t = time.monotonic()
        version = create_big(pb2, stub, args.params)
        log(f"created and stepped {args.params} parameters in {time.monotonic() - t:.1f} s")
        step_request = create_small(pb2, stub, args.small_params)

        log("a. write throughput")
        res["write"] = bench_write(server, stub, str(plain_dir), args.write_rounds)
        log("b. step latency with and without checkpoints")
        # Checkpoints are asked for on a connection of their own (another client, as an operator's
        # optctl or another trainer would be); --same_channel sends them on the steps' connection.
        ckpt_channel = channel if args.same_channel else channel_to(server.address)
        ckpt_stub = server.pb2_grpc.OptimizerStub(ckpt_channel)
        res["steps"] = bench_steps(pb2, stub, ckpt_stub, step_request, args.steps, args.rounds,
                                   str(plain_dir), res["write"]["bytes"])
        if ckpt_channel is not channel:
            ckpt_channel.close()
        for f in plain_dir.iterdir():
            f.unlink()
        # Only the big session stays for the restore: the small one's folder goes with it.
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=SMALL), timeout=60)
        channel.close()
        code, killed = server.stop(timeout=60)
        server = None
        if code != 0 or killed:
            raise RuntimeError(f"optd exited with {code} (killed: {killed})")

        log("c. restore")
        res["restore"] = bench_restore(str(ckpt_dir), str(empty_dir), version,
                                       args.restore_rounds, args.cold)
    finally:
        if server is not None:
            server.stop(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    res["seconds"] = time.monotonic() - t_start
    print(table(res))
    print(f"\n(run took {res['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    # Every measured number must be there and positive (what the smoke test checks).
    for v in (res["write"]["ratio"], res["steps"]["busy_p50_ratio"],
              res["steps"]["busy_p99_ratio"], res["steps"]["io_p50_ratio"],
              res["restore"]["cold_optd_read_ratio"], res["restore"]["cold_optd_empty_ratio"]):
        if not v > 0:
            raise SystemExit(f"FAIL: a ratio is {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
