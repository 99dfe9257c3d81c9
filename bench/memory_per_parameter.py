import sys, time, os
sys.path.insert(0, "/work/main/tests")
import numpy as np
from optd_testing import OptdProcess, to_tensor
N = int(sys.argv[1]) if len(sys.argv) > 1 else 25_000_000
mode = sys.argv[2] if len(sys.argv) > 2 else "RETURN_PARAMETERS_ALL"
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) * 1024
server = OptdProcess(); server.start()
if True:
    pb2 = server.pb2; stub = server.stub
    pid = server.proc.pid
    time.sleep(0.5)
    base = rss(pid)
    req = pb2.CreateSessionRequest(session_id="big")
    req.config.optimizer.adam.lr = 1e-3
    req.tensors.append(to_tensor("w", np.zeros(N, np.float32)))
    stub.CreateSession(req, timeout=60)
    del req
    after_create = rss(pid)
    g = to_tensor("w", np.full(N, 0.01, np.float32))
    for i in range(6):
        r = pb2.StepRequest(session_id="big", return_parameters=mode)
        r.gradients.append(g)
        out = stub.Step(r, timeout=60)
        del out
    time.sleep(0.5)
    busy = rss(pid)
    time.sleep(6)
    after = rss(pid)
    print(f"right after steps:+{(busy-base)/N:.2f} B/param")
    import re
    cur=None; big=[]
    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line): cur=line.strip()
        elif line.startswith("Rss:"):
            kb=int(line.split()[1])
            if kb > 20000: big.append((kb, cur))
    for kb, m in sorted(big, reverse=True): print(kb//1024, "MB", m)
    print(f"N={N} base={base/1e6:.1f}MB create:+{(after_create-base)/N:.2f} B/param  after steps:+{(after-base)/N:.2f} B/param ({mode})")

server.stop()
