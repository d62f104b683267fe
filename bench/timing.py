"""Shared by the benchmarks: wall-clock timing of one operation and the environment a result was measured in."""

import datetime
import json
import os
import platform
import sys
import time

import numpy as np

import ekinet


def timed(function, synchronize=lambda: None, repeats=3, min_total=1.0):
    """Best wall time of at least `repeats` runs (more, until min_total seconds are spent) after a warm-up."""
    function()
    synchronize()
    best, total, runs = float("inf"), 0.0, 0
    while runs < repeats or total < min_total:
        start = time.perf_counter()
        function()
        synchronize()
        elapsed = time.perf_counter() - start
        best, total, runs = min(best, elapsed), total + elapsed, runs + 1
    return best


def environment(device):
    """Date, exact command, build, versions, CPU (and GPU with CuPy/PyTorch versions for device="cuda")."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "ekinet": ekinet.build_info(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "device": device,
    }
    if device == "cuda":
        import cupy as cp

        info["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        info["cupy"] = cp.__version__
        try:
            import torch

            info["torch"] = torch.__version__
        except ImportError:
            pass
    return info


def header(results, title):
    """The first lines of a result's markdown table: the title with the device, then the command and versions."""
    env = results["environment"]
    return [f"# {title} ({env['device']}: {env.get('gpu') or env['cpu']})", "",
            f"Command: `{env['command']}` on {env['date']}; ekinet {env['ekinet']['version']}, "
            f"BLAS {env['ekinet']['blas']}, numpy {env['numpy']}, {env['cores']} cores.", ""]


def save_results(results, out, stem, markdown):
    """Write out/stem.json and out/stem.md (the table markdown(results) renders), and print the table."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, stem)
    with open(path + ".json", "w") as f:
        json.dump(results, f, indent=1)
    table = markdown(results)
    with open(path + ".md", "w") as f:
        f.write(table)
    print(table)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
