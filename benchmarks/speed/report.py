"""What every speed report records and where it goes: the machine and its load (other heavy
processes make a measurement `shared`), percentiles, and the report's JSON under
benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import REPO

RESULTS = REPO / "benchmarks" / "results"


# ----------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    import torch

    load1, load5, load15 = os.getloadavg()
    busy = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True,
                          text=True).stdout.splitlines()[1:6]
    heavy = [line.strip()[:160] for line in busy
             if float(line.split()[0]) >= 20.0 and "benchmarks.speed.service" not in line]
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_1_5_15": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "other_heavy_processes": heavy,
        "shared": bool(heavy) or load1 > 0.5,
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def write_report(name: str, report: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"speed-{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path
