"""tune_allocator: on under glibc, off with MSCG_MALLOC=default, and the same losses either way."""

import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import torch
from mscg_lightning.allocator import tune_allocator
tuned = tune_allocator()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(64, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 8))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
x, y = torch.randn(2048, 64), torch.randint(0, 8, (2048,))  # 32 MiB activations: above mmap
losses = []
for _ in range(3):
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
print(tuned, *losses)
"""


def _run(malloc: str | None) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MSCG_MALLOC", None)
    if malloc is not None:
        env["MSCG_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_tuned_allocator_gives_the_same_losses_and_can_be_turned_off() -> None:
    tuned, default = _run(None), _run("default")
    assert default[0] == "False"
    if platform.libc_ver()[0] == "glibc":
        assert tuned[0] == "True"
    assert tuned[1:] == default[1:]  # bit-identical losses
