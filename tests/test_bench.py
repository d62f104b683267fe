"""The CPU benchmarks run end to end on tiny sizes and write consistent results (JSON rows, ratios, the markdown
table). Their numbers are not checked: speed belongs to the benchmarks themselves, not to tests."""

import importlib.util
import json
import os

import numpy as np
import pytest

from ekinet import nn

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def load(name, monkeypatch):
    """bench/NAME.py as a module (its `from timing import ...` needs bench/ on sys.path), timing each call once."""
    monkeypatch.syspath_prepend(BENCH)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    timed = module.timed
    monkeypatch.setattr(module, "timed", lambda function, *args, **kwargs: timed(
        function, *args[:1], **{**kwargs, "repeats": 1, "min_total": 0}))
    return module


def results(out, stem):
    with open(os.path.join(out, stem + ".json")) as f:
        data = json.load(f)
    with open(os.path.join(out, stem + ".md")) as f:
        table = [line for line in f if line.startswith("| ") and not line.startswith("| network")
                 and not line.startswith("| J ")]
    return data, table


def test_forward_benchmark(monkeypatch, tmp_path):
    forward = load("forward", monkeypatch)
    monkeypatch.setattr(forward, "NETWORKS", {
        "mlp": lambda: nn.from_string("mlp:6-4-2"),
        "cnn": lambda: nn.Sequential([nn.Conv2d(2, 3, activation="relu"), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Dense(2)], (1, 8, 8)),
        "lstm": lambda: nn.Sequential([nn.LSTM(3), nn.Dense(1)], (5, 1)),
    })
    monkeypatch.setattr(forward, "GRID_J", (3, 7))
    monkeypatch.setattr(forward, "GRID_B", (2,))
    monkeypatch.setattr(forward, "REFERENCE_MEMORY_BYTES", 3 * 2 * 300 * 4)  # the CNN's reference in chunks
    forward.main(["--out", str(tmp_path)])
    data, table = results(tmp_path, "forward-cpu-float32")
    rows = data["rows"]
    assert [(r["network"], r["J"]) for r in rows] == [("online LSTM(32) step", 2000), ("online LSTM(32) step", 100)] + [
        (name, J) for name in ("mlp", "cnn", "lstm") for J in (7, 3)]  # the targets' sizes first
    assert len(table) == len(rows)
    for row in rows:
        assert row["native_s"] > 0 and row["reference_s"] > 0
        assert row["native_speedup"] == pytest.approx(row["reference_s"] / row["native_s"])
        assert row["native_member_examples_per_s"] == pytest.approx(row["J"] * row["B"] / row["native_s"])
    online = [row for row in rows if row["network"].startswith("online")]
    assert all(0 < row["core_call_s"] for row in online)
    with open(tmp_path / "forward-cpu-float32.md") as f:
        assert f.read().count("the core's call alone") == len(online)
    chunked = {(r["network"], r["J"]): r.get("reference_members_per_call") for r in rows}
    assert chunked[("mlp", 7)] is None and 1 <= chunked[("cnn", 7)] < 7
    assert sum("members a call" in line for line in table) == sum(v is not None for v in chunked.values())
    assert data["environment"]["device"] == "cpu" and data["environment"]["cores"] >= 1


def test_forward_benchmark_runs_the_networks_asked_for_into_a_labelled_file(monkeypatch, tmp_path):
    forward = load("forward", monkeypatch)
    monkeypatch.setattr(forward, "NETWORKS", {"mlp": lambda: nn.from_string("mlp:6-4-2"),
                                              "lstm": lambda: nn.Sequential([nn.LSTM(3), nn.Dense(1)], (5, 1))})
    monkeypatch.setattr(forward, "GRID_J", (3,))
    monkeypatch.setattr(forward, "GRID_B", (2,))
    forward.main(["--networks", "lstm", "--label", "amd-avx2", "--out", str(tmp_path)])
    data, table = results(tmp_path, "forward-cpu-float32-amd-avx2")
    assert [(r["network"], r["J"]) for r in data["rows"]] == [("lstm", 3)] and len(table) == 1
    assert not (tmp_path / "forward-cpu-float32.json").exists()
    for bad in (["--networks", "rnn"], ["--label", "../x"]):
        with pytest.raises(SystemExit):
            forward.main([*bad, "--out", str(tmp_path)])


def test_forward_markdown_reports_the_layered_path_where_it_differs(monkeypatch):
    """A GPU table lists the rows whose layer-by-layer time (whole_networks off) differs by more than 5%."""
    forward = load("forward", monkeypatch)
    environment = dict(forward.environment("cpu"), device="cuda", gpu="a GPU")
    cnn = {"network": "cnn-mnist", "J": 2000, "B": 256, "P": 6150, "dtype": "float32", "native_s": 0.05,
           "native_member_examples_per_s": 1.0e7, "torch_vmap_s": 0.125, "speedup_over_vmap": 2.5,
           "torch_loop_s": 0.4, "speedup_over_loop": 8.0, "layered_s": 0.25, "whole_over_layered": 5.0}
    mlp = dict(cnn, network="mlp 784-100-10", layered_s=0.0501, whole_over_layered=1.002)
    text = forward.markdown({"environment": environment, "rows": [cnn, mlp]})
    assert "- cnn-mnist, J = 2000, B = 256: 250 ms layer by layer, 50 ms whole (5.0x)" in text
    assert "- mlp" not in text and "timed in turn" not in text
    spread = {"native": {"best": 0.05, "median": 0.052, "p10": 0.0505, "p90": 0.06, "runs": 30},
              "torch_vmap": {"best": 0.125, "median": 0.13, "p10": 0.126, "p90": 0.14, "runs": 12}}
    paired = dict(cnn, spread=spread, speedup_over_vmap_median=2.5, vmap_max_relative_difference=3e-7)
    environment.update(torch_tf32_cudnn=False, torch_tf32_matmul=False, cudnn_benchmark=True)
    text = forward.markdown({"environment": environment, "rows": [paired]})
    assert "TF32 off, cuDNN autotuner on" in text
    assert ("- cnn-mnist, J = 2000, B = 256: native 52 (50.5-60), vmap 130 (126-140); speed-up 2.50 from the "
            "medians; max relative difference 3.0e-07") in text


def test_python_overhead_benchmark(monkeypatch, tmp_path):
    """Both routes to a view give a working forward call, the results are written, and the benchmark puts
    ekinet's own route back."""
    from ekinet import _native

    monkeypatch.syspath_prepend(BENCH)
    spec = importlib.util.spec_from_file_location("bench_python_overhead", os.path.join(BENCH, "python_overhead.py"))
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    micros = overhead.main(["--calls", "20", "--out", str(tmp_path)])
    assert set(micros) == {"C++ views", "Python views"} and all(v > 0 for v in micros.values())
    assert nn.view is _native.view
    data, table = results(tmp_path, "python-overhead-cpu")
    assert data["rows"] == pytest.approx(micros) and len(table) == 3  # the header and a row per route


def test_forward_reference_chunks_fit_the_memory_limit(monkeypatch):
    """The chunk keeps the reference's activations (outputs, patches) of one call under the limit."""
    forward = load("forward", monkeypatch)
    cnn = nn.from_string("cnn-mnist")
    assert forward.reference_members_per_call(nn.from_string("mlp:784-100-10"), 2000, 256, "float32") == 2000
    chunk = forward.reference_members_per_call(cnn, 2000, 256, "float32")
    assert 10 < chunk < 100
    first_layer_outputs = 256 * int(np.prod(cnn.shapes[1])) * 4
    assert chunk * first_layer_outputs < forward.REFERENCE_MEMORY_BYTES
    assert forward.reference_members_per_call(cnn, 2000, 256, "float64") < chunk
    # An LSTM's reference holds the pre-activations of all 50 steps: 13 GB for 2000 members at B = 256.
    lstm = nn.Sequential([nn.LSTM(32), nn.Dense(1)], input_shape=(50, 1))
    chunk = forward.reference_members_per_call(lstm, 2000, 256, "float32")
    pre_activations = 256 * 50 * 4 * 32 * 4  # bytes per member
    assert 100 < chunk < 2000 and 2 * chunk * pre_activations < forward.REFERENCE_MEMORY_BYTES


def test_update_benchmark(monkeypatch, tmp_path):
    update = load("update", monkeypatch)
    monkeypatch.setattr(update, "GRID_J", (6,))
    monkeypatch.setattr(update, "GRID_P", (40,))
    monkeypatch.setattr(update, "GRID_M", (5, 60))
    update.main(["--out", str(tmp_path), "--repeats", "1"])
    data, table = results(tmp_path, "update-cpu-float32")
    assert [(r["J"], r["P"], r["M"]) for r in data["rows"]] == [(6, 40, 5), (6, 40, 60)]
    assert len(table) == 2
    for row in data["rows"]:
        native = min(row["native_ensemble_s"], row["native_observation_s"])
        numpy_best = min(row["numpy_folded_ensemble_s"], row["numpy_gain_observation_s"])
        assert row["numpy_best_over_native_best"] == pytest.approx(numpy_best / native)
        assert row["auto_choice"] in ("ensemble", "observation") and row["reference_s"] > 0
    # --render rebuilds the table from the JSON alone
    os.remove(tmp_path / "update-cpu-float32.md")
    update.main(["--render", str(tmp_path / "update-cpu-float32.json")])
    assert results(tmp_path, "update-cpu-float32")[1] == table


def test_randomize_benchmark(monkeypatch, tmp_path):
    randomize = load("randomize", monkeypatch)
    monkeypatch.setattr(randomize, "CASES", ((4, "mlp:6-3-2"), (9, "mlp:6-3-2")))
    monkeypatch.setattr(randomize, "OUTPUTS", 7)
    randomize.main(["--out", str(tmp_path)])
    data, table = results(tmp_path, "randomize-cpu-float32")
    assert [(r["J"], r["P"]) for r in data["rows"]] == [(4, 29), (9, 29)]
    assert len(table) == 2
    for row in data["rows"]:
        assert row["draws_per_s"] == pytest.approx(row["J"] * row["P"] / row["native_randomize_s"])
        assert min(row[k] for k in row if k.endswith("_s")) > 0


def test_train_step_benchmark(monkeypatch, tmp_path):
    from ekinet import datasets

    train_step = load("train_step", monkeypatch)
    monkeypatch.setattr(train_step, "CASES", ((6, "mlp:784-8-10"), (5, "mlp:784-6-120-10")))
    monkeypatch.setattr(train_step.datasets, "load_mnist", lambda split: datasets.load_mnist_small(split))
    train_step.main(["--out", str(tmp_path)])
    data, table = results(tmp_path, "train-step-cpu-float32")
    rows = data["rows"]
    assert [(r["J"], r["model"]) for r in rows] == [(6, "mlp:784-8-10"), (5, "mlp:784-6-120-10")]
    assert len(table) == len(rows)
    assert [(r["parameters"], r["span_parameters"]) for r in rows] == [(6370, 8 * 100 + 8 + 90),
                                                                      (6760, 6 * 100 + 6 + 840 + 1210)]
    assert rows[0]["hidden_parameters"] == rows[0]["span_parameters"]  # the readout reads 8 features: full
    # the readout of 784-6-120-10 reads 120 features of 100 examples: its weights in their span, of rank <= 100
    readout_weights = rows[1]["hidden_parameters"] - (6 * 100 + 6 + 840 + 10)
    assert readout_weights % 10 == 0 and 90 < readout_weights // 10 <= 100
    for row in rows:
        assert min(row["full_update_s"], row["span_update_s"], row["hidden_update_s"]) > 0
        assert row["speedup"] == pytest.approx(row["full_update_s"] / row["span_update_s"])
        assert row["hidden_speedup"] == pytest.approx(row["full_update_s"] / row["hidden_update_s"])


@pytest.mark.parametrize("layers,shape", [
    ([nn.LSTM(4), nn.Dense(2)], (5, 3)),
    ([nn.RNN(4, return_sequences=True), nn.LSTM(3), nn.Dense(2, "tanh")], (6, 2)),
    ([nn.RNN(5), nn.Dense(3, "relu"), nn.Dense(1)], (4, 1)),
])
def test_torch_member_forward_vmapped_equals_the_network(layers, shape, monkeypatch):
    """The GPU benchmark's vmap recipe for recurrent networks (their steps written out in torch operations, as
    vmap cannot batch nn.RNN/nn.LSTM), vmapped over the members on the CPU, gives the network's outputs."""
    torch = pytest.importorskip("torch")
    forward = load("forward", monkeypatch)
    network = nn.Sequential(layers, shape)
    U = network.prior(6, rng=0, dtype="float64")
    X = np.random.default_rng(1).standard_normal((3, *shape))
    vmapped = torch.vmap(forward.torch_member_forward(network), in_dims=(0, None))
    got = vmapped(forward.member_weights(network, torch.from_numpy(U)), torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, network.forward(U, X), rtol=1e-10, atol=1e-12)


def test_torch_member_forward_names_layers_it_does_not_write_out(monkeypatch):
    pytest.importorskip("torch")
    forward = load("forward", monkeypatch)
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\) is not written out"):
        forward.torch_member_forward(nn.from_string("cnn-mnist"))({}, None)
