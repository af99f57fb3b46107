"""CUDA tensors through a checkpoint, on a machine with an NVIDIA GPU (not collected by
pytest: CI machines have no GPU).

    python tests/gpu/cuda_checkpoints.py

Saves a namespace holding CUDA tensors (float32, bfloat16, a parameter with grad), an
``nn.Module`` on the GPU, its Adam optimizer after one step, and an alias; then restores it
in a fresh process that sees the GPU (everything back on ``cuda:0``, equal, the optimizer's
state keyed by the restored model's own parameters) and in one that does not
(``CUDA_VISIBLE_DEVICES=""``: on the CPU, with a warning). Checks that host tensors the
GPU copies into after a checkpoint (pinned, by DMA; and pageable) are saved changed by the
next one, which the write watch must not miss, and that a snapshot (what a kernel takes
after a cell, written in the background) holds CUDA and pinned tensors as they were when it
was taken, copying a CUDA tensor to the host once. Also prints how fast a 2 GiB
CUDA tensor checkpoints and restores against ``torch.save``/``torch.load`` of the same
tensor. Exits non-zero on the first check that fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SAVE = r"""
import sys, torch
from jupyter_lowcost.storage.checkpoints import CheckpointStore
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss = model(torch.randn(8, 64, device="cuda")).sum()
loss.backward()
optimizer.step()
x = torch.arange(1_000_000, dtype=torch.float32, device="cuda")
y = x  # alias
half = torch.randn(1000, device="cuda", dtype=torch.bfloat16)
w = torch.nn.Parameter(torch.ones(3, device="cuda"))
namespace = dict(model=model, optimizer=optimizer, x=x, y=y, half=half, w=w)
report = CheckpointStore(sys.argv[1]).save(namespace)
assert not report.skipped, report.skipped
torch.save({k: v for k, v in namespace.items()}, sys.argv[1] + "/reference.pt")
print("saved", report.variables, report.bytes)
"""

RESTORE = r"""
import sys, warnings, torch
from jupyter_lowcost.storage.checkpoints import CheckpointStore
expect = sys.argv[2]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ns = {}
    report = CheckpointStore(sys.argv[1]).load(into=ns)
assert not report.not_restored, report.not_restored
ref = torch.load(sys.argv[1] + "/reference.pt", map_location="cpu", weights_only=False)
for name in ("x", "half", "w"):
    assert ns[name].device.type == expect, (name, ns[name].device)
    assert torch.equal(ns[name].cpu(), ref[name].cpu()), name
assert ns["y"] is ns["x"], "alias lost"
assert isinstance(ns["w"], torch.nn.Parameter) and ns["w"].requires_grad
model, optimizer = ns["model"], ns["optimizer"]
for p, q in zip(model.parameters(), ref["model"].parameters()):
    assert p.device.type == expect and torch.equal(p.cpu(), q.cpu())
params = list(model.parameters())
group = optimizer.param_groups[0]["params"]
assert all(a is b for a, b in zip(group, params)), "optimizer no longer holds the model's parameters"
for p in params:
    state = optimizer.state[p]
    assert state["exp_avg"].device.type == expect, state["exp_avg"].device
# The restored pair trains on.
loss = model(torch.randn(8, 64, device=expect)).sum()
loss.backward()
optimizer.step()
cpu_warnings = [str(w.message) for w in caught if "restored on the CPU" in str(w.message)]
if expect == "cpu":
    assert cpu_warnings, "no warning when CUDA tensors come back on the CPU"
print("restored on", expect, "ok;", len(cpu_warnings), "CPU warnings;", report.summary())
"""

SPEED = r"""
import sys, time, torch
from jupyter_lowcost.storage.checkpoints import CheckpointStore
big = torch.randn(2 ** 29, device="cuda")  # 2 GiB float32
torch.cuda.synchronize()
def timed(f):
    t = time.perf_counter(); r = f(); torch.cuda.synchronize(); return time.perf_counter() - t, r
store = CheckpointStore(sys.argv[1] + "/ours")
t_save, _ = timed(lambda: store.save({"big": big}))
t_ref, _ = timed(lambda: torch.save(big, sys.argv[1] + "/big.pt"))
ns = {}
t_load, _ = timed(lambda: CheckpointStore(sys.argv[1] + "/ours").load(into=ns))
t_refload, back = timed(lambda: torch.load(sys.argv[1] + "/big.pt"))
assert ns["big"].device.type == "cuda" and torch.equal(ns["big"], big)
big[0] = 1
t_inc, rep = timed(lambda: store.save({"big": big}))
print(f"2 GiB CUDA tensor: checkpoint {t_save:.2f} s, torch.save {t_ref:.2f} s "
      f"(throughput ratio {t_ref / t_save:.2f}x); restore {t_load:.2f} s, torch.load "
      f"{t_refload:.2f} s (time ratio {t_load / t_refload:.2f}x); after big[0]=1: "
      f"{rep.bytes_written / 2**20:.1f} MiB written in {t_inc:.2f} s")
"""


COPIED_FROM_GPU = r"""
import platform, sys, torch
from jupyter_lowcost.storage import write_watch
from jupyter_lowcost.storage.checkpoints import CheckpointStore
mib = 1024 * 1024
store = CheckpointStore(sys.argv[1], chunk_size=mib)
pinned = torch.zeros(16 * mib // 4, pin_memory=True)
pageable = torch.zeros(16 * mib // 4)
state = dict(pinned=pinned, pageable=pageable)
store.save(state)
# The GPU writes host memory after a checkpoint: by DMA into the pinned tensor.
source = torch.arange(16 * mib // 4, dtype=torch.float32, device="cuda")
pinned.copy_(source, non_blocking=True)
pageable.copy_(source, non_blocking=True)
torch.cuda.synchronize()
report = store.save(state)
back = {}
store.load(into=back)
assert torch.equal(back["pinned"], source.cpu()), "a GPU copy into pinned memory was missed"
assert torch.equal(back["pageable"], source.cpu()), "a GPU copy into pageable memory was missed"
print(f"GPU copies into host tensors after a checkpoint: kept (Linux {platform.release()}, "
      f"write watch {'on' if write_watch.shared() else 'not available'}; the next "
      f"checkpoint wrote {report.bytes_written / mib:.0f} MiB, read "
      f"{report.bytes_compared / mib:.2f} MiB to compare)")
"""


STAGED = r"""
import sys, torch
from jupyter_lowcost.storage.checkpoints import CheckpointStore
# What a kernel does after a cell: a snapshot, then a write while the next cell runs.
store = CheckpointStore(sys.argv[1])
model = torch.nn.Linear(1024, 1024).cuda()
pinned = torch.zeros(4 * 1024 * 1024, pin_memory=True)
before = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
snapshot = store.snapshot(dict(model=model, pinned=pinned), stage=True)
staged = {name for name, _ in store._staging}
assert staged == {"pinned"}, staged  # the CUDA tensors' host copies are not copied again
with torch.no_grad():
    for parameter in model.parameters():
        parameter.add_(1)
pinned.copy_(torch.ones(4 * 1024 * 1024, device="cuda"), non_blocking=True)
torch.cuda.synchronize()
store.write(snapshot)
back = {}
store.load(into=back)
for key, value in back["model"].state_dict().items():
    assert value.device.type == "cuda" and torch.equal(value.cpu(), before[key]), key
assert back["pinned"].sum().item() == 0, "the snapshot saw a GPU copy made after it"
print("a snapshot of CUDA and pinned tensors holds them as they were when it was taken")
"""


def run(code: str, *args: str, env: dict[str, str] | None = None) -> None:
    merged = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    result = subprocess.run([sys.executable, "-c", code, *args], env=merged, text=True)
    if result.returncode:
        sys.exit(f"FAILED: {args}")


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("this check needs a machine with an NVIDIA GPU and a CUDA build of PyTorch")
    print("torch", torch.__version__, torch.cuda.get_device_name(0))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run(SAVE, folder)
        run(RESTORE, folder, "cuda")
        run(RESTORE, folder, "cpu", env={"CUDA_VISIBLE_DEVICES": ""})
        print(f"round trips: {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory() as folder:
        run(COPIED_FROM_GPU, folder)
    with tempfile.TemporaryDirectory() as folder:
        run(STAGED, folder)
    with tempfile.TemporaryDirectory(dir=os.environ.get("CHECK_DIR")) as folder:
        run(SPEED, folder)
    print("ALL CUDA CHECKS PASSED")


if __name__ == "__main__":
    main()
