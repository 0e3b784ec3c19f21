"""Helpers shared by the benchmark scripts: machine facts, the command line, result files.

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
from typing import Any

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

    Each process writes ``logs/<name>.log``; returns every exit code by name (the caller says
    what a failure means). Processes inherit the environment, so set ``OMP_NUM_THREADS`` to
    share the cores (e.g. 1 thread each for 2 processes on 2 cores).
    """
    pending, running, codes = list(commands), {}, {}
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < max(1, jobs):
            name = pending.pop(0)
            log_path = logs / f"{name}.log"
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
