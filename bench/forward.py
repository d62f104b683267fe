"""Benchmark of the batched ensemble forward pass (issue: batched ensemble networks, item 5).

Members x examples per second for MLP 784-100-10 and 784-500-300-100-10, CNN-MNIST, RNN(32) and LSTM(32) on
sequences of 50 steps, at J in {100, 2000} and B in {64, 256}. On the CPU the native core is compared with the NumPy
reference in the same run; on a GPU (CuPy present, CUDA core built) with PyTorch's ensembling recipe
(torch.func.stack_module_state + functional_call + vmap; for the recurrent networks, whose modules vmap
cannot batch, vmap of their steps written out in torch operations) and with a Python loop over the members'
modules, on the same device, plus one online LSTM step (J = 2000, one new observation).

Usage: python bench/forward.py [--device cpu|cuda] [--quick] [--budget SECONDS] [--networks NAME ...]
                               [--label LABEL] [--out bench/results]
--networks: some of "online" (the online LSTM step) and the networks' names, as in the table; --label: appended
to the results' file name (forward-cpu-float32-LABEL), for a second machine's results beside the first's.
Reference runs predicted to exceed the budget are recorded as skipped, and native calls that take more than a
quarter of it are timed once after the warm-up instead of best of three.
"""

import argparse
import copy
import json
import os
import time

import numpy as np
from timing import best_of, environment, header, save_results, timed, timed_side_by_side

from ekinet import _core, nn
from ekinet._native import context_for, view

NETWORKS = {
    "mlp 784-100-10": lambda: nn.from_string("mlp:784-100-10"),
    "mlp 784-500-300-100-10": lambda: nn.from_string("mlp:784-500-300-100-10"),
    "cnn-mnist": lambda: nn.from_string("cnn-mnist"),
    "rnn(32), 50 steps": lambda: nn.Sequential([nn.RNN(32), nn.Dense(1)], input_shape=(50, 1)),
    "lstm(32), 50 steps": lambda: nn.Sequential([nn.LSTM(32), nn.Dense(1)], input_shape=(50, 1)),
}
GRID_J = (100, 2000)
GRID_B = (64, 256)


def inputs(xp, network, J, B, dtype):
    rng = np.random.default_rng(0)
    U = xp.asarray(network.prior(J, rng=rng, dtype=dtype))
    X = xp.asarray(rng.standard_normal((B, *network.input_shape)).astype(dtype))
    return U, X


REFERENCE_MEMORY_BYTES = 4 << 30  # the NumPy reference runs on at most this much of its activations at a time


def reference_members_per_call(network, J, B, dtype):
    """Members per reference call so that its activations stay within REFERENCE_MEMORY_BYTES: the reference
    keeps every member's outputs (and a convolution's patches, and copies of its output; a recurrent layer's
    input projections of every step, and their sum with the biases) of the whole batch, 4 GB per 100
    CNN-MNIST members and 13 GB per 1000 LSTM(32) members on 50 steps at B = 256."""
    per_example = 0
    for i, layer in enumerate(network.layers):
        out = int(np.prod(network.shapes[i + 1]))
        per_example += out
        if isinstance(layer, nn.Conv2d):  # patches (pixels x channels k^2) and the transposed output
            per_example += network.shapes[i][0] * layer.kernel ** 2 * out // layer.channels + 2 * out
        if isinstance(layer, nn.RNN):  # gates x hidden pre-activations per step, twice
            gates = 4 if isinstance(layer, nn.LSTM) else 1
            per_example += 2 * network.shapes[i][0] * gates * layer.hidden
    per_member = B * per_example * np.dtype(dtype).itemsize
    return int(min(J, max(1, REFERENCE_MEMORY_BYTES // per_member)))


def bench_cpu(name, network, J, B, dtype, budget):
    U, X = inputs(np, network, J, B, dtype)
    row = {"network": name, "J": J, "B": B, "P": network.parameter_count, "dtype": dtype}
    start = time.perf_counter()
    network.forward(U, X)
    single = time.perf_counter() - start
    if single * 4 < budget:
        row["native_s"] = timed(lambda: network.forward(U, X))
    else:  # a single call takes a large part of the budget: one timed run after the warm-up
        row["native_s"] = timed(lambda: network.forward(U, X), repeats=1, min_total=0)
        row["native_runs"] = 1
    if single * 30 < budget:  # the reference is expected to be slower; it runs three times
        chunk = reference_members_per_call(network, J, B, dtype)
        if chunk < J:
            row["reference_members_per_call"] = chunk

        def reference():
            for first in range(0, J, chunk):
                network.forward(U[first:first + chunk], X, backend="reference")

        row["reference_s"] = timed(reference, repeats=2, min_total=0)
        row["native_speedup"] = row["reference_s"] / row["native_s"]
    else:
        row["reference"] = f"skipped: one native run took {single:.2f} s, the reference would exceed the budget"
    row["native_member_examples_per_s"] = J * B / row["native_s"]
    return row


def torch_member_forward(network):
    """One member's forward pass as a function of its parameters (a dict by ekinet's names) and the batch, in
    torch operations that vmap batches over the members: the recipe for recurrent networks, whose PyTorch
    modules (nn.RNN, nn.LSTM) call a fused kernel that vmap cannot batch ("Cannot access data pointer of Tensor
    that doesn't have storage"). The steps are PyTorch's equations, the LSTM's gates in the order i, f, g, o."""
    import torch

    activations = {"identity": lambda v: v, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}

    def recurrent(layer, w, x):
        h = x.new_zeros((x.shape[0], layer.hidden))
        c = h
        steps = []
        for t in range(x.shape[1]):
            gates = x[:, t] @ w["weight_ih"].T + w["bias_ih"] + h @ w["weight_hh"].T + w["bias_hh"]
            if isinstance(layer, nn.LSTM):
                i, f, g, o = gates.chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                h = torch.tanh(gates)
            steps.append(h)
        return torch.stack(steps, dim=1) if layer.return_sequences else h

    def forward(weights, x):
        for index, layer in enumerate(network.layers):
            w = {key.split(".", 1)[1]: value for key, value in weights.items() if key.startswith(f"{index}.")}
            if isinstance(layer, nn.RNN):
                x = recurrent(layer, w, x)
            elif isinstance(layer, nn.Dense) and layer.activation in activations:
                x = activations[layer.activation](x @ w["weight"].T + w["bias"])
            else:
                raise ValueError(f"torch_member_forward: layer {index} ({type(layer).__name__}) is not written out; "
                                 "use the modules of network.to_torch")
        return x

    return forward


def member_weights(network, U):
    """{name: (J, *shape) view of U} for a (J, P) torch tensor: every member's weights, stacked."""
    return {name: U[:, offset:offset + int(np.prod(shape))].reshape(U.shape[0], *shape)
            for name, (offset, shape) in network.parameters.items()}


def prepare_gpu_comparison():
    """PyTorch computes in IEEE float32 as the native core does (its default lets cuDNN convolve in TF32, which
    would compare precisions, not implementations), with cuDNN's autotuner on for the fixed shapes (the
    warm-up absorbs its search); then the GPU is kept busy half a second so that no timing starts at idle clocks."""
    import cupy as cp
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    a = cp.ones((4096, 4096), dtype=cp.float32)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.5:
        a @ a
        cp.cuda.Stream.null.synchronize()


def max_relative_difference(native, other):
    """max |native - other| / max |native| over every member's outputs (both on the GPU)."""
    import cupy as cp

    native, other = cp.asarray(native).reshape(native.shape[0], -1), cp.asarray(other)
    other = other.reshape(native.shape[0], -1)
    if other.shape != native.shape:
        return f"shapes differ: {native.shape} and {other.shape}"
    return float(cp.abs(native - other.astype(native.dtype)).max() / cp.abs(native).max())


def record_side_by_side(row, times):
    """native_s and torch_vmap_s (the best runs, as every other time here) and each side's median and spread."""
    row["native_s"], row["torch_vmap_s"] = times["native"]["best"], times["torch_vmap"]["best"]
    row["speedup_over_vmap"] = row["torch_vmap_s"] / row["native_s"]
    row["speedup_over_vmap_median"] = times["torch_vmap"]["median"] / times["native"]["median"]
    row["spread"] = times


_TORCH_MODULES = {}  # (network name, J) -> the members' torch modules: built once, not for every B


def bench_cuda(name, network, J, B, dtype, budget):
    import cupy as cp
    import torch
    from torch.func import functional_call, stack_module_state

    U, X = inputs(cp, network, J, B, dtype)  # U depends on J only
    sync = cp.cuda.Stream.null.synchronize
    row = {"network": name, "J": J, "B": B, "P": network.parameter_count, "dtype": dtype}

    if (name, J) not in _TORCH_MODULES:
        _TORCH_MODULES.clear()  # one network's modules at a time on the GPU
        host_U = U.get()
        _TORCH_MODULES[name, J] = [network.to_torch(host_U[j]).cuda() for j in range(J)]
    modules = _TORCH_MODULES[name, J]
    params, buffers = stack_module_state(modules)
    base = copy.deepcopy(modules[0]).to("meta")  # .to() moves in place: the loop below needs modules[0]
    tX = torch.from_dlpack(X)

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    if any(isinstance(layer, nn.RNN) for layer in network.layers):
        weights, written_out = member_weights(network, torch.from_dlpack(U)), torch_member_forward(network)
        vmapped_steps = torch.vmap(written_out, in_dims=(0, None))
        run_vmap = lambda: vmapped_steps(weights, tX)  # noqa: E731
        row["torch_vmap_recipe"] = "steps written out"
    else:
        vmapped = torch.vmap(one, in_dims=(0, 0, None))
        run_vmap = lambda: vmapped(params, buffers, tX)  # noqa: E731
    with torch.inference_mode():
        try:  # vmap has no batching rule for some modules: say so in the row
            row["vmap_max_relative_difference"] = max_relative_difference(network.forward(U, X), run_vmap())
            times = timed_side_by_side({"native": lambda: network.forward(U, X), "torch_vmap": run_vmap}, sync_all)
            record_side_by_side(row, times)
        except (RuntimeError, NotImplementedError) as error:
            row["torch_vmap_error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            row["native_s"] = timed(lambda: network.forward(U, X), sync)
        row["torch_loop_s"] = timed(lambda: [m(tX) for m in modules], torch.cuda.synchronize, min_total=0)
    row["native_member_examples_per_s"] = J * B / row["native_s"]
    row["speedup_over_loop"] = row["torch_loop_s"] / row["native_s"]
    time_layered(row, lambda: network.forward(U, X), sync)
    return row


def sync_all():
    """Wait for CuPy's and PyTorch's work on the GPU alike."""
    import cupy as cp
    import torch

    cp.cuda.Stream.null.synchronize()
    torch.cuda.synchronize()


def time_layered(row, run, sync):
    """The same call with every network layer by layer (Context.whole_networks off): what the whole-network
    path (small CNNs, one-step recurrent networks) buys, side by side. About 1 for the networks it does not run."""
    import cupy as cp

    context = context_for(cp)
    context.whole_networks = False
    try:
        row["layered_s"] = timed(run, sync)
    finally:
        context.whole_networks = True
    row["whole_over_layered"] = row["layered_s"] / row["native_s"]


def online_step_network():
    return nn.Sequential([nn.LSTM(32), nn.Dense(1)], input_shape=(1, 1))


def bench_online_step(device, J, dtype):
    """One online LSTM step: every member advances its own (h, c) by one new observation (B = 1, T = 1)."""
    network = online_step_network()
    xp = np
    if device == "cuda":
        import cupy as xp
    U, X = inputs(xp, network, J, 1, dtype)
    state = xp.zeros((J, network.state_size), dtype=dtype)
    sync = (lambda: xp.cuda.Stream.null.synchronize()) if device == "cuda" else (lambda: None)
    row = {"network": "online LSTM(32) step", "J": J, "B": 1, "P": network.parameter_count, "dtype": dtype}
    row["native_s"] = timed(lambda: network.forward(U, X, state=state, return_state=True), sync)
    row["native_member_examples_per_s"] = J / row["native_s"]
    # The core's call alone, its arguments prepared once: what the Python layer's checks and conversions add.
    G, state_out = xp.empty((J, network.output_size), dtype=dtype), xp.empty_like(state)
    context, views = context_for(xp), [view(a) for a in (U, X.reshape(1, -1), G, state, state_out)]
    row["core_call_s"] = timed(lambda: _core.forward(context, network._network, *views), sync)
    if device == "cpu":
        row["reference_s"] = timed(lambda: network.forward(U, X, state=state, return_state=True,
                                                           backend="reference"))
        row["native_speedup"] = row["reference_s"] / row["native_s"]
        return row
    import torch

    # PyTorch's ensembling recipe for the same step: the members' weights stacked, one step vmapped over them.
    tX, tstate = torch.from_dlpack(X)[0, 0], torch.from_dlpack(state)
    weights = member_weights(network, torch.from_dlpack(U))

    def step(w, x, h, c):
        gates = w["0.weight_ih"] @ x + w["0.bias_ih"] + w["0.weight_hh"] @ h + w["0.bias_hh"]
        i, f, g, o = gates.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return w["1.weight"] @ h + w["1.bias"], h, c

    vmapped = torch.vmap(step, in_dims=(0, None, 0, 0))
    h, c = tstate[:, :32], tstate[:, 32:]
    with torch.inference_mode():
        native_out = network.forward(U, X, state=state, return_state=True)[0]
        row["vmap_max_relative_difference"] = max_relative_difference(native_out, vmapped(weights, tX, h, c)[0])
        times = timed_side_by_side({"native": lambda: network.forward(U, X, state=state, return_state=True),
                                    "torch_vmap": lambda: vmapped(weights, tX, h, c)}, sync_all)
    record_side_by_side(row, times)
    row["native_member_examples_per_s"] = J / row["native_s"]
    time_layered(row, lambda: network.forward(U, X, state=state, return_state=True), sync)
    return row


def markdown(results):
    env = results["environment"]
    lines = header(results, "Batched ensemble forward benchmark") + [
        f"Times in milliseconds ({best_of(results)}, or one run after a warm-up where marked); "
        "throughput in member-examples per second.",
        "", "| network | J | B | P | native ms | member-examples/s | reference ms | native speed-up |"
        + (" torch vmap ms | speed-up over vmap | torch loop ms | speed-up over loop |"
           if env["device"] == "cuda" else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if env["device"] == "cuda" else "")]
    for r in results["rows"]:
        ref = f"{1e3 * r['reference_s']:.3g}" if "reference_s" in r else "-"
        if "reference_members_per_call" in r:
            ref += f" ({r['reference_members_per_call']} members a call)"
        speed = f"{r['native_speedup']:.1f}" if "native_speedup" in r else "-"
        once = " (1 run)" if r.get("native_runs") == 1 else ""
        line = (f"| {r['network']} | {r['J']} | {r['B']} | {r['P']} | {1e3 * r['native_s']:.3g}{once} | "
                f"{r['native_member_examples_per_s']:.3g} | {ref} | {speed} |")
        if env["device"] == "cuda":
            loop = (f" {1e3 * r['torch_loop_s']:.3g} | {r['speedup_over_loop']:.1f} |" if "torch_loop_s" in r
                    else " - | - |")
            vmap = (f" {1e3 * r['torch_vmap_s']:.3f} | {r['speedup_over_vmap']:.1f} |" if "torch_vmap_s" in r
                    else " failed | - |")
            line += vmap + loop
        lines.append(line)
    lines += [""] + [f"{r['network']}, J = {r['J']}: the core's call alone (its arguments prepared once) "
                     f"{1e3 * r['core_call_s']:.3g} ms of the {1e3 * r['native_s']:.3g} ms"
                     for r in results["rows"] if "core_call_s" in r]
    paired = [r for r in results["rows"] if "spread" in r]
    if paired:
        lines += ["", f"Native and torch vmap timed in turn, three rounds (PyTorch in IEEE float32: TF32 "
                  f"{'on' if env.get('torch_tf32_cudnn') or env.get('torch_tf32_matmul') else 'off'}, cuDNN "
                  f"autotuner {'on' if env.get('cudnn_benchmark') else 'off'}); medians and 10th-90th "
                  "percentiles in ms, and how far vmap's outputs are from native's:", ""] + [
            f"- {r['network']}, J = {r['J']}, B = {r['B']}: native {_spread_text(r['spread']['native'])}, vmap "
            f"{_spread_text(r['spread']['torch_vmap'])}; speed-up {r['speedup_over_vmap_median']:.2f} from the "
            f"medians; max relative difference {_difference_text(r.get('vmap_max_relative_difference'))}"
            for r in paired]
    differs = [r for r in results["rows"] if abs(r.get("whole_over_layered", 1) - 1) > 0.05]
    if differs:
        lines += ["", "Native with every network layer by layer (Context.whole_networks off), where that differs "
                  "by more than 5%:", ""] + [
            f"- {r['network']}, J = {r['J']}, B = {r['B']}: {1e3 * r['layered_s']:.3g} ms layer by layer, "
            f"{1e3 * r['native_s']:.3g} ms whole ({r['whole_over_layered']:.1f}x)" for r in differs]
    written_out = sorted({r["network"] for r in results["rows"] if "torch_vmap_recipe" in r})
    if written_out:
        lines += ["", f"vmap on {', '.join(written_out)}: the steps written out in torch operations "
                  "(PyTorch's recurrent modules cannot be vmapped)."]
    failures = {r["network"]: r["torch_vmap_error"] for r in results["rows"] if "torch_vmap_error" in r}
    lines += ["", *(f"torch vmap failed on {name}: {error}" for name, error in failures.items())] if failures else []
    return "\n".join(lines) + "\n"


def _spread_text(times):
    return f"{1e3 * times['median']:.3g} ({1e3 * times['p10']:.3g}-{1e3 * times['p90']:.3g})"


def _difference_text(value):
    return f"{value:.1e}" if isinstance(value, float) else str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="J = 100, B = 64 only")
    parser.add_argument("--budget", type=float, default=60.0, help="skip reference runs predicted longer (s)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--networks", nargs="+", choices=("online", *NETWORKS), default=("online", *NETWORKS),
                        metavar="NAME", help=f"some of: online, {', '.join(NETWORKS)} (default: all)")
    parser.add_argument("--label", help="appended to the results' file name")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    if args.label is not None and not args.label.replace("-", "").replace("_", "").isalnum():
        parser.error(f"--label {args.label!r}: use letters, digits, '-' and '_' only (it is part of a file name)")

    run = bench_cpu if args.device == "cpu" else bench_cuda
    # The targets' sizes first (J = 2000, the online step), so that a run stopped at a time limit has them.
    grid = [(100, 64)] if args.quick else [(J, B) for J in sorted(GRID_J, reverse=True) for B in GRID_B]
    if args.device == "cuda":
        prepare_gpu_comparison()
    results = {"environment": environment(args.device), "rows": []}
    stem = "-".join(["forward", args.device, *(["quick"] if args.quick else []), args.dtype,
                     *([args.label] if args.label else [])])

    def record(row):
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        save_results(results, args.out, stem, markdown, echo=False)

    for J in () if "online" not in args.networks else (100,) if args.quick else (2000, 100):
        record(bench_online_step(args.device, J, args.dtype))
    for name, make in NETWORKS.items():
        if name not in args.networks:
            continue
        network = make()
        for J, B in grid:
            record(run(name, network, J, B, args.dtype, args.budget))
    save_results(results, args.out, stem, markdown)


if __name__ == "__main__":
    main()
