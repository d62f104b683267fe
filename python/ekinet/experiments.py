"""The paper's experiments (Kovachki & Stuart 2019, and the lectures' examples) with their settings and a fast
smoke size. `ekinet experiment NAME` runs one and writes results/NAME.json (and a plot when matplotlib is
installed); `ekinet report` puts the results beside the paper's numbers.

Settings the paper does not publish are chosen here and documented in docs/results.md: DNN 1-4 are
784-10, 784-100-10, 784-300-100-10 and 784-500-300-100-10 (ReLU); mini-batches of 100; the general-loss scheme
with adaptive step h = 3 (at J = 2000 a larger constant step learns faster but levels off lower, and on DNN 2
EKI(R) h = 12 decaying by 0.75 an epoch, `--step 12 --step-decay 0.75`, did best: docs/results.md); the EKI(R)
schedule RandomizationSchedule() (after every update, gamma = 0.3 of the Glorot prior).
"""

import dataclasses
import json
import os
import platform
import re
import sys
import time

import numpy as np

from . import datasets, nn
from ._files import atomic_write
from .train import RandomizationSchedule, Trainer

EKI_METHODS = ("eki", "meki", "eki-r", "meki-r")
GRADIENT_METHODS = ("sgd", "momentum-sgd")
# The paper does not publish its baselines' learning rates: each gradient row tries these and keeps the one with
# the best validation metric (momentum 0.9 multiplies the effective step by 10, hence its smaller rates).
LEARNING_RATES = {"sgd": (0.05, 0.1, 0.2, 0.4), "momentum-sgd": (0.01, 0.02, 0.05, 0.1)}

# The published numbers (eki-math.md section 8): test accuracy of the mean particle / best particle.
PAPER_DNN = {
    "sgd": (0.9199, 0.9735, 0.9798, 0.9818),
    "momentum-sgd": (0.9257, 0.9807, 0.9830, 0.9840),
    "eki": ((0.9092, 0.9114), (0.9398, 0.9416), (0.9424, 0.9432), (0.9404, 0.9418)),
    "meki": ((0.9094, 0.9107), (0.9320, 0.9332), None, None),
    "eki-r": ((0.9252, 0.9260), (0.9721, 0.9695), (0.9738, 0.9716), (0.9741, 0.9691)),
    "meki-r": ((0.9142, 0.9162), (0.9509, 0.9511), None, None),
}
PAPER_ONLINE = {"melbourne": {"ogd": (2.653e-2, 8.954e-3), "eki": (8.086e-3, 7.448e-3)},
                "sunspots": {"ogd": (4.939e-2, 6.480e-3), "eki": (8.671e-3, 6.006e-3)}}


@dataclasses.dataclass
class Settings:
    """Sizes of one run: the paper's, a reduced CPU size, or the smoke size of the tests."""

    ensemble: int
    epochs: int
    batch_size: int = 100
    train_size: int = None  # None: the whole training set
    passes: int = 1  # online experiments
    widths: tuple = None  # ensemble-scaling experiments only: the hidden widths h of 784-h-10
    step: float = None  # the EKI step h; None: the default of the Trainer (chosen at J = 200) or of the online driver
    step_decay: float = None  # the Trainer's step_decay (None: its default, a constant step); not for online runs
    centred_draws: bool = False  # EKI(R): RandomizationSchedule(centred=True); not for online runs
    input_span: bool = False  # eki-r, meki-r: RandomizationSchedule(input_span=True); not online
    hidden_span: bool = False  # with input_span: RandomizationSchedule(hidden_span=True)
    momentum_restart: str = None  # meki, meki-r: the Trainer's momentum_restart ("epoch"); None: the paper's
    momentum_coefficient: float = None  # meki, meki-r: the Trainer's constant coefficient; None: n/(n+3)
    update: str = None  # the Trainer's update, "loss" or "kalman"; None: its default, the general-loss scheme
    noise: float = None  # update="kalman": the Trainer's noise variance gamma; None: its default


@dataclasses.dataclass
class Experiment:
    name: str
    description: str
    run: object  # run(settings, options) -> dict of results
    paper: Settings
    cpu: Settings
    smoke: Settings
    paper_numbers: dict = dataclasses.field(default_factory=dict)
    methods: tuple = ()  # what it runs when no methods are given
    fixed: bool = False  # it always runs `methods`; otherwise methods= chooses among all methods
    online: bool = False  # an online driver (one update per observation) rather than epochs of a Trainer
    reads_data_dir: bool = True  # False: it trains on the data embedded in the package


# The overrides of run() that each kind of experiment reads; any other is refused, not silently ignored.
ONLINE_OPTIONS = ("ensemble", "passes", "step")
TRAINING_OPTIONS = ("ensemble", "epochs", "train_size", "step", "step_decay", "centred_draws", "input_span",
                    "hidden_span", "momentum_restart", "momentum_coefficient", "update", "noise", "checkpoints")


def _save_figure(options, filename, draw):
    """Draw into a new figure and save it as out/filename, when there is an output directory and matplotlib."""
    if not options.get("out"):
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, ax = plt.subplots(figsize=(7, 4))
    draw(ax)
    figure.savefig(os.path.join(options["out"], filename), dpi=110, bbox_inches="tight")
    plt.close(figure)


def _learning_curves(rows, title):
    def draw(ax):
        for row in rows:
            history = [r for r in row.get("history") or [] if "test_accuracy_mean" in r and "train_loss" in r]
            if history:
                draws = [name for key, name in (("input_span", "input span"), ("hidden_span", "hidden span"),
                                                 ("centred", "centred"))
                         if (row.get("randomization") or {}).get(key)]
                line, = ax.plot([r["epoch"] for r in history], [r["test_accuracy_mean"] for r in history], "o-",
                                label=f"{row['method']} ({row['model']}, J={row.get('ensemble')}"
                                      f"{''.join(', ' + d for d in draws)})")
                averaged = [(r["epoch"], r["test_accuracy_average"]) for r in history if "test_accuracy_average" in r]
                if averaged:
                    ax.plot(*zip(*averaged), ":", color=line.get_color(), label="  its epoch-averaged mean")
            gradient = [r for r in row.get("history") or [] if "test_accuracy" in r]
            if gradient:
                ax.plot([r["epoch"] for r in gradient], [r["test_accuracy"] for r in gradient], "s--",
                        label=f"{row['method']} ({row['model']}, one network)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (EKI: mean particle, dotted: averaged; dashed: gradient baselines)")
        ax.set_title(title)
        ax.legend()

    return draw


def _classification_data(name, settings, *, flatten=True, data_dir=None):
    """Train, validation (the last 5000 training examples, or 10% when fewer) and test sets."""
    if name == "mnist-small":
        train, test = datasets.load_mnist_small("train", flatten=flatten), datasets.load_mnist_small(
            "test", flatten=flatten)
    else:
        loader = datasets.load_mnist if name == "mnist" else datasets.load_fashion_mnist
        train = loader("train", data_dir=data_dir, flatten=flatten)
        test = loader("test", data_dir=data_dir, flatten=flatten)
    held = min(5000, len(train) // 10)
    validation = train.subset(np.arange(len(train) - held, len(train)))
    train = train.subset(np.arange(len(train) - held))
    if settings.train_size is not None and settings.train_size < len(train):
        train = train.subset(np.arange(settings.train_size))
        evaluation = max(300, settings.train_size // 5)  # reduced runs evaluate on reduced sets too
        test = test.subset(np.arange(min(len(test), evaluation)))
        validation = validation.subset(np.arange(min(len(validation), evaluation)))
    return train, validation, test


def _checkpoint_path(options, model, method, ensemble, kw):
    # One file per EKI run of an experiment, named by what tells its runs apart.
    if not options.get("checkpoints"):
        return None
    parts = [options["name"], method, model, f"J{ensemble}"] + [f"{k}={v}" for k, v in sorted(kw.items())]
    return os.path.join(options["checkpoints"], re.sub(r"[^A-Za-z0-9=.+-]", "_", "-".join(parts)) + ".npz")


def _train_eki(model, data, method, settings, options, **kw):
    train, validation, test = data
    start = time.perf_counter()
    schedule = {"centred": settings.centred_draws and method.endswith("-r"),
                "input_span": settings.input_span and method.endswith("-r"),
                "hidden_span": settings.hidden_span and method.endswith("-r")}
    # A seed or step sweep into one checkpoint directory gets a file per run (the Trainer refuses to resume
    # a checkpoint written with other settings).
    named = {**kw, **{k: 1 for k, v in schedule.items() if v},
             **{k: v for k, v in (("step", settings.step), ("step_decay", settings.step_decay),
                                  ("seed", options.get("seed", 0) or None)) if v is not None}}
    if settings.momentum_restart and method.startswith("meki"):
        named["restart"] = settings.momentum_restart
        kw = {"momentum_restart": settings.momentum_restart, **kw}
    if settings.momentum_coefficient and method.startswith("meki"):
        named["momentum"] = settings.momentum_coefficient
        kw = {"momentum_coefficient": settings.momentum_coefficient, **kw}
    for option in ("update", "noise"):  # the Kalman update and its gamma, when asked for
        if getattr(settings, option) is not None and option in kw and kw[option] != getattr(settings, option):
            raise ValueError(f"{options['name']} always runs with {option}={kw[option]!r}; leave "
                             f"{option}={getattr(settings, option)!r} out")
        if getattr(settings, option) is not None:
            named[option] = getattr(settings, option)
            kw = {option: getattr(settings, option), **kw}
    checkpoint = _checkpoint_path(options, model, method, settings.ensemble, named)
    if any(schedule.values()):
        kw = {"randomization": RandomizationSchedule(**schedule), **kw}
    trainer = Trainer(model, train, validation=validation, test=test, method=method, ensemble=settings.ensemble,
                      epochs=settings.epochs, batch_size=settings.batch_size, rng=options.get("seed", 0),
                      progress=options.get("progress", True), device=options.get("device", "cpu"),
                      checkpoint=checkpoint, resume=checkpoint is not None,
                      **{k: v for k, v in (("step", settings.step), ("step_decay", settings.step_decay))
                         if v is not None}, **kw)
    resumed_at = trainer.epoch
    trainer.fit()
    if trainer.task == "regression":
        _save_figure(options, f"{options['name']}.png", lambda ax: (trainer.plot_predictions("test", ax=ax),
                                                                    ax.set_title(f"{model}, test set")))
    final = trainer.history[-1]
    metrics = {k[len("test_"):]: v for k, v in final.items() if k.startswith("test_")}
    return {"method": method, "model": model, "ensemble": settings.ensemble, "epochs": trainer.epoch,
            "update": trainer.update, **({"noise": trainer.noise} if trainer.update == "kalman" else {}),
            "step": trainer.step, "step_decay": trainer.step_decay, "momentum_restart": trainer.momentum_restart,
            "momentum_coefficient": trainer.momentum_coefficient,
            "randomization": None if trainer.randomization is None else dataclasses.asdict(trainer.randomization),
            "seconds": time.perf_counter() - start,
            **({"checkpoint": checkpoint, "resumed_at_epoch": resumed_at} if checkpoint else {}),
            "history": trainer.history, **metrics}


def _train_gradient(model, data, method, settings, options):
    """One network trained with each rate of LEARNING_RATES[method]; the row is the run whose last epoch has the
    best validation metric, with every rate's validation number beside it."""
    from . import baselines

    train, validation, test = data
    start = time.perf_counter()
    best, by_rate = None, {}
    for lr in LEARNING_RATES[method]:
        try:
            result = baselines.sgd_train(model, train, test, epochs=settings.epochs, batch_size=settings.batch_size,
                                         lr=lr, momentum=0.9 if method == "momentum-sgd" else 0.0,
                                         validation=validation, rng=options.get("seed", 0),
                                         progress=options.get("progress", True), device=options.get("device", "cpu"))
        except ImportError as error:
            return {"method": method, "model": model, "skipped": str(error)}
        metric = result["metric"]
        by_rate[str(lr)] = result["history"][-1][f"validation_{metric}"]
        sign = 1 if metric == "accuracy" else -1  # accuracy: higher is better; RMSE: lower
        # a diverged rate (NaN) never wins, not even as the first
        if best is None or not np.isfinite(by_rate[str(best["lr"])]) or \
                sign * by_rate[str(lr)] > sign * by_rate[str(best["lr"])]:
            best = {"lr": lr, **{k: v for k, v in result.items() if k not in ("u", "module", "seconds")}}
    return {"method": method, "model": model, "seconds": time.perf_counter() - start,
            f"validation_{metric}_by_lr": by_rate, **best}


def _classification(model, dataset, **trainer_options):
    def run(settings, options):
        data = _classification_data(dataset, settings, data_dir=options.get("data_dir"),
                                    flatten=not model.startswith("cnn"))
        rows = []
        for method in options["methods"]:
            if method in GRADIENT_METHODS:
                rows.append(_train_gradient(model, data, method, settings, options))
            else:
                rows.append(_train_eki(model, data, method, settings, options, **trainer_options))
        _save_figure(options, f"{options['name']}.png", _learning_curves(rows, f"{model} on {dataset}"))
        return {"rows": rows}

    return run


def _heaviside(settings, options):
    data = _classification_data("fashion-mnist", settings, data_dir=options.get("data_dir"))
    rows = [_train_eki(f"mlp:784-100-10:{activation}", data, "eki-r", settings, options)
            for activation in ("heaviside", "relu")]
    _save_figure(options, f"{options['name']}.png", _learning_curves(rows, "Fashion-MNIST, Heaviside and ReLU"))
    return {"rows": rows}


def _ensemble_scaling(dataset):
    """Accuracy against J for 784-h-10 ReLU networks, J from ensemble / 16 to ensemble, and for each width the
    smallest J within SCALING_TOLERANCE of the best accuracy over J (the paper: this minimum ensemble size
    grows about linearly with the parameter count)."""
    def run(settings, options):
        data = _classification_data(dataset, settings, data_dir=options.get("data_dir"))
        rows = []
        for hidden in settings.widths:
            model = f"mlp:784-{hidden}-10"
            parameters = nn.from_string(model).parameter_count
            for J in _ensemble_grid(settings.ensemble):
                row = _train_eki(model, data, "eki-r", dataclasses.replace(settings, ensemble=J), options)
                rows.append({**row, "hidden": hidden, "parameters": parameters, "history": None})
        minimum = _minimum_ensembles(rows)
        _save_figure(options, f"{options['name']}.png", lambda ax: _plot_scaling(ax, rows, minimum))
        return {"rows": rows, "minimum_ensemble": minimum}

    return run


SCALING_TOLERANCE = 0.01  # accuracy within one point of the best over J counts as reached


def _ensemble_grid(ensemble):
    """J = ensemble / 16, / 8, / 4, / 2 and ensemble itself (at least 4 members each, no repeats)."""
    return sorted({max(4, ensemble // 2 ** k) for k in range(5)})


def _minimum_ensembles(rows):
    summary = []
    for hidden in dict.fromkeys(row["hidden"] for row in rows):
        own = [row for row in rows if row["hidden"] == hidden]
        best = max(row["accuracy_mean"] for row in own)
        reached = min(row["ensemble"] for row in own if row["accuracy_mean"] >= best - SCALING_TOLERANCE)
        # Reached only at the largest J: the accuracy may still be rising there, so J_min is a lower bound.
        saturated = reached < max(row["ensemble"] for row in own)
        summary.append({"hidden": hidden, "parameters": own[0]["parameters"], "best_accuracy": best,
                        "minimum_ensemble": reached, "saturated": saturated})
    return summary


def _plot_scaling(ax, rows, minimum):
    for entry in minimum:
        own = [row for row in rows if row["hidden"] == entry["hidden"]]
        ax.plot([row["ensemble"] for row in own], [row["accuracy_mean"] for row in own], "o-",
                label=f"784-{entry['hidden']}-10 (P = {entry['parameters']}): J_min "
                      f"{'=' if entry['saturated'] else '>='} {entry['minimum_ensemble']}")
    ax.set_xscale("log")
    sizes = sorted({row["ensemble"] for row in rows})
    ax.set_xticks(sizes, [str(J) for J in sizes])
    ax.minorticks_off()
    ax.set_xlabel("ensemble size J")
    ax.set_ylabel("test accuracy (mean particle)")
    ax.legend(fontsize=8)


def _boston(loss):
    def run(settings, options):
        boston = datasets.load_boston(data_dir=options.get("data_dir"))
        order = np.random.default_rng(0).permutation(len(boston))
        test_index, train_index = order[:100], order[100:][:settings.train_size]
        x_scaler, y_scaler = datasets.Standardizer(), datasets.Standardizer()
        x_train = x_scaler.fit_transform(boston.x[train_index])
        y_train = y_scaler.fit_transform(boston.y[train_index, None])
        make = lambda x, y: datasets.Dataset(x.astype(np.float32), y.astype(np.float32), "boston", "regression")
        train = make(x_train, y_train)
        test = make(x_scaler.transform(boston.x[test_index]), y_scaler.transform(boston.y[test_index, None]))
        train, validation = train.split(0.15, rng=1)
        outputs = 2 if loss == "gaussian-nll" else 1
        model = f"mlp:13-32-32-{outputs}:tanh"
        row = _train_eki(model, (train, validation, test), "eki-r", settings, options, loss=loss, update="loss")
        scale = float(y_scaler.scale[0])
        row["rmse_mean_usd1000"] = row["rmse_mean"] * scale  # back in the data's units ($1000)
        if "rmse_ensemble" in row:
            row["rmse_ensemble_usd1000"] = row["rmse_ensemble"] * scale
        return {"rows": [row]}

    return run


# The online EKI noise variance per cell, measured with J = 200, 3 passes on both series, with the members
# around a shared centre (online_regression's spread="auto": independent Glorot draws had left the Elman RNN
# at 0.108 / 0.059 on Melbourne, ten times the persistence forecast): the RNN's final error was lowest at 3e-4
# (against 1e-3, 1e-2 and 1e-4), the LSTM's at 1e-3 (3e-4 equal, 1e-2 worse). A bias prior of 0.1 throughout.
_ONLINE_NOISE = {"rnn": 3e-4, "lstm": 1e-3}


def _online(series_name, models, window=1):
    def run(settings, options):
        from . import online

        series = datasets.load_series(series_name, data_dir=options.get("data_dir"))
        rows = []
        for model in models:
            result = online.online_regression(series, model, ensemble=settings.ensemble, passes=settings.passes,
                                              window=window, noise=_ONLINE_NOISE[model.split(":")[0]], bias_std=0.1,
                                              **({} if settings.step is None else {"step": settings.step}),
                                              rng=options.get("seed", 0), progress=options.get("progress", True),
                                              device=options.get("device", "cpu"))
            rows.append({**result.to_dict(), "method": "eki", "model": model, "window": window})
            ogd = None
            try:
                from . import baselines

                ogd = baselines.online_gradient_descent(series, model, passes=settings.passes, window=window,
                                                        rng=options.get("seed", 0),
                                                        progress=options.get("progress", True))
                rows.append({**ogd.to_dict(), "method": "ogd", "model": model, "window": window})
            except (ImportError, FloatingPointError) as error:  # no PyTorch, or the baseline diverged
                rows.append({"method": "ogd", "model": model, "skipped": str(error)})
            if model == models[0]:
                _save_figure(options, f"{options['name']}.png", lambda ax: (
                    result.plot(ax=ax, baseline=ogd),
                    ax.set_title(f"online EKI against OGD, {model}, {series_name}, last pass "
                                 f"(J={settings.ensemble})")))
        return {"rows": rows}

    return run


def _registry():
    experiments = {}

    def add(name, description, run, paper, cpu, smoke, methods, fixed=False, online=False, reads_data_dir=True,
            **numbers):
        experiments[name] = Experiment(name, description, run, paper, cpu, smoke, numbers, methods, fixed, online,
                                       reads_data_dir)

    smoke = Settings(ensemble=20, epochs=1, train_size=1000)
    # The quickstart's smoke size is the smallest that learns robustly (0.62-0.66 over seeds 0-2; 20 members
    # over 1000 digits gave 0.19-0.25), because a test checks that it learns.
    add("quickstart", "EKI(R) on the embedded MNIST digits (784-100-10): the README's first command",
        _classification("mlp:784-100-10", "mnist-small"),
        Settings(ensemble=200, epochs=3), Settings(ensemble=200, epochs=3),
        Settings(ensemble=40, epochs=2, train_size=2000), ("eki-r",), reads_data_dir=False)
    for k, model in enumerate(("mlp:784-10", "mlp:784-100-10", "mlp:784-300-100-10",
                               "mlp:784-500-300-100-10"), start=1):
        numbers = {m: v[k - 1] for m, v in PAPER_DNN.items() if v[k - 1] is not None}
        methods = GRADIENT_METHODS + tuple(m for m in EKI_METHODS if PAPER_DNN[m][k - 1] is not None)
        add(f"mnist-dnn{k}", f"MNIST, DNN {k} ({model}), the paper's table: {', '.join(methods)}",
            _classification(model, "mnist"), Settings(ensemble=2000, epochs=10),
            Settings(ensemble=200, epochs=2), smoke, methods, **numbers)
    add("cnn-mnist", "CNN-MNIST (Conv16-MaxPool4/2-Conv16-Conv12-MaxPool2-FC10), EKI(R) against SGD",
        _classification("cnn-mnist", "mnist"), Settings(ensemble=2000, epochs=10),
        Settings(ensemble=100, epochs=1, train_size=10000), Settings(ensemble=10, epochs=1, train_size=300),
        ("eki-r",) + GRADIENT_METHODS, **{"sgd": 0.9878, "momentum-sgd": 0.9880, "eki-r": 0.9912})
    add("rnn-mnist", "Two-layer RNN(128) reading MNIST rows as a 28-step sequence",
        _classification("rnn-mnist", "mnist"), Settings(ensemble=2000, epochs=10),
        Settings(ensemble=100, epochs=1, train_size=10000), Settings(ensemble=10, epochs=1, train_size=300),
        ("eki-r",))
    for dataset, label in (("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST")):
        add(f"ensemble-scaling-{dataset}", f"{label}: accuracy against ensemble size for 784-h-10 networks",
            _ensemble_scaling(dataset), Settings(ensemble=2000, epochs=50, widths=(16, 32, 64, 128)),
            Settings(ensemble=800, epochs=20, train_size=10000, widths=(4, 8, 16)),
            Settings(ensemble=20, epochs=1, train_size=500, widths=(4, 8)), ("eki-r",), fixed=True)
    add("fashion-heaviside", "Fashion-MNIST 784-100-10 with Heaviside (non-differentiable) against ReLU, EKI(R)",
        _heaviside, Settings(ensemble=2000, epochs=10), Settings(ensemble=200, epochs=2), smoke,
        ("eki-r",), fixed=True, heaviside=0.85, relu=0.87)
    for series, numbers in PAPER_ONLINE.items():
        add(f"{series}-rnn", f"Online recurrent regression (LSTM(32) and Elman RNN(32)) on the {series} series, "
            "one update per observation", _online(series, ("lstm:1-32-1", "rnn:1-32-1")),
            Settings(ensemble=2000, epochs=1, passes=3),
            Settings(ensemble=200, epochs=1, passes=3), Settings(ensemble=20, epochs=1, passes=1),
            ("eki", "ogd"), fixed=True, online=True,
            **{m: {"first": v[0], "final": v[1]} for m, v in numbers.items()})
    add("lstm-batched-online", "LSTM(32) regression on the sunspots by batched online updates (windows of 10)",
        _online("sunspots", ("lstm:1-32-1",), window=10), Settings(ensemble=2000, epochs=1, passes=3),
        Settings(ensemble=200, epochs=1, passes=3), Settings(ensemble=20, epochs=1, passes=1),
        ("eki", "ogd"), fixed=True, online=True)
    add("boston", "Boston housing regression (13-32-32-1, tanh), EKI(R) on the squared loss",
        _boston("squared"), Settings(ensemble=1000, epochs=100, batch_size=50),
        Settings(ensemble=200, epochs=60, batch_size=50), Settings(ensemble=20, epochs=2, batch_size=50),
        ("eki-r",), fixed=True)
    add("gaussian-nll", "Boston housing with a Gaussian-NLL network (outputs mean and std, confidence band)",
        _boston("gaussian-nll"), Settings(ensemble=1000, epochs=100, batch_size=50),
        Settings(ensemble=200, epochs=60, batch_size=50), Settings(ensemble=20, epochs=2, batch_size=50),
        ("eki-r",), fixed=True)
    return experiments


EXPERIMENTS = _registry()


def get(name):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run(name, *, size="auto", ensemble=None, epochs=None, train_size=None, passes=None, step=None,
        step_decay=None, centred_draws=None, input_span=None, hidden_span=None, momentum_restart=None,
        momentum_coefficient=None, update=None, noise=None, out="results", progress=True, device="cpu", seed=0,
        data_dir=None, methods=None, checkpoints=None):
    """Run an experiment at size "paper", "cpu" (reduced, labelled as such), "smoke" or "auto" (paper on a GPU,
    cpu otherwise), with optional overrides; writes out/NAME.json and returns the result dict. A training
    experiment takes the overrides in TRAINING_OPTIONS, an online one those in ONLINE_OPTIONS (passes: how often
    the driver goes through the series); any other is an error.

    checkpoints: a directory where every EKI training run of the experiment writes its Trainer checkpoint after
    each epoch and resumes from it when it is there: an interrupted run continues where it stopped (and a run
    given more epochs continues from the last), and the final file holds the trained ensemble. A row's
    `seconds` counts only the part run this time; `resumed_at_epoch` says where it started."""
    experiment = get(name)
    if size == "auto":
        size = "paper" if device == "cuda" else "cpu"
    if size not in ("paper", "cpu", "smoke"):
        raise ValueError(f"size = {size!r} must be 'paper', 'cpu', 'smoke' or 'auto'")
    settings = getattr(experiment, size)
    overrides = {k: v for k, v in (("ensemble", ensemble), ("epochs", epochs), ("train_size", train_size),
                                   ("passes", passes), ("step", step), ("step_decay", step_decay),
                                   ("centred_draws", centred_draws), ("input_span", input_span),
                                   ("hidden_span", hidden_span), ("momentum_restart", momentum_restart),
                                   ("momentum_coefficient", momentum_coefficient), ("update", update),
                                   ("noise", noise))
                 if v is not None}
    _check_options(experiment, [*overrides, *(["checkpoints"] if checkpoints else []),
                                *(["data_dir"] if data_dir is not None else [])])
    settings = dataclasses.replace(settings, **overrides)
    if methods:
        _check_methods(experiment, methods)
    runs = tuple(methods or experiment.methods)
    if not experiment.online and not any(m in EKI_METHODS for m in runs):
        for option in ("ensemble", "step", "step_decay", "checkpoints"):
            if option in overrides or (option == "checkpoints" and checkpoints):
                raise ValueError(f"{option} applies to the EKI methods ({', '.join(EKI_METHODS)}), and {name} "
                                 f"runs {', '.join(runs)}: leave it out")
    if settings.centred_draws and not any(m.endswith("-r") for m in runs):
        raise ValueError(f"centred_draws applies to the EKI(R) methods (eki-r, meki-r), and {name} runs "
                         f"{', '.join(runs)}: leave it out")
    if settings.input_span and not any(m.endswith("-r") for m in runs):
        raise ValueError(f"input_span applies to the EKI(R) methods (eki-r, meki-r), and {name} runs "
                         f"{', '.join(runs)}: leave it out")
    if settings.hidden_span and not settings.input_span:
        raise ValueError("hidden_span extends input_span to the later Dense layers: set input_span too")
    if settings.update not in (None, "loss", "kalman"):
        raise ValueError(f"update = {settings.update!r} must be 'loss' (the general-loss scheme) or 'kalman'")
    if settings.noise is not None and settings.update != "kalman":
        raise ValueError(f"noise = {settings.noise} is the Kalman update's gamma: pass update='kalman' with it")
    if settings.update is not None and not any(m in EKI_METHODS for m in runs):
        raise ValueError(f"update applies to the EKI methods ({', '.join(EKI_METHODS)}), and {name} runs "
                         f"{', '.join(runs)}: leave it out")
    for option in ("momentum_restart", "momentum_coefficient"):
        if getattr(settings, option) and not any(m.startswith("meki") for m in runs):
            raise ValueError(f"{option} applies to the momentum methods (meki, meki-r), and {name} runs "
                             f"{', '.join(runs)}: leave it out")
    for directory, what in ((out, "out"), (checkpoints, "checkpoints")):
        if directory:  # made now: a bad path must fail before hours of training, not after them
            if os.path.exists(directory) and not os.path.isdir(directory):
                raise ValueError(f"{what} = {directory!r} is a file; pass a directory (it is created if missing)")
            os.makedirs(directory, exist_ok=True)
    options = {"progress": progress, "device": device, "seed": seed, "data_dir": data_dir, "methods": runs,
               "out": out, "name": name, "checkpoints": checkpoints}
    start = time.perf_counter()
    result = experiment.run(settings, options)
    result.update(experiment=name, description=experiment.description, size=size,
                  settings=dataclasses.asdict(settings), paper_settings=dataclasses.asdict(experiment.paper),
                  paper=experiment.paper_numbers, seconds=time.perf_counter() - start,
                  environment=_environment(device))
    if out:
        _write_results(os.path.join(out, f"{name}.json"), result)
    return result


def _write_results(path, result):
    """Write the results file atomically. An earlier file with rows that this run does not replace (other
    methods or models) is kept beside it, with a note on stderr, rather than lost."""
    text = json.dumps(result, indent=1, default=_json_default)
    if os.path.exists(path):
        try:
            with open(path) as f:
                earlier = {(row.get("method"), row.get("model")) for row in json.load(f).get("rows") or []}
        except Exception:  # a damaged or unreadable file is kept too: the new results must still be written
            earlier = {None}
        dropped = earlier - {(row.get("method"), row.get("model")) for row in result.get("rows", [])}
        if dropped:
            kept = _unused_name(f"{path.removesuffix('.json')}-{time.strftime('%Y%m%dT%H%M%S')}", ".json")
            os.replace(path, kept)
            print(f"ekinet: {path} held rows this run does not replace; it is kept as {kept}", file=sys.stderr)
    with atomic_write(path) as f:
        f.write(text)


def _unused_name(stem, suffix):
    name, n = stem + suffix, 1
    while os.path.exists(name):
        name, n = f"{stem}-{n}{suffix}", n + 1
    return name


def _check_options(experiment, given):
    kind, accepted = ("an online experiment (one update per observation)", ONLINE_OPTIONS) if experiment.online \
        else ("a training experiment", TRAINING_OPTIONS)
    if "data_dir" in given and not experiment.reads_data_dir:
        raise ValueError(f"data_dir does not apply to {experiment.name}: it trains on the digits embedded in the "
                         "package; leave it out")
    ignored = [option for option in given if option not in accepted and option != "data_dir"]
    if ignored:
        raise ValueError(f"{', '.join(ignored)} do{'es' if len(ignored) == 1 else ''} not apply to "
                         f"{experiment.name}, {kind}: it takes {', '.join(accepted)}")


def _check_methods(experiment, methods):
    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:
        raise ValueError(f"methods name {', '.join(repeated)} more than once; name each method once")
    if experiment.fixed:
        if set(methods) != set(experiment.methods):
            choosers = ", ".join(e.name for e in EXPERIMENTS.values() if not e.fixed)
            raise ValueError(f"{experiment.name} always runs {', '.join(experiment.methods)}, so --methods "
                             f"{','.join(methods)} cannot apply; methods are chosen in {choosers}")
        return
    unknown = [m for m in methods if m not in EKI_METHODS + GRADIENT_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(EKI_METHODS + GRADIENT_METHODS)}")


def _environment(device):
    from . import build_info

    return {"device": device, "python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "cores": os.cpu_count(), "ekinet": build_info()}


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def report(out="results"):
    """A markdown table of the results in `out` beside the paper's numbers."""
    if not os.path.isdir(out):
        raise FileNotFoundError(f"no results directory {out!r}: run `ekinet experiment NAME` first")
    lines = ["| experiment | size | method | model | J | ours | paper |", "|---|---|---|---|---|---|---|"]
    for name in EXPERIMENTS:
        path = os.path.join(out, f"{name}.json")
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                result = json.load(f)
            lines.extend(_report_line(name, result, row) for row in result.get("rows", []))
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path} is not a results file that `ekinet experiment {name}` wrote "
                             f"({type(error).__name__}: {error}); run the experiment again or move the file "
                             "away") from error
    return "\n".join(lines) + "\n"


def _report_line(name, result, row):
    method = row.get("method", "")
    paper = result.get("paper", {}).get(method)
    label = f"{method} (kalman)" if row.get("update") == "kalman" else method
    if "skipped" in row:
        ours = f"skipped: {row['skipped']}"
    elif "accuracy_mean" in row:
        ours = f"{row['accuracy_mean']:.4f} / {row.get('accuracy_best', float('nan')):.4f}"
        others = [f"{label} {row[key]:.4f}" for key, label in (("accuracy_average", "epoch-averaged mean"),
                                                               ("accuracy_ensemble", "ensemble")) if key in row]
        if others:
            ours += f" ({', '.join(others)})"
    elif "first" in row:
        ours = f"{row['first']:.3e} / {row['final']:.3e}"
    elif "rmse_mean_usd1000" in row:
        ours = f"RMSE {row['rmse_mean_usd1000']:.2f} k$"
    elif "test_accuracy" in row:
        ours = f"{row['test_accuracy']:.4f}" + (f" (lr {row['lr']:g})" if "lr" in row else "")
    else:
        ours = "-"
    if isinstance(paper, dict):
        paper = f"{paper['first']:.3e} / {paper['final']:.3e}"
    elif isinstance(paper, (list, tuple)):
        paper = " / ".join(f"{v:.4f}" for v in paper)
    elif isinstance(paper, float):
        paper = f"{paper:.4f}"
    if name == "fashion-heaviside":
        activation = row.get("model", "").rsplit(":", 1)[-1]
        paper = f"{result['paper'].get(activation, float('nan')):.2f}"
    return (f"| {name} | {_size_label(name, result)} | {label} | {row.get('model', '')} | "
            f"{_ensemble_size(row)} | {ours} | {paper or '-'} |")


def _size_label(name, result):
    """The size preset a run used, followed by every setting it changed (a smaller train_size also shrinks the
    test set, so a number beside the paper's must say so)."""
    size, settings = result["size"], result.get("settings") or {}
    preset = json.loads(json.dumps(dataclasses.asdict(getattr(get(name), size))))
    changed = [f"{key}={value}" for key, value in settings.items() if key in preset and preset[key] != value]
    return f"{size}: {', '.join(changed)}" if changed else size


def _ensemble_size(row):
    """J of an EKI row; '-' for the gradient baselines, which train one network."""
    if row.get("method") in GRADIENT_METHODS + ("ogd",):
        return "-"
    return row.get("ensemble", row.get("members", "-"))
