"""Shared by the benchmarks: wall-clock timing of one operation and the environment a result was measured in."""

import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

import ekinet


# Seconds each timing spends at least (EKINET_BENCH_MIN_SECONDS; lowered on a lent GPU, whose minutes are few and
# whose operations take milliseconds).
MIN_SECONDS = float(os.environ.get("EKINET_BENCH_MIN_SECONDS", "1"))


def samples(function, synchronize=lambda: None, repeats=3, min_total=None):
    """Wall times of at least `repeats` runs (more, until min_total seconds, MIN_SECONDS by default, are spent)
    after a warm-up, each ended by synchronize() (a GPU runs asynchronously)."""
    min_total = MIN_SECONDS if min_total is None else min_total
    function()
    synchronize()
    times = []
    while len(times) < repeats or sum(times) < min_total:
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def timed(function, synchronize=lambda: None, repeats=3, min_total=None):
    """Best wall time of samples(...)."""
    return min(samples(function, synchronize, repeats, min_total))


def timed_side_by_side(functions, synchronize, rounds=3):
    """{name: {"best", "median", "p10", "p90"}} of each function in `functions` ({name: function}), timed in
    turn for `rounds` rounds, so that clock changes and background load fall on every side alike."""
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            times[name] += samples(function, synchronize, min_total=MIN_SECONDS / rounds)
    return {name: {"best": min(t), "median": float(np.median(t)), "p10": float(np.percentile(t, 10)),
                   "p90": float(np.percentile(t, 90)), "runs": len(t)} for name, t in times.items()}


def git_commit():
    """The commit measured: EKINET_GIT_COMMIT (set where the tree was copied without .git), else git's own."""
    if os.environ.get("EKINET_GIT_COMMIT"):
        return os.environ["EKINET_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


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
        "min_seconds": MIN_SECONDS,
        "commit": git_commit(),
        "kernel": platform.release(),
    }
    if device == "cuda":
        import cupy as cp

        info["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        info["cupy"] = cp.__version__
        info["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
        try:
            import torch

            info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                        cudnn=torch.backends.cudnn.version(),
                        torch_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                        torch_tf32_cudnn=torch.backends.cudnn.allow_tf32,
                        cudnn_benchmark=torch.backends.cudnn.benchmark)
        except ImportError:
            pass
    return info


def header(results, title):
    """The first lines of a result's markdown table: the title with the device, then the command and versions."""
    env = results["environment"]
    return [f"# {title} ({env['device']}: {env.get('gpu') or env['cpu']})", "",
            f"Command: `{env['command']}` on {env['date']}; ekinet {env['ekinet']['version']}, "
            f"BLAS {env['ekinet']['blas']}, numpy {env['numpy']}, {env['cores']} cores.", ""]


def best_of(results):
    """How each time was taken, for a table's caption."""
    return f"best of at least 3 runs and {results['environment'].get('min_seconds', 1):g} s"


def save_results(results, out, stem, markdown, echo=True):
    """Write out/stem.json and out/stem.md (the table markdown(results) renders), and print the table (echo).
    Called after every row too (echo=False), so that a run stopped at a time limit keeps what it measured."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, stem)
    with open(path + ".json", "w") as f:
        json.dump(results, f, indent=1)
    table = markdown(results)
    with open(path + ".md", "w") as f:
        f.write(table)
    if echo:
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
