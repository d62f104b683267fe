"""The experiment registry at its smoke size (every registered experiment runs end to end on the real data),
the report, and the `ekinet train / experiment / report` command line with its errors."""

import json
import re
import sys

import pytest

from conftest import real_data_dir
from ekinet import cli, experiments

REQUIRED = ["quickstart", "mnist-dnn1", "mnist-dnn2", "mnist-dnn3", "mnist-dnn4", "cnn-mnist", "rnn-mnist",
            "ensemble-scaling-mnist", "ensemble-scaling-fashion-mnist", "fashion-heaviside", "melbourne-rnn",
            "sunspots-rnn", "lstm-batched-online", "boston", "gaussian-nll"]


@pytest.fixture(autouse=True)
def data_env(monkeypatch):
    monkeypatch.setenv("EKINET_DATA", str(real_data_dir()))


def test_the_registry_holds_the_papers_experiments():
    assert set(REQUIRED) <= set(experiments.EXPERIMENTS)
    dnn2 = experiments.get("mnist-dnn2")
    assert dnn2.paper.ensemble == 2000 and dnn2.paper_numbers["eki-r"] == (0.9721, 0.9695)
    with pytest.raises(ValueError, match="unknown experiment 'mnist-dnn9'; known: quickstart"):
        experiments.get("mnist-dnn9")


@pytest.mark.parametrize("name", REQUIRED)
def test_every_experiment_runs_at_smoke_size(name, tmp_path):
    methods = ["eki-r", "sgd"] if name.startswith("mnist-dnn") else None
    result = experiments.run(name, size="smoke", out=tmp_path, progress=False, methods=methods)
    assert result["size"] == "smoke" and result["rows"]
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["experiment"] == name and saved["settings"]["ensemble"] == result["settings"]["ensemble"]
    for row in result["rows"]:
        if "accuracy_mean" in row:
            assert 0.0 <= row["accuracy_mean"] <= 1.0
        elif "test_accuracy" in row:  # a gradient baseline: one network
            assert 0.0 <= row["test_accuracy"] <= 1.0
        elif "first" in row:
            assert row["first"] > 0 and row["final"] > 0
        else:
            assert row["rmse_mean"] > 0
    assert name in experiments.report(tmp_path)


def test_quickstart_smoke_learns(tmp_path):
    row = experiments.run("quickstart", size="smoke", out=None, progress=False)["rows"][0]
    assert row["accuracy_mean"] > 0.5  # 40 members, 2 epochs of 2000 digits (0.66 measured); chance is 0.1
    assert row["accuracy_average"] > 0.5


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `ekinet experiment NAME` first"):
        experiments.report(tmp_path / "nothing")
    (tmp_path / "boston.json").write_text('{"rows": [\n')
    with pytest.raises(ValueError, match=r"boston.json is not a results file .*JSONDecodeError"):
        experiments.report(tmp_path)
    (tmp_path / "boston.json").write_text('{"rows": [{"method": "eki-r"}]}')
    with pytest.raises(ValueError, match=r"boston.json is not a results file .*KeyError"):
        experiments.report(tmp_path)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown method.*adam"):
        experiments.run("mnist-dnn1", size="smoke", methods=["adam"], out=None, progress=False)


def test_methods_of_an_experiment_that_always_runs_the_same_ones_are_refused():
    with pytest.raises(ValueError, match="fashion-heaviside always runs eki-r, so --methods sgd cannot apply; "
                                         "methods are chosen in quickstart, mnist-dnn1"):
        experiments.run("fashion-heaviside", size="smoke", methods=["sgd"], out=None, progress=False)
    with pytest.raises(ValueError, match="melbourne-rnn always runs eki, ogd"):
        experiments.run("melbourne-rnn", size="smoke", methods=["eki"], out=None, progress=False)


def test_online_experiments_on_cuda_without_cupy_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError, with or without a GPU
    with pytest.raises(ImportError, match=r"device='cuda' needs CuPy: pip install 'ekinet\[cuda\]'"):
        experiments.run("sunspots-rnn", size="smoke", device="cuda", out=None, progress=False)


def test_step_override_reaches_the_trainer_and_the_online_driver(tmp_path):
    default = experiments.run("quickstart", size="smoke", out=None, progress=False)
    stepped = experiments.run("quickstart", size="smoke", step=7.5, out=tmp_path, progress=False)
    assert default["rows"][0]["step"] == 3.0 and stepped["rows"][0]["step"] == 7.5
    assert json.loads((tmp_path / "quickstart.json").read_text())["settings"]["step"] == 7.5
    assert stepped["rows"][0]["history"][-1]["train_loss"] != default["rows"][0]["history"][-1]["train_loss"]
    decayed = experiments.run("quickstart", size="smoke", step=7.5, step_decay=0.5, out=None, progress=False)
    assert decayed["rows"][0]["step_decay"] == 0.5 and default["rows"][0]["step_decay"] == 1.0
    assert decayed["rows"][0]["history"][-1]["train_loss"] != stepped["rows"][0]["history"][-1]["train_loss"]
    with pytest.raises(ValueError, match="step_decay does not apply to sunspots-rnn, an online experiment .*: it "
                                         "takes ensemble, passes, step"):
        experiments.run("sunspots-rnn", size="smoke", step_decay=0.5, out=None, progress=False)
    for ignored in ({"epochs": 2}, {"train_size": 10}, {"checkpoints": tmp_path / "never"}):
        with pytest.raises(ValueError, match=f"{next(iter(ignored))} does not apply to melbourne-rnn"):
            experiments.run("melbourne-rnn", size="smoke", out=None, progress=False, **ignored)
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="passes does not apply to quickstart, a training experiment"):
        experiments.run("quickstart", size="smoke", passes=2, out=None, progress=False)
    online = [experiments.run("sunspots-rnn", size="smoke", step=h, out=None, progress=False)["rows"][0]
              for h in (1.0, 0.25)]
    assert online[0]["final"] != online[1]["final"]
    twice = experiments.run("sunspots-rnn", size="smoke", passes=2, out=None, progress=False)["rows"]
    assert [row["passes"] for row in twice if "passes" in row][0] == 2


def test_boston_takes_train_size():
    rows = [experiments.run("boston", size="smoke", train_size=n, out=None, progress=False)["rows"][0]
            for n in (60, None)]
    assert rows[0]["history"][-1]["train_loss"] != rows[1]["history"][-1]["train_loss"]


def test_centred_draws_reach_the_eki_r_runs_and_name_their_checkpoints(tmp_path):
    plain = experiments.run("quickstart", size="smoke", out=None, progress=False)["rows"][0]
    centred = experiments.run("quickstart", size="smoke", centred_draws=True, out=None, progress=False,
                              checkpoints=tmp_path)["rows"][0]
    assert plain["randomization"]["centred"] is False and centred["randomization"]["centred"] is True
    assert centred["history"][-1]["train_loss"] != plain["history"][-1]["train_loss"]
    assert [f.name for f in tmp_path.glob("*.npz")] == ["quickstart-eki-r-mlp_784-100-10-J40-centred=1.npz"]
    with pytest.raises(ValueError, match="centred_draws applies to the EKI.R. methods .* runs eki, sgd"):
        experiments.run("mnist-dnn1", size="smoke", centred_draws=True, methods=["eki", "sgd"], out=None,
                        progress=False)
    with pytest.raises(ValueError, match="centred_draws does not apply to sunspots-rnn, an online experiment"):
        experiments.run("sunspots-rnn", size="smoke", centred_draws=True, out=None, progress=False)


def test_input_span_reaches_the_eki_r_runs_only():
    spanned = experiments.run("mnist-dnn1", size="smoke", input_span=True, methods=["eki-r", "meki-r", "eki"],
                              out=None, progress=False)["rows"]
    assert [(r["method"], (r["randomization"] or {}).get("input_span")) for r in spanned] == [
        ("eki-r", True), ("meki-r", True), ("eki", None)]
    assert spanned[0]["accuracy_mean"] > 0.3
    with pytest.raises(ValueError, match=r"input_span applies to the EKI\(R\) methods .* mnist-dnn1 runs meki, eki"):
        experiments.run("mnist-dnn1", size="smoke", input_span=True, methods=["meki", "eki"], out=None,
                        progress=False)


def test_hidden_span_reaches_the_eki_r_runs_and_needs_the_input_span():
    rows = experiments.run("mnist-dnn2", size="smoke", input_span=True, hidden_span=True, methods=["eki-r", "eki"],
                           out=None, progress=False)["rows"]
    assert [(r["method"], (r["randomization"] or {}).get("hidden_span")) for r in rows] == [
        ("eki-r", True), ("eki", None)]
    with pytest.raises(ValueError, match="hidden_span extends input_span .* set input_span too"):
        experiments.run("mnist-dnn2", size="smoke", hidden_span=True, methods=["eki-r"], out=None, progress=False)


def test_momentum_coefficient_reaches_the_momentum_runs_and_names_their_checkpoints(tmp_path):
    rows = experiments.run("mnist-dnn1", size="smoke", momentum_coefficient=0.5, methods=["eki-r", "meki-r"],
                           out=None, progress=False, checkpoints=tmp_path)["rows"]
    assert [(r["method"], r["momentum_coefficient"]) for r in rows] == [("eki-r", None), ("meki-r", 0.5)]
    assert sorted(f.name for f in tmp_path.glob("*.npz")) == ["mnist-dnn1-eki-r-mlp_784-10-J20.npz",
                                                              "mnist-dnn1-meki-r-mlp_784-10-J20-momentum=0.5.npz"]
    with pytest.raises(ValueError, match="momentum_coefficient applies to the momentum methods .* runs eki-r"):
        experiments.run("mnist-dnn1", size="smoke", momentum_coefficient=0.5, methods=["eki-r"], out=None,
                        progress=False)


def test_kalman_update_reaches_the_eki_runs_names_their_checkpoints_and_the_report(tmp_path):
    """update="kalman" (with its noise gamma) trains the EKI rows by the Kalman update instead of the general-loss
    scheme: the row says so, the checkpoint name keeps it apart from a loss-scheme run, the report labels it."""
    loss = experiments.run("quickstart", size="smoke", out=None, progress=False)["rows"][0]
    kalman = experiments.run("quickstart", size="smoke", update="kalman", noise=0.01, out=tmp_path, progress=False,
                             checkpoints=tmp_path)["rows"][0]
    assert (loss["update"], "noise" in loss) == ("loss", False)
    assert (kalman["update"], kalman["noise"]) == ("kalman", 0.01)
    assert kalman["history"][-1]["train_loss"] != loss["history"][-1]["train_loss"]
    assert kalman["accuracy_mean"] > 0.3  # it learns: 10 classes, chance is 0.1
    assert [f.name for f in tmp_path.glob("*.npz")] == [
        "quickstart-eki-r-mlp_784-100-10-J40-noise=0.01-update=kalman.npz"]
    assert "| quickstart | smoke: update=kalman, noise=0.01 | eki-r (kalman) | mlp:784-100-10 | 40 |" in \
        experiments.report(tmp_path)
    with pytest.raises(ValueError, match="noise = 0.01 is the Kalman update's gamma: pass update='kalman'"):
        experiments.run("quickstart", size="smoke", noise=0.01, out=None, progress=False)
    with pytest.raises(ValueError, match="update = 'newton' must be 'loss' .* or 'kalman'"):
        experiments.run("quickstart", size="smoke", update="newton", out=None, progress=False)
    with pytest.raises(ValueError, match="update applies to the EKI methods .* mnist-dnn1 runs sgd"):
        experiments.run("mnist-dnn1", size="smoke", update="kalman", methods=["sgd"], out=None, progress=False)
    with pytest.raises(ValueError, match="boston always runs with update='loss'; leave update='kalman' out"):
        experiments.run("boston", size="smoke", update="kalman", out=None, progress=False)
    with pytest.raises(ValueError, match="update does not apply to sunspots-rnn, an online experiment"):
        experiments.run("sunspots-rnn", size="smoke", update="kalman", out=None, progress=False)


def test_experiment_checkpoints_resume_an_interrupted_run_exactly(tmp_path):
    whole = experiments.run("quickstart", size="smoke", out=None, progress=False)["rows"][0]
    first = experiments.run("quickstart", size="smoke", epochs=1, out=None, progress=False,
                            checkpoints=tmp_path)["rows"][0]  # stopped after one of the two epochs
    files = list(tmp_path.glob("*.npz"))
    assert [f.name for f in files] == ["quickstart-eki-r-mlp_784-100-10-J40.npz"] and first["resumed_at_epoch"] == 0
    rest = experiments.run("quickstart", size="smoke", out=None, progress=False, checkpoints=tmp_path)["rows"][0]
    assert rest["resumed_at_epoch"] == 1 and rest["checkpoint"] == str(files[0])
    assert [h["test_accuracy_mean"] for h in rest["history"]] == [h["test_accuracy_mean"] for h in whole["history"]]
    assert rest["history"][-1]["train_loss"] == whole["history"][-1]["train_loss"]
    again = experiments.run("quickstart", size="smoke", out=None, progress=False, checkpoints=tmp_path)["rows"][0]
    assert again["resumed_at_epoch"] == 2 and again["accuracy_mean"] == whole["accuracy_mean"]
    other = experiments.run("quickstart", size="smoke", step=7.5, step_decay=0.5, seed=3, epochs=1, out=None,
                            progress=False, checkpoints=tmp_path)["rows"][0]
    assert other["resumed_at_epoch"] == 0
    name = "quickstart-eki-r-mlp_784-100-10-J40-seed=3-step=7.5-step_decay=0.5.npz"
    assert other["checkpoint"] == str(tmp_path / name)


def test_cli_experiment_checkpoints(tmp_path, capsys):
    arguments = ["experiment", "quickstart", "--smoke", "--out", str(tmp_path / "out"), "--no-progress",
                 "--checkpoints", str(tmp_path / "ckpt")]
    assert cli.main(arguments) == 0
    result = json.loads((tmp_path / "out" / "quickstart.json").read_text())
    assert result["rows"][0]["checkpoint"].startswith(str(tmp_path / "ckpt"))
    assert len(list((tmp_path / "ckpt").glob("*.npz"))) == 1
    assert cli.main(arguments + ["--centred-draws", "--input-span", "--epochs", "1"]) == 0
    result = json.loads((tmp_path / "out" / "quickstart.json").read_text())
    assert result["settings"]["centred_draws"] is True and result["rows"][0]["randomization"]["centred"] is True
    assert result["settings"]["input_span"] is True and result["rows"][0]["randomization"]["input_span"] is True
    assert cli.main(arguments + ["--update", "kalman", "--noise", "0.02", "--epochs", "1"]) == 0
    result = json.loads((tmp_path / "out" / "quickstart.json").read_text())
    assert (result["settings"]["update"], result["settings"]["noise"]) == ("kalman", 0.02)
    assert (result["rows"][0]["update"], result["rows"][0]["noise"]) == ("kalman", 0.02)


def test_cli_train_writes_history_checkpoint_and_resumes(tmp_path, capsys):
    arguments = ["train", "--data", "mnist-small", "--model", "mlp:784-16-10", "--train-size", "600",
                 "--ensemble", "20", "--no-progress", "--history", str(tmp_path / "h.csv"),
                 "--checkpoint", str(tmp_path / "c.npz")]
    assert cli.main(arguments + ["--epochs", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 1
    assert cli.main(arguments + ["--epochs", "2", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2
    assert (tmp_path / "h.csv").read_text().count("\n") == 3  # header and two epochs


def test_cli_train_passes_every_option_to_the_trainer(tmp_path, capsys, monkeypatch):
    from ekinet import train

    seen = {}

    class Recording(train.Trainer):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train, "Trainer", Recording)
    arguments = ["train", "--model", "mlp:784-8-10", "--train-size", "300", "--ensemble", "6", "--epochs", "2",
                 "--no-progress", "--update", "kalman", "--loss", "squared", "--tikhonov", "0.5", "--bias-std", "0.2",
                 "--ensemble-eval", "epoch", "--randomize-every", "epoch", "--randomization-scale", "0.2",
                 "--randomization-decay", "0.5", "--centred-draws", "--dtype", "float64", "--step", "2",
                 "--step-decay", "0.5", "--noise", "0.3", "--batch-size", "50", "--validation", "0.2", "--patience",
                 "3", "--seed", "4", "--plot", str(tmp_path / "curves.png"), "--method", "meki-r",
                 "--momentum-restart", "epoch", "--momentum-coefficient", "0.6"]
    assert cli.main(arguments) == 2  # a squared loss on labels
    assert "does not fit a classification task" in capsys.readouterr().err
    arguments[arguments.index("squared")] = "cross-entropy"
    import matplotlib.pyplot as plt

    figures = plt.get_fignums()
    assert cli.main(arguments) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2
    schedule = seen.pop("randomization")
    assert (schedule.when, schedule.scale, schedule.decay, schedule.centred) == ("epoch", 0.2, 0.5, True)
    assert {k: seen[k] for k in ("update", "loss", "tikhonov", "bias_std", "ensemble_eval", "dtype", "step",
                                 "step_decay", "noise", "batch_size", "patience", "rng", "ensemble", "epochs",
                                 "method", "momentum_restart", "momentum_coefficient")} == {
        "update": "kalman", "loss": "cross-entropy", "tikhonov": 0.5, "bias_std": 0.2, "ensemble_eval": "epoch",
        "dtype": "float64", "step": 2.0, "step_decay": 0.5, "noise": 0.3, "batch_size": 50, "patience": 3,
        "rng": 4, "ensemble": 6, "epochs": 2, "method": "meki-r", "momentum_restart": "epoch",
        "momentum_coefficient": 0.6}
    assert len(seen["validation"]) == 60 and (tmp_path / "curves.png").stat().st_size > 0
    assert plt.get_fignums() == figures  # the figure was closed after saving


def test_gradient_baselines_keep_the_learning_rate_best_on_validation():
    result = experiments.run("mnist-dnn1", size="smoke", methods=["sgd", "momentum-sgd"], out=None, progress=False)
    for row in result["rows"]:
        by_lr = row["validation_accuracy_by_lr"]
        assert list(by_lr) == [str(lr) for lr in experiments.LEARNING_RATES[row["method"]]]
        assert by_lr[str(row["lr"])] == max(by_lr.values())
        assert row["history"][-1]["validation_accuracy"] == by_lr[str(row["lr"])]
        assert row["test_accuracy"] == row["history"][-1]["test_accuracy"]
        assert f"| {row['test_accuracy']:.4f} (lr {row['lr']:g}) |" in experiments._report_line("mnist-dnn1", result,
                                                                                                  row)


def test_learning_curves_draw_ekis_and_the_gradient_baselines():
    plt = pytest.importorskip("matplotlib.pyplot")
    eki = {"method": "eki-r", "model": "mlp:784-10", "ensemble": 8,
           "history": [{"epoch": e, "train_loss": 1.0 / e, "test_accuracy_mean": 0.5 + e / 10} for e in (1, 2)]}
    sgd = {"method": "sgd", "model": "mlp:784-10", "history": [{"epoch": e, "test_accuracy": 0.6 + e / 10}
                                                                for e in (1, 2, 3)]}
    figure, ax = plt.subplots()
    experiments._learning_curves([eki, sgd], "both")(ax)
    labels = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    plt.close(figure)
    assert labels == {"eki-r (mlp:784-10, J=8)": pytest.approx([0.6, 0.7]),
                      "sgd (mlp:784-10, one network)": pytest.approx([0.7, 0.8, 0.9])}


def test_cli_experiment_and_report(tmp_path, capsys):
    assert cli.main(["experiment", "--list"]) == 0
    assert "mnist-dnn2" in capsys.readouterr().out
    assert cli.main(["experiment", "quickstart", "--smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| quickstart | smoke | eki-r |" in printed
    assert re.search(r"\| 0\.\d{4} / 0\.\d{4} \(epoch-averaged mean 0\.\d{4}, ensemble 0\.\d{4}\) \|", printed)
    assert (tmp_path / "quickstart.png").stat().st_size > 0
    assert cli.main(["report", "--out", str(tmp_path)]) == 0
    assert "quickstart" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["experiment", "nope"], "unknown experiment 'nope'"),
    (["train", "--model", "mlp:100-10", "--ensemble", "4", "--epochs", "1", "--no-progress"], "784 features"),
    (["train", "--validation", "0", "--patience", "2", "--ensemble", "4", "--no-progress"], "patience"),
    (["report", "--out", "/nonexistent/results"], "no results directory"),
    (["train", "--data", "mnist-small", "--input-span", "--randomize-every", "epoch", "--ensemble", "4",
      "--no-progress"], "input_span draws every update's members"),
    (["train", "--data", "mnist-small", "--method", "eki", "--input-span", "--hidden-span", "--no-progress"],
     "--input-span, --hidden-span shape the redraws of EKI(R): use --method eki-r or meki-r, not eki"),
    (["train", "--method", "eki", "--randomization-scale", "0.1", "--randomize-every", "epoch", "--no-progress"],
     "--randomization-scale, --randomize-every shape the redraws of EKI(R)"),
    (["train", "--noise", "0.5", "--no-progress"], "--noise is the Kalman update's gamma: add --update kalman"),
    (["train", "--resume", "--no-progress"], "--resume continues from --checkpoint FILE"),
    (["train", "--data-dir", "/", "--no-progress"], "mnist-small is embedded in the package"),
    (["experiment", "melbourne-rnn", "--epochs", "2", "--no-progress"], "epochs does not apply to melbourne-rnn"),
    (["experiment", "--ensemble", "5", "--seed", "3"], "--ensemble, --seed need an experiment name"),
    (["experiment", "quickstart", "--data-dir", "/"], "data_dir does not apply to quickstart: it trains on the "
                                                      "digits embedded in the package"),
    (["experiment", "mnist-dnn2", "--methods", "sgd", "--step", "3"],
     "step applies to the EKI methods (eki, meki, eki-r, meki-r), and mnist-dnn2 runs sgd"),
    (["experiment", "mnist-dnn2", "--methods", "momentum-sgd", "--checkpoints", "/tmp"],
     "checkpoints applies to the EKI methods"),
    (["experiment", "mnist-dnn2", "--methods", "sgd,eki,sgd"], "methods name sgd more than once"),
    (["experiment", "cnn-mnist", "--momentum-coefficient", "0.5"],
     "momentum_coefficient applies to the momentum methods (meki, meki-r), and cnn-mnist runs eki-r, sgd, "
     "momentum-sgd"),
    (["experiment", "mnist-dnn3", "--momentum-restart", "epoch"], "momentum_restart applies to the momentum"),
])
def test_cli_errors_are_clear(arguments, message, capsys):
    assert cli.main(arguments) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("arguments", [["train", "--ensemble", "0"], ["train", "--step", "-1"],
                                       ["train", "--method", "adam"], ["experiment", "x", "--size", "huge"],
                                       ["experiment", "quickstart", "--step", "0"],
                                       ["experiment", "quickstart", "--noise", "-1"],
                                       ["experiment", "quickstart", "--update", "newton"],
                                       ["train", "--step-decay", "-0.5"], ["train", "--data", "cifar"],
                                       ["train", "--data", "boston"], ["train", "--validation", "-0.5"],
                                       ["train", "--validation", "1"],
                                       ["experiment", "quickstart", "--smoke", "--size", "paper"]])
def test_cli_rejects_bad_values(arguments):
    with pytest.raises(SystemExit) as raised:
        cli.main(arguments)
    assert raised.value.code == 2


def test_cli_refuses_missing_directories_before_training(tmp_path, capsys):
    missing = tmp_path / "missing"
    for option, name in (("--history", "h.csv"), ("--plot", "c.png")):
        assert cli.main(["train", option, str(missing / name), "--no-progress"]) == 2
        assert f"{option} {missing / name}: the directory {missing} does not exist" in capsys.readouterr().err
    for command in (["train", "--data", "mnist"], ["experiment", "quickstart"]):
        with pytest.raises(SystemExit) as raised:
            cli.main(command + ["--data-dir", str(missing)])
        assert raised.value.code == 2 and "not an existing directory" in capsys.readouterr().err
    assert not missing.exists()


def test_ensemble_scaling_finds_the_smallest_ensemble_near_the_best():
    assert experiments._ensemble_grid(400) == [25, 50, 100, 200, 400]
    assert experiments._ensemble_grid(20) == [4, 5, 10, 20]
    rows = [{"hidden": h, "parameters": p, "ensemble": J, "accuracy_mean": a}
            for h, p, curve in ((4, 3190, {25: 0.70, 50: 0.845, 100: 0.85}),
                                (8, 6370, {25: 0.60, 50: 0.80, 100: 0.88}))
            for J, a in curve.items()]
    summary = experiments._minimum_ensembles(rows)
    assert [(s["hidden"], s["best_accuracy"], s["minimum_ensemble"], s["saturated"]) for s in summary] == [
        (4, 0.85, 50, True), (8, 0.88, 100, False)]  # width 8 still rises at the largest J


def test_ensemble_scaling_smoke_reports_the_minimum_ensemble(tmp_path):
    result = experiments.run("ensemble-scaling-mnist", size="smoke", out=tmp_path, progress=False)
    assert [row["ensemble"] for row in result["rows"]] == [4, 5, 10, 20] * 2
    assert [entry["hidden"] for entry in result["minimum_ensemble"]] == [4, 8]
    for entry in result["minimum_ensemble"]:
        assert entry["minimum_ensemble"] in (4, 5, 10, 20) and 0 <= entry["best_accuracy"] <= 1
    assert (tmp_path / "ensemble-scaling-mnist.png").is_file()


def _results(*rows):
    return {"size": "cpu", "rows": [{"method": method, "model": "mlp:784-10"} for method in rows]}


def test_results_are_written_atomically_and_rows_a_run_drops_are_kept(tmp_path, capsys):
    path = str(tmp_path / "mnist-dnn1.json")
    experiments._write_results(path, _results("eki", "sgd"))
    experiments._write_results(path, _results("eki", "sgd"))  # replaces every row: nothing to keep
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist-dnn1.json"] and not capsys.readouterr().err
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        experiments._write_results(path, {"rows": [], "bad": object()})
    assert json.loads((tmp_path / "mnist-dnn1.json").read_text()) == _results("eki", "sgd")
    experiments._write_results(path, _results("sgd"))
    kept = [p for p in tmp_path.iterdir() if p.name != "mnist-dnn1.json"]
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == _results("eki", "sgd")
    assert f"it is kept as {kept[0]}" in capsys.readouterr().err
    assert json.loads((tmp_path / "mnist-dnn1.json").read_text()) == _results("sgd")
    assert "mnist-dnn1 | cpu | sgd |" in experiments.report(tmp_path)
    assert (tmp_path / "mnist-dnn1.json").stat().st_mode & 0o777 == 0o644
    (tmp_path / "mnist-dnn1.json").write_text('{"rows": [')  # a damaged earlier file is kept, and written over
    experiments._write_results(path, _results("eki"))
    experiments._write_results(path, _results("sgd"))  # two earlier files kept in one second get separate names
    assert len(list(tmp_path.iterdir())) == 4


def test_the_report_names_the_settings_a_run_changed():
    result = {"size": "cpu", "settings": {**experiments.dataclasses.asdict(experiments.get("mnist-dnn4").cpu),
                                          "train_size": 20000}, "paper": {},
              "rows": [{"method": "sgd", "model": "mlp:784-500-300-100-10", "test_accuracy": 0.9}]}
    assert "| mnist-dnn4 | cpu: train_size=20000 | sgd |" in experiments._report_line("mnist-dnn4", result,
                                                                                       result["rows"][0])
    result["settings"]["train_size"] = None
    assert "| mnist-dnn4 | cpu | sgd |" in experiments._report_line("mnist-dnn4", result, result["rows"][0])


def test_a_diverged_learning_rate_never_wins_the_sweep(monkeypatch):
    from ekinet import baselines

    first = experiments.LEARNING_RATES["sgd"][0]

    def fake_sgd_train(model, train, test, *, lr, **options):
        accuracy = float("nan") if lr == first else lr / 10
        return {"metric": "accuracy", "history": [{"validation_accuracy": accuracy}], "test_accuracy": accuracy}

    monkeypatch.setattr(baselines, "sgd_train", fake_sgd_train)
    settings = experiments.get("mnist-dnn1").smoke
    row = experiments._train_gradient("mlp:784-10", (None, None, None), "sgd", settings, {"progress": False})
    assert row["lr"] == max(experiments.LEARNING_RATES["sgd"]) != first


def test_a_diverging_online_baseline_is_a_skipped_row_not_a_lost_experiment(monkeypatch):
    from ekinet import baselines, online

    class Fitted:
        def to_dict(self):
            return {"first": 1.0, "final": 0.5}

    def diverge(*args, **kwargs):
        raise FloatingPointError("online gradient descent diverged: the loss at update 3 of pass 1 is nan")

    monkeypatch.setattr(online, "online_regression", lambda *args, **kwargs: Fitted())
    monkeypatch.setattr(baselines, "online_gradient_descent", diverge)
    run = experiments._online("sunspots", ("rnn:1-4-1",))
    rows = run(experiments.get("sunspots-rnn").smoke, {"progress": False, "seed": 0, "name": "x", "out": None})["rows"]
    assert rows[0] == {"first": 1.0, "final": 0.5, "method": "eki", "model": "rnn:1-4-1", "window": 1}
    assert rows[1]["method"] == "ogd" and "diverged" in rows[1]["skipped"]
