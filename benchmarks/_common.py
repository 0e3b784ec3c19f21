"""Helpers shared by the benchmark scripts: machine facts, the command line, result files, and
synthetic code catalogues.

Every benchmark writes ``benchmarks/results/<name>.json`` (with ``machine`` and ``command``) and
appends one row to the markdown table in ``benchmarks/results/README.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = RESULTS / "README.md"
HEADER = (
    "# Benchmark results\n\n"
    "One row per benchmark run (newest last); the JSON file beside this one holds the details.\n\n"
    "| date (UTC) | benchmark | result | wall | machine | command |\n"
    "|---|---|---|---|---|---|\n"
)


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, torch version and threads, and the CUDA device when there is one."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
    }


def timing_machine_info(device: torch.device) -> dict[str, Any]:
    """Platform, CPU count, torch version, device, threads and load (timings depend on them)."""
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_summary(machine: dict[str, Any]) -> str:
    """A short form for the markdown table: ``'NVIDIA H100, 16 CPUs'`` or ``'CPU, 2 CPUs'``."""
    device = machine.get("cuda_device") or "CPU"
    return f"{device}, {machine.get('cpu_count')} CPUs, torch {machine.get('torch')}"


def command_line() -> str:
    """The command that ran this benchmark, as it could be typed again from the repo root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_result(name: str, payload: dict[str, Any], results_dir: Path = RESULTS) -> Path:
    """Write ``<results_dir>/<name>.json``, adding ``machine``, ``command``, ``date`` if absent."""
    payload = dict(payload)
    payload.setdefault("machine", machine_info())
    payload.setdefault("command", command_line())
    payload.setdefault("date", utc_now())
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def append_row(
    benchmark: str,
    result: str,
    wall_seconds: float,
    machine: dict[str, Any] | None = None,
    command: str | None = None,
    table: Path = TABLE,
) -> None:
    """Append ``| date | benchmark | result | wall | machine | command |`` to the results table."""
    machine = machine_info() if machine is None else machine
    command = command_line() if command is None else command
    table.parent.mkdir(parents=True, exist_ok=True)
    if not table.is_file():
        table.write_text(HEADER)
    cells = [
        utc_now(),
        benchmark,
        result,
        f"{wall_seconds / 60:.1f} min",
        machine_summary(machine),
        f"`{command}`",
    ]
    with table.open("a") as f:
        f.write("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n")


def run_mscg_processes(
    commands: dict[str, list[str]], jobs: int, logs: Path, tag: str
) -> dict[str, int]:
    """``python -m mscg_lightning <args>`` for each named command, ``jobs`` processes at once.

    Each process writes ``logs/<name>.log`` (a name may hold ``/``); returns every exit code by
    name (the caller says what a failure means). Processes inherit the environment, so set
    ``OMP_NUM_THREADS`` to share the cores (e.g. 1 thread each for 2 processes on 2 cores).
    """
    pending, running, codes = list(commands), {}, {}
    while pending or running:
        while pending and len(running) < max(1, jobs):
            name = pending.pop(0)
            log_path = logs / f"{name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("w") as log:
                cmd = [sys.executable, "-m", "mscg_lightning", *commands[name]]
                running[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            print(f"[{tag}] {name}: started (log {log_path})", flush=True)
        time.sleep(1)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                codes[name] = proc.returncode
                del running[name]
                print(f"[{tag}] {name}: exited {proc.returncode}", flush=True)
    return codes


def artifacts_made_at(run_dir: Path, names: list[str]) -> dict[str, str]:
    """When each finished artifact of ``run_dir`` was made (its manifest's ``created_at``), so
    a result assembled from runs of several sessions says which run trained what."""
    from mscg_lightning.artifacts import Manifest
    from mscg_lightning.pipeline import artifact_dir

    dirs = {name: artifact_dir(run_dir, name) for name in names}
    return {
        n: Manifest.read(d).created_at for n, d in dirs.items() if (d / "manifest.json").is_file()
    }


def skewed_codes(gen: torch.Generator, n: int, skew: float, codebook: int) -> torch.Tensor:
    """n codes in [0, codebook) with Zipf-like popularity (skew 0 = uniform), random code order."""
    import torch

    p = 1.0 / (torch.arange(codebook, dtype=torch.float) + 5.0) ** skew
    return torch.randperm(codebook, generator=gen)[torch.multinomial(p, n, True, generator=gen)]


def with_collision_level(sem: torch.Tensor, codebook: int) -> torch.Tensor:
    """Append the rank of each item among items sharing its semantic codes: [N, L] -> [N, L+1]."""
    import torch

    key = torch.zeros(len(sem), dtype=torch.long)
    for level in range(sem.shape[1]):
        key = key * codebook + sem[:, level]
    sorted_key, order = torch.sort(key, stable=True)
    start = torch.ones_like(sorted_key, dtype=torch.bool)
    start[1:] = sorted_key[1:] != sorted_key[:-1]
    group_start = torch.cummax(torch.where(start, torch.arange(len(key)), 0), 0).values
    rank = torch.empty_like(key)
    rank[order] = torch.arange(len(key)) - group_start
    return torch.cat([sem, rank[:, None]], 1)
