"""Training networks by EKI on mini-batches: ensemble forward pass (native), loss and gradient with respect to
the outputs, ensemble update; evaluation of the mean particle, the best particle and the ensemble average;
early stopping, metrics history, atomic checkpoints with exact resume, progress bars and plots.

>>> trainer = Trainer("mlp:784-100-10", datasets.load_mnist_small(), test=datasets.load_mnist_small("test"),
...                   method="eki-r", ensemble=200, epochs=3)
>>> history = trainer.fit()
>>> trainer.evaluate(test)["accuracy_mean"]
"""

import dataclasses
import json
import math
import os
import time
import warnings
import zipfile

import numpy as np

from . import losses, nn
from ._arrays import device_namespace, to_host
from ._files import atomic_write
from ._inputs import require_finite
from .datasets import Dataset, batches
from .eki import EKI, Randomization
from .ensemble import ensemble_mean, ensemble_spread
from .input_span import InputSpan
from .schedulers import AdaptiveStep, ConstantStep

# The paper's four EKI variants: momentum (MEKI, Nesterov) and randomisation (EKI(R)) switched on or off.
METHODS = {
    "eki": dict(momentum=False, randomize=False),
    "meki": dict(momentum=True, randomize=False),
    "eki-r": dict(momentum=False, randomize=True),
    "meki-r": dict(momentum=True, randomize=True),
}
UPDATES = ("loss", "kalman")
LOSSES = {"classification": ("cross-entropy",), "regression": ("squared", "gaussian-nll")}
CHECKPOINT_VERSION = 1
OPTIMIZER_ARRAYS = ("U", "V", "centre", "shift", "best")  # EKI.state()'s
# Settings added after checkpoints of this version were written, with the value that reproduces those runs.
CONFIG_ADDED_SINCE_VERSION = {"step_decay": 1.0, "momentum_restart": None, "momentum_coefficient": None}


@dataclasses.dataclass
class RandomizationSchedule:
    """EKI(R) as used by the trainer: every `every` updates (when="update") or after every `every` epochs
    (when="epoch"), u_j <- ubar + gamma(n) xi_j with xi_j from the network's centred Glorot prior and
    gamma(n) = scale * decay^n (n counts updates or epochs). The paper does not publish its schedule; the
    default (every update, gamma = 0.3) was chosen by measurement (docs/results.md): on 6000 MNIST digits,
    784-100-10, J = 200, 3 epochs, it reached 0.87 test accuracy against 0.70 for gamma = 0.1 once per epoch.
    centred=True subtracts the draws' sample mean, so that the redrawn ensemble's mean is ubar exactly; with
    J = 200 and a decaying step it lifted DNN 2 after 10 epochs from 0.9244 to 0.9357 (docs/results.md).
    input_span=True draws the first (Dense) layer's weights of each update's members in the span of the batch's
    inputs only, the directions that change the batch's outputs (ekinet.input_span): the same update in
    expectation without the noise of the others, computed in the span's coordinates (for 784-100-10 at batches
    of 100, on 11110 parameters instead of 79510). It needs when="update", every=1 and a Dense first layer.
    hidden_span=True (with input_span) draws every later Dense layer's weights in the span of its inputs on the
    batch as the centre network computes them: the directions left out change a member's outputs at second
    order only, and drawing them adds noise (DNN 3: 41410 coordinates instead of 61410; docs/results.md)."""

    scale: float = 0.3
    decay: float = 1.0
    when: str = "update"
    every: int = 1
    centred: bool = False
    input_span: bool = False
    hidden_span: bool = False

    def __post_init__(self):
        if self.when not in ("epoch", "update"):
            raise ValueError(f"when = {self.when!r} must be 'epoch' or 'update'")
        if not self.scale >= 0 or not self.decay > 0:
            raise ValueError(f"need scale >= 0 and decay > 0; got scale={self.scale}, decay={self.decay}")
        if int(self.every) < 1:
            raise ValueError(f"every = {self.every} must be at least 1")
        if self.input_span and (self.when, self.every) != ("update", 1):
            raise ValueError(f"input_span draws every update's members in that batch's input span: it needs "
                             f"when='update' and every=1, not when={self.when!r}, every={self.every}")
        if self.hidden_span and not self.input_span:
            raise ValueError("hidden_span extends input_span to the later Dense layers: set input_span=True too")

    def gamma(self, n):
        return self.scale * self.decay**n


def _read_checkpoint(path):
    """(state, arrays) of a checkpoint written by Trainer.save, or a ValueError that says what the file is not."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files") or "state" not in archive.files:
                raise ValueError("it holds no 'state' entry")
            state = json.loads(archive["state"].tobytes().decode())
            arrays = {k: archive[k] for k in archive.files if k != "state"}
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist; to start afresh, train without resuming") from None
    except IsADirectoryError:
        raise ValueError(f"checkpoint {path} is a directory; pass the checkpoint file (.npz)") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError,
            json.JSONDecodeError) as error:
        reason = "is empty" if os.path.isfile(path) and os.path.getsize(path) == 0 else \
            f"is not a complete .npz archive with a JSON 'state' entry ({type(error).__name__})"
        raise ValueError(f"{path} is not a readable ekinet checkpoint: the file {reason}; it may be truncated or "
                         "of another format: resume from another checkpoint or start afresh") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a readable ekinet checkpoint: its state is not a JSON object")
    return state, arrays


class Trainer:
    """Train an ensemble of networks on a Dataset by EKI.

    model : an nn.Sequential or a string form ("mlp:784-100-10", "cnn-mnist", "dnn:2", ...).
    train, validation, test : ekinet.datasets.Dataset (task "classification" with integer labels, or
        "regression" with targets (N,) or (N, k)). Early stopping and the best-particle choice use validation.
    method : "eki", "meki" (Nesterov momentum), "eki-r" (randomisation), "meki-r".
    update : "loss" (the general-loss scheme of Kovachki & Stuart with the adaptive step, the paper's training
        algorithm) or "kalman" (the Kalman EKI update on the outputs: softmax probabilities against one-hot
        labels for classification; a damped Gauss-Newton step in the batch's outputs. At J = 2000 it was level
        with "loss" on DNN 2 after one epoch; on CNN-MNIST a whole epoch ahead after one, behind after three;
        see docs/results.md).
    loss : "cross-entropy" (classification, on logits), "squared" or "gaussian-nll" (regression; the network
        outputs [mu, s] per target and sigma = softplus(s)). Default: cross-entropy or squared.
    ensemble : J. step : h (the adaptive step's numerator for "loss", the Kalman step for "kalman").
    step_decay : the step of epoch e (0 first) is step * step_decay**e; below 1 it anneals the noise of the
        ensemble's gradient estimate late in training, as a learning-rate decay does for SGD.
    noise : Kalman observation noise variance gamma (Gamma = gamma I).
    randomization : a RandomizationSchedule for the "-r" methods (default RandomizationSchedule()).
    momentum_restart : "epoch" restarts the Nesterov momentum of "meki" and "meki-r" at the start of every epoch
        (EKI.restart_momentum); None (the paper's scheme) never does. Without restarts the coefficient n/(n+3)
        tends to 1 and the momentum accumulates the noise of the mini-batch updates: MEKI at J = 2000 diverged
        on MNIST in its fifth epoch (docs/results.md).
    momentum_coefficient : "meki" and "meki-r": a constant Nesterov coefficient in (0, 1) instead of n/(n+3)
        (None). A constant one keeps the momentum from summing the noise of ever more updates; for MEKI(R)
        on MNIST, 0.5 trained about as well as EKI(R) where n/(n+3) lost 5-8 points (docs/results.md).
    tikhonov : lambda of the regulariser lambda |u|^2, applied by augmenting the outputs with the parameters.
    bias_std : prior standard deviation of the biases (the weights are Glorot): nonzero, so biases can learn.
    patience : stop when the validation metric of the mean particle has not improved for this many epochs (and
        return the optimiser to the best epoch: its ensemble, best member, update count and random state; the
        history keeps every epoch); needs validation. None trains all epochs.
    ensemble_eval : "final" (ensemble-averaged prediction at the end only), "epoch" (every epoch) or "never":
        the ensemble average costs a forward pass of all J members over the evaluation set.
    checkpoint : a path written atomically after every epoch; resume=True continues from it if it exists. Under
        EKI(R) with a redraw after every update it holds the centre the members are drawn around, not the J
        members (P values instead of J x P; resuming repeats the draw, bit for bit on the same device).
    device : "cpu" (NumPy) or "cuda" (CuPy arrays; the CUDA core, or the CuPy reference without it).
    rng : integer seed of the prior draw, the updates' noise and the batch order.

    Besides the mean particle (the ensemble mean after the last update), the best particle and the ensemble
    average, every epoch evaluates the "average" particle: the ensemble mean averaged over that epoch's updates
    (Polyak-Ruppert tail averaging). One update's direction is a Monte Carlo estimate from J random directions,
    mostly noise at J = 2000 (docs/results.md, "The step at J = 2000"), and the mean particle carries the last
    updates' noise; the average cancels much of it. It does not feed back into training.
    """

    def __init__(self, model, train, *, validation=None, test=None, method="eki-r", update="loss", loss=None,
                 ensemble=500, batch_size=100, epochs=10, step=3.0, step_decay=1.0, noise=1e-2, randomization=None,
                 momentum_restart=None, momentum_coefficient=None, tikhonov=0.0, bias_std=0.1, patience=None,
                 ensemble_eval="final", checkpoint=None, resume=False, rng=0, progress=True, device="cpu",
                 dtype="float32", backend="auto"):
        self.network = nn.from_string(model) if isinstance(model, str) else model
        if not isinstance(self.network, nn.Sequential):
            raise TypeError(f"model must be an nn.Sequential or a string form, got {type(model).__name__}")
        self.model_name = model if isinstance(model, str) else repr(model)
        if method not in METHODS:
            raise ValueError(f"method = {method!r} is not one of {', '.join(METHODS)}")
        if update not in UPDATES:
            raise ValueError(f"update = {update!r} is not one of {', '.join(UPDATES)}")
        if ensemble_eval not in ("final", "epoch", "never"):
            raise ValueError(f"ensemble_eval = {ensemble_eval!r} must be 'final', 'epoch' or 'never'")
        self.train_set = _check_dataset(train, "train")
        self.validation_set = None if validation is None else _check_dataset(validation, "validation")
        self.test_set = None if test is None else _check_dataset(test, "test")
        self.task = self.train_set.task
        self.loss = loss or ("cross-entropy" if self.task == "classification" else "squared")
        if self.loss not in LOSSES[self.task]:
            raise ValueError(f"loss = {self.loss!r} does not fit a {self.task} task; use one of "
                             f"{', '.join(LOSSES[self.task])}")
        if update == "kalman" and self.loss == "gaussian-nll":
            raise ValueError("the Gaussian NLL needs update='loss' (the Kalman update is a least-squares method)")
        self._check_splits()
        self.method, self.update = method, update
        self.ensemble_size = _positive_int(ensemble, "ensemble", 2)
        self.batch_size = _positive_int(batch_size, "batch_size", 1)
        if self.batch_size > len(self.train_set):
            warnings.warn(f"batch_size = {self.batch_size} exceeds the {len(self.train_set)} training examples: "
                          f"every epoch is one update on all of them", stacklevel=2)
        self.epochs = _positive_int(epochs, "epochs", 1)
        for name, value in (("step", step), ("step_decay", step_decay), ("noise", noise)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} = {value!r} must be a positive number")
        if not (isinstance(tikhonov, (int, float)) and math.isfinite(tikhonov) and tikhonov >= 0):
            raise ValueError(f"tikhonov = {tikhonov!r} must be a non-negative number")
        if not (isinstance(bias_std, (int, float)) and math.isfinite(bias_std) and bias_std >= 0):
            raise ValueError(f"bias_std = {bias_std!r} must be a non-negative number")
        self.step, self.step_decay = float(step), float(step_decay)
        self.noise, self.tikhonov = float(noise), float(tikhonov)
        self.bias_std = float(bias_std)
        self.randomization = None
        if METHODS[method]["randomize"]:
            self.randomization = randomization or RandomizationSchedule()
        elif randomization is not None:
            raise ValueError(f"randomization applies to the '-r' methods, not to method={method!r}")
        if momentum_restart not in (None, "epoch"):
            raise ValueError(f"momentum_restart = {momentum_restart!r} must be 'epoch' or None")
        if momentum_restart is not None and not METHODS[method]["momentum"]:
            raise ValueError(f"momentum_restart applies to the momentum methods (meki, meki-r), not to "
                             f"method={method!r}")
        self.momentum_restart = momentum_restart
        if momentum_coefficient is not None:
            if not METHODS[method]["momentum"]:
                raise ValueError(f"momentum_coefficient applies to the momentum methods (meki, meki-r), not to "
                                 f"method={method!r}")
            if isinstance(momentum_coefficient, bool) or not (isinstance(momentum_coefficient, (int, float))
                                                              and 0 < momentum_coefficient < 1):
                raise ValueError(f"momentum_coefficient = {momentum_coefficient!r} must be a number between 0 "
                                 "and 1 (or None for n/(n+3))")
            momentum_coefficient = float(momentum_coefficient)
        self.momentum_coefficient = momentum_coefficient
        self.patience = None if patience is None else _positive_int(patience, "patience", 1)
        if self.patience is not None and self.validation_set is None:
            raise ValueError("patience (early stopping) watches the validation metric: pass validation=... "
                             "(for example train.split(0.1))")
        self.ensemble_eval = ensemble_eval
        self.checkpoint_path = None if checkpoint is None else os.fspath(checkpoint)
        if self.checkpoint_path is not None and os.path.isdir(self.checkpoint_path):
            raise ValueError(f"checkpoint = {self.checkpoint_path!r} is a directory; pass a file path (.npz)")
        self.progress, self.device, self.backend = progress, device, backend
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype = {dtype!r} must be float32 or float64")
        if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
            raise TypeError(f"rng must be an integer seed (checkpoints record it for an exact resume), "
                            f"got {type(rng).__name__}")
        self.seed = int(rng)
        self.xp = device_namespace(device)

        seeds = np.random.SeedSequence(self.seed).spawn(3)
        # Biases get a prior spread too: EKI keeps every member in the span of the initial ensemble, so biases
        # that all start at zero would stay zero.
        U0 = self.xp.asarray(self.network.prior(self.ensemble_size, rng=np.random.default_rng(seeds[0]),
                                                dtype=self.dtype.name, bias_std=self.bias_std))
        self._prior_std = self.xp.asarray(self.network.prior_std(self.dtype.name, bias_std=self.bias_std))
        schedule = self.randomization
        # EKI applies the per-update randomisation itself (every = 0 switches that off for the per-epoch one,
        # which fit() applies); both draw around the mean from the network's Glorot prior.
        per_update = None if schedule is None else Randomization(
            scale=schedule.scale, every=schedule.every if schedule.when == "update" else 0, decay=schedule.decay,
            prior_std=self._prior_std, centred=schedule.centred)
        scheduler = AdaptiveStep(self.step) if update == "loss" else ConstantStep(self.step)
        self.optimizer = EKI(U0, noise_cov=self._noise_cov(), method=update, scheduler=scheduler,
                             momentum=METHODS[method]["momentum"] and (momentum_coefficient or True),
                             randomization=per_update,
                             rng=np.random.default_rng(seeds[1]), backend=backend)
        self._input_span = None
        if schedule is not None and schedule.input_span:
            if self.tikhonov:
                raise ValueError("input_span draws each update's members in a subspace of its own, where the "
                                 "Tikhonov term (on all parameters) is not defined: use tikhonov=0")
            self._input_span = InputSpan(self.network, self._prior_std, hidden=schedule.hidden_span)
        self._batch_rng = np.random.default_rng(seeds[2])
        self._data = {}
        self.epoch = 0
        self.history = []
        self._best_metric, self._best_epoch = None, None
        self._best_state = None  # with patience: the optimiser's state() at the best epoch
        self._average, self._best_average = None, None  # the epoch-averaged mean particle (see the class doc)
        self.stopped_early = False
        if resume and self.checkpoint_path and os.path.exists(self.checkpoint_path):
            self.load(self.checkpoint_path)

    # ---- data ------------------------------------------------------------------------------------------------

    def _check_splits(self):
        for name, data in (("train", self.train_set), ("validation", self.validation_set),
                           ("test", self.test_set)):
            if data is not None:
                self._check_split(data, name)

    def _check_split(self, data, name):
        """Raise if `data` does not fit this Trainer's task and network, or holds NaN/Inf: before training, so
        that a bad test set is not found after the first epoch."""
        if data.task != self.task:
            raise ValueError(f"{name} is a {data.task} set but train is a {self.task} set")
        features = int(np.prod(data.x.shape[1:]))
        if features != self.network.input_size:
            raise ValueError(f"{name}.x has {features} features per example but the network "
                             f"{self.model_name!r} takes {self.network.input_size} "
                             f"(input shape {self.network.input_shape})")
        expected = self._outputs_per_example()
        if self.task == "classification":
            if data.num_classes is not None and data.num_classes != self.network.output_size:
                raise ValueError(f"{name} has {data.num_classes} classes but the network outputs "
                                 f"{self.network.output_size} logits")
        elif self._targets_per_example(data) != expected:
            raise ValueError(f"{name}.y has {self._targets_per_example(data)} targets per example; the "
                             f"network outputs {self.network.output_size}, which fits {expected} targets "
                             f"with loss {self.loss!r}")
        for part in ("x", "y"):
            values = getattr(data, part)
            if values.dtype.kind == "f":
                require_finite(np, values, f"{name}.{part}")

    def _outputs_per_example(self):
        size = self.network.output_size
        return size // 2 if self.loss == "gaussian-nll" else size

    @staticmethod
    def _targets_per_example(data):
        return 1 if data.y.ndim == 1 else int(np.prod(data.y.shape[1:]))

    def _device_data(self, name):
        """The split's inputs (N, input_size) and targets on the training device, converted once."""
        if name not in self._data:
            data = {"train": self.train_set, "validation": self.validation_set, "test": self.test_set}[name]
            x = self.xp.asarray(np.ascontiguousarray(data.x.reshape(len(data), -1), dtype=self.dtype))
            if self.task == "classification":
                y = self.xp.asarray(data.y.astype(np.int64))
            else:
                y = self.xp.asarray(data.y.reshape(len(data), -1).astype(self.dtype))
            self._data[name] = (x, y)
        return self._data[name]

    def _noise_cov(self, batch=None):
        if self.update != "kalman" or self.tikhonov == 0:
            return self.noise
        # Tikhonov in the Kalman form: the data gamma for the outputs, 1/(2 lambda) for the parameter block.
        M = (batch or self.batch_size) * self.network.output_size
        return np.concatenate([np.full(M, self.noise), np.full(self.network.parameter_count,
                                                                  1 / (2 * self.tikhonov))]).astype(self.dtype)

    # ---- one update ------------------------------------------------------------------------------------------

    def _update(self, X, y):
        xp, opt = self.xp, self.optimizer
        if self._input_span is None:
            V = opt.ask()
            out = self.network.forward(V, X, backend=self.backend)  # (J, B, C)
        else:  # the members in the span's coordinates, on the network that reads them
            subspace = self._input_span.subspace(X, centre=opt.next_centre if self._input_span.hidden else None)
            V = opt.ask(subspace=subspace)
            out = subspace.forward(V, backend=self.backend)
        J, B = out.shape[0], out.shape[1]
        if self.update == "kalman":
            G = (_softmax(xp, out) if self.task == "classification" else out).reshape(J, -1)
            target = (xp.eye(self.network.output_size, dtype=G.dtype)[y] if self.task == "classification"
                      else y).reshape(-1)
            if self.tikhonov:
                G = xp.concatenate([G, V], axis=1)
                target = xp.concatenate([target, xp.zeros(V.shape[1], dtype=G.dtype)])
                opt.noise_cov = self._noise_cov(B)
            opt.tell(G, target)
            return float(opt.history[-1]["mean_member_loss"]) / B
        values, grad = self._loss(out, y)
        G = out.reshape(J, -1)
        grad = grad.reshape(J, -1)
        if self.tikhonov:
            G = xp.concatenate([G, V], axis=1)
            grad = xp.concatenate([grad, 2 * self.tikhonov * V], axis=1)
            values = values + self.tikhonov * xp.sum(V * V, axis=1)
        opt.tell(G, grad=grad, loss_values=values)
        return float(opt.history[-1]["mean_member_loss"]) / B

    def _loss(self, out, y):
        """Per-member loss summed over the batch and its gradient with respect to the network outputs."""
        xp = self.xp
        if self.loss == "cross-entropy":
            return losses.cross_entropy_logits(out, y, backend=self.backend)
        B = out.shape[1]
        if self.loss == "squared":
            return losses.squared(out, y.reshape(B, -1), backend=self.backend)
        k = out.shape[2] // 2
        mu, s = out[..., :k], out[..., k:]
        sigma = _softplus(xp, s)
        values, grad = losses.gaussian_nll(xp.concatenate([mu, sigma], axis=2), y.reshape(B, k),
                                           backend=self.backend)
        grad[..., k:] *= _sigmoid(xp, s)  # chain rule through the softplus
        return values, grad

    # ---- training loop ---------------------------------------------------------------------------------------

    def fit(self):
        """Train until `epochs` (or early stopping); returns the history (one dict per epoch)."""
        from tqdm.auto import tqdm

        X, y = self._device_data("train")
        N = X.shape[0]
        per_epoch = -(-N // self.batch_size)
        bar = tqdm(total=(self.epochs - self.epoch) * per_epoch, disable=not self.progress, unit="batch",
                   desc=f"{self.method} J={self.ensemble_size}")
        last_epoch = {}  # the last epoch's mean-particle metrics, shown beside each batch's loss
        while self.epoch < self.epochs and not self.stopped_early:
            start = time.perf_counter()
            losses_seen, failed = [], 0
            mean_sum = self.xp.zeros(self.network.parameter_count, dtype=np.float64)
            self.optimizer.scheduler.step = self.step * self.step_decay**self.epoch
            if self.momentum_restart == "epoch":
                self.optimizer.restart_momentum()
            for index in batches(N, self.batch_size, rng=self._batch_rng):
                index = self.xp.asarray(index)
                losses_seen.append(self._update(X[index], y[index]))
                mean_sum += self.optimizer.updated_mean
                failed += self.optimizer.history[-1]["failed_members"]
                bar.update(1)
                bar.set_postfix(epoch=self.epoch + 1, loss=f"{losses_seen[-1]:.4g}", **last_epoch)
            self._average = (mean_sum / len(losses_seen)).astype(self.dtype)
            schedule = self.randomization
            if schedule is not None and schedule.when == "epoch" and (self.epoch + 1) % schedule.every == 0:
                self.optimizer.randomize(scale=schedule.gamma(self.epoch))
            self.epoch += 1
            record = {"epoch": self.epoch, "train_loss": float(np.mean(losses_seen)),
                      "step": float(self.optimizer.history[-1]["step"]), "failed_members": int(failed),
                      "spread": float(ensemble_spread(self.optimizer.ensemble, backend=self.backend)),
                      "seconds": time.perf_counter() - start}
            record.update(self._epoch_metrics())
            self.history.append(record)
            last_epoch = {k: f"{v:.4g}" for k, v in record.items() if k.endswith("_mean") and isinstance(v, float)}
            bar.set_postfix(epoch=self.epoch, **last_epoch)
            self._early_stopping(record)
            if self.checkpoint_path:
                self.save(self.checkpoint_path)
        bar.close()
        if self.stopped_early and self._best_state is not None:
            self._restore_best()
        if self.ensemble_eval == "final" and self.history:
            for name in ("validation", "test"):
                if getattr(self, f"{name}_set") is not None:
                    metrics = self.evaluate(name, which=("ensemble",))
                    self.history[-1].update({f"{name}_{k}": v for k, v in metrics.items()})
        return self.history

    def _epoch_metrics(self):
        which = self._particles() + (("ensemble",) if self.ensemble_eval == "epoch" else ())
        record = {}
        for name in ("validation", "test"):
            if getattr(self, f"{name}_set") is not None:
                record.update({f"{name}_{k}": v for k, v in self.evaluate(name, which=which).items()})
        return record

    def _monitor(self, record):
        key = "validation_accuracy_mean" if self.task == "classification" else "validation_rmse_mean"
        value = record.get(key)
        return None if value is None else (value if self.task == "classification" else -value)

    def _early_stopping(self, record):
        value = self._monitor(record)
        if value is None:
            return
        if self._best_metric is None or value > self._best_metric:
            self._best_metric, self._best_epoch = value, self.epoch
            if self.patience is not None:
                arrays, info = self.optimizer.state()
                arrays.pop("V", None)  # training stops at the restore: the members suffice, not MEKI's next point
                self._best_state = ({k: v.copy() for k, v in arrays.items()}, info)
                self._best_average = self._average.copy()
        elif self.patience is not None and self.epoch - self._best_epoch >= self.patience:
            self.stopped_early = True

    def _restore_best(self):
        arrays, info = self._best_state
        self.optimizer.restore({k: v.copy() for k, v in arrays.items()}, info)
        self._average = None if self._best_average is None else self._best_average.copy()
        self.history.append({"epoch": self._best_epoch, "restored_best_epoch": True, **self._epoch_metrics()})

    # ---- evaluation ------------------------------------------------------------------------------------------

    def predict(self, X, *, which="mean", chunk=None):
        """Predictions on X (N, *input_shape): "mean" (the mean particle), "best" (the best particle), "average"
        (the mean particle averaged over the last epoch's updates) or "ensemble" (the average over members of
        the probabilities, or outputs for regression). Returns
        (N, C) probabilities / outputs (mu and sigma for the Gaussian NLL), and for "ensemble" also the spread
        (the std over members of the same quantities)."""
        xp = self.xp
        X = xp.asarray(X, dtype=self.dtype)
        X = X.reshape(X.shape[0], -1)
        if which == "ensemble":
            members = self.optimizer.ensemble
        elif which in ("mean", "best", "average"):
            members = self._particle(which)[None, :]
        else:
            raise ValueError(f"which = {which!r} must be 'mean', 'best', 'average' or 'ensemble'")
        J, C = members.shape[0], self.network.output_size
        chunk = chunk or max(1, min(X.shape[0], (1 << 24) // max(1, J * C)))
        parts = []
        for start in range(0, X.shape[0], chunk):
            out = self._transform(self.network.forward(members, X[start:start + chunk], backend=self.backend))
            if which != "ensemble":
                parts.append(out[0])
                continue
            parts.append((out.mean(axis=0), out.std(axis=0)))
        if which != "ensemble":
            return xp.concatenate(parts)
        return xp.concatenate([p[0] for p in parts]), xp.concatenate([p[1] for p in parts])

    def _particles(self):
        """The single networks evaluated by default: the mean and best particles, and the average once it exists."""
        return ("mean", "best") + (("average",) if self._average is not None else ())

    def _transform(self, out):
        """Network outputs to predictions: probabilities for classification, sigma = softplus(s) for NLL."""
        xp = self.xp
        if self.task == "classification":
            return _softmax(xp, out)
        if self.loss == "gaussian-nll":
            k = out.shape[2] // 2
            return xp.concatenate([out[..., :k], _softplus(xp, out[..., k:])], axis=2)
        return out

    def _particle(self, which):
        U = self.optimizer.ensemble
        if which == "average":
            if self._average is None:
                raise ValueError("the 'average' particle (the mean averaged over an epoch's updates) exists after "
                                 "fit() has trained an epoch; use 'mean' before")
            return self._average
        if which == "mean":
            return ensemble_mean(U, backend=self.backend)
        if self.validation_set is not None:  # lowest loss on (up to 1000 examples of) the validation set
            X, y = self._device_data("validation")
            X, y = X[:1000], y[:1000]
            values, _ = self._loss(self.network.forward(U, X, backend=self.backend), y)
            values = to_host(values)
            return U[int(np.argmin(np.where(np.isfinite(values), values, np.inf)))]
        best = self.optimizer.best
        return ensemble_mean(U, backend=self.backend) if best is None else best

    def evaluate(self, data="test", *, which=None):
        """Metrics on a split name ("test", "validation", "train") or a Dataset: accuracy (classification) or
        RMSE (regression) of each predictor in `which` (see predict; default "mean", "best", and "average" once
        an epoch is trained), plus for "ensemble" the mean spread."""
        which = self._particles() if which is None else which
        if isinstance(data, Dataset):
            self._check_split(_check_dataset(data, "data"), "data")
            x = self.xp.asarray(data.x.reshape(len(data), -1).astype(self.dtype))
            y = self.xp.asarray(data.y)
        else:
            if data not in ("train", "validation", "test") or (data != "train" and
                                                                getattr(self, f"{data}_set") is None):
                raise ValueError(f"no {data!r} set: pass a Dataset or one of the splits given to the Trainer")
            x, y = self._device_data(data)
        metrics = {}
        for name in which:
            prediction = self.predict(x, which=name)
            spread = None
            if name == "ensemble":
                prediction, spread = prediction
            metrics.update(self._metrics(prediction, spread, y, name))
        return metrics

    def _metrics(self, prediction, spread, y, name):
        xp = self.xp
        if self.task == "classification":
            labels = xp.argmax(prediction, axis=1)
            result = {f"accuracy_{name}": float(xp.mean(labels == y.reshape(-1)))}
            if spread is not None:
                result[f"spread_{name}"] = float(xp.mean(xp.take_along_axis(spread, labels[:, None], axis=1)))
            return result
        k = self._outputs_per_example()
        mu = prediction[:, :k]
        result = {f"rmse_{name}": float(xp.sqrt(xp.mean((mu - y.reshape(mu.shape)) ** 2)))}
        if spread is not None:
            result[f"spread_{name}"] = float(xp.mean(spread[:, :k]))
        return result

    # ---- checkpoints -----------------------------------------------------------------------------------------

    def _config(self):
        return {"model": self.model_name, "parameters": self.network.parameter_count, "method": self.method,
                "update": self.update, "loss": self.loss, "ensemble": self.ensemble_size,
                "batch_size": self.batch_size, "step": self.step, "step_decay": self.step_decay, "noise": self.noise,
                "momentum_restart": self.momentum_restart, "momentum_coefficient": self.momentum_coefficient,
                "tikhonov": self.tikhonov, "bias_std": self.bias_std,
                "randomization": None if self.randomization is None else dataclasses.asdict(self.randomization),
                "dtype": self.dtype.name, "rng": self.seed, "train_size": len(self.train_set)}

    def save(self, path):
        """Write a checkpoint (ensemble, optimiser and RNG state, history) atomically: a crash mid-write
        leaves the previous checkpoint intact."""
        opt = self.optimizer
        optimizer_arrays, optimizer_state = opt.state()
        state = {"version": CHECKPOINT_VERSION, "config": self._config(), "epoch": self.epoch,
                 "history": self.history, "optimizer_history": opt.history, "iteration": optimizer_state["iteration"],
                 "momentum_start": optimizer_state["momentum_start"], "optimizer_rng": optimizer_state["rng"],
                 "members_drawn_from": optimizer_state["drawn_from"],
                 "batch_rng": self._batch_rng.bit_generator.state,
                 "scheduler": vars(opt.scheduler), "best_metric": self._best_metric,
                 "best_epoch": self._best_epoch, "stopped_early": self.stopped_early}
        arrays = {name: to_host(array) for name, array in optimizer_arrays.items()}
        if self._best_state is not None:
            best_arrays, state["best_epoch_optimizer"] = self._best_state
            arrays.update({f"best_epoch_{name}": to_host(array) for name, array in best_arrays.items()})
        for name, array in (("best_epoch_average", self._best_average), ("average", self._average)):
            if array is not None:
                arrays[name] = to_host(array)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_write(path, "wb") as f:
            np.savez(f, state=np.frombuffer(json.dumps(state).encode(), dtype=np.uint8), **arrays)

    def load(self, path):
        """Restore a checkpoint written by save() by a Trainer with the same configuration."""
        state, arrays = _read_checkpoint(path)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        saved = {**CONFIG_ADDED_SINCE_VERSION, **state["config"]}
        if saved.get("randomization") is not None:  # written before the schedule had `centred`, `input_span`
            saved["randomization"] = {"centred": False, "input_span": False, "hidden_span": False,
                                      **saved["randomization"]}
        differences = {k: (v, saved.get(k)) for k, v in self._config().items() if saved.get(k) != v}
        if differences:
            text = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (new, old) in differences.items())
            raise ValueError(f"{path} was written with another configuration ({text}); resume with the same "
                             "settings or start a new checkpoint")
        self._check_checkpoint_arrays(path, arrays)
        xp, opt = self.xp, self.optimizer
        # Checkpoints from before these keys restarted the momentum only at epochs, which a resume repeats.
        info = {"iteration": state["iteration"], "momentum_start": state.get("momentum_start", 0),
                "rng": state["optimizer_rng"], "drawn_from": state.get("members_drawn_from")}
        best = {k: xp.asarray(arrays[f"best_epoch_{k}"]) for k in OPTIMIZER_ARRAYS if f"best_epoch_{k}" in arrays}
        best_info = state.get("best_epoch_optimizer")
        if best and best_info is None:
            if set(best) != {"U"}:
                raise ValueError(f"{path}: the checkpoint has the best epoch's arrays but not its optimiser state; "
                                 "it is damaged: resume from another checkpoint or start afresh")
            # Written before best_epoch_optimizer: the best epoch's members only, to stop with, and the best member.
            best_info = dict(info, drawn_from=None)
            if "best" in arrays:
                best["best"] = xp.asarray(arrays["best"])
        try:
            opt.restore({k: xp.asarray(arrays[k]) for k in OPTIMIZER_ARRAYS if k in arrays}, info)
        except ValueError as error:
            raise ValueError(f"{path}: {error}; resume from another checkpoint or start afresh") from None
        opt.history = state["optimizer_history"]
        vars(opt.scheduler).update(state["scheduler"])
        self._batch_rng.bit_generator.state = state["batch_rng"]
        self.epoch, self.history = state["epoch"], state["history"]
        self._best_metric, self._best_epoch = state["best_metric"], state["best_epoch"]
        self._best_state = (best, best_info) if best else None
        # Checkpoints written before the average existed have none: it returns after the next epoch.
        self._average = xp.asarray(arrays["average"]) if "average" in arrays else None
        self._best_average = xp.asarray(arrays["best_epoch_average"]) if "best_epoch_average" in arrays else None
        self.stopped_early = state["stopped_early"]

    def _check_checkpoint_arrays(self, path, arrays):
        """Every array a checkpoint holds has this Trainer's shape and dtype and finite values: a damaged or
        edited file must not resume as another ensemble."""
        J, P = self.ensemble_size, self.network.parameter_count
        optimizer = {"U": (J, P), "V": (J, P), "centre": (P,), "shift": (P,), "best": (P,)}
        shapes = {**optimizer, **{f"best_epoch_{k}": shape for k, shape in optimizer.items()}, "average": (P,),
                  "best_epoch_average": (P,)}
        if "U" not in arrays and "centre" not in arrays:
            raise ValueError(f"{path}: the checkpoint has neither the members (U) nor the centre they are drawn "
                             "around; it is damaged or not written by Trainer.save")
        for name, array in arrays.items():
            expected = shapes.get(name)
            if expected is None:
                raise ValueError(f"{path}: unexpected array {name!r} in the checkpoint; expected only "
                                 f"{', '.join(shapes)}")
            if array.shape != expected or array.dtype != self.dtype:
                raise ValueError(f"{path}: checkpoint array {name} has shape {array.shape} and dtype {array.dtype}; "
                                 f"this Trainer needs {expected} {self.dtype.name} (J = {J}, P = {P})")
            # In blocks of rows: a J x P boolean mask of DNN 4 at J = 2000 alone would take 1.1 GB.
            rows = array.reshape(-1, array.shape[-1])  # (P,) -> (1, P)
            bad = sum(int(np.count_nonzero(~np.isfinite(rows[first:first + 64]))) for first in range(0, len(rows), 64))
            if bad:
                raise ValueError(f"{path}: checkpoint array {name} holds {bad} NaN/Inf value(s); the file is "
                                 "damaged: resume from an earlier checkpoint or start afresh")

    # ---- reporting -------------------------------------------------------------------------------------------

    def save_history(self, path):
        """The per-epoch history as CSV (by extension .csv) or JSON."""
        path = os.fspath(path)
        if path.endswith(".csv"):
            import csv

            keys = list(dict.fromkeys(k for record in self.history for k in record))
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.history)
        else:
            with open(path, "w") as f:
                json.dump(self.history, f, indent=1)

    def plot_history(self, ax=None):
        """Learning curves: training loss and, when evaluated, the mean particle's test/validation metric."""
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        epochs = [r["epoch"] for r in self.history if "train_loss" in r]
        ax.plot(epochs, [r["train_loss"] for r in self.history if "train_loss" in r], label="train loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        metric = "accuracy" if self.task == "classification" else "rmse"
        twin = ax.twinx()
        for split in ("validation", "test"):
            for particle, style, text in (("mean", "--", "mean particle"), ("average", ":", "epoch-averaged mean")):
                values = [r.get(f"{split}_{metric}_{particle}") for r in self.history if "train_loss" in r]
                if any(v is not None for v in values):
                    twin.plot(epochs, values, style, label=f"{split} {metric} ({text})")
        twin.set_ylabel(metric)
        twin.legend(loc="center right")
        ax.legend(loc="upper right")
        return ax

    def plot_predictions(self, data="test", ax=None, *, limit=200):
        """Regression: truth against the ensemble-averaged prediction with a +-2 spread band (first `limit`
        examples)."""
        import matplotlib.pyplot as plt

        if self.task != "regression":
            raise ValueError("plot_predictions is for regression tasks")
        if isinstance(data, str):
            x, y = self._device_data(data)
        else:
            self._check_split(_check_dataset(data, "data"), "data")
            x, y = data.x, data.y
        mean, spread = self.predict(x[:limit], which="ensemble")
        mean, spread = to_host(mean), to_host(spread)
        y = to_host(y[:limit]).reshape(len(mean), -1)[:, 0]
        band, label = spread[:, 0], "+-2 ensemble std"
        if self.loss == "gaussian-nll":  # the network's own sigma (averaged over members) and the ensemble spread
            k = self._outputs_per_example()
            band, label = np.sqrt(mean[:, k] ** 2 + spread[:, 0] ** 2), "+-2 predictive std (sigma and ensemble)"
        mean = mean[:, 0]
        ax = ax or plt.gca()
        index = np.arange(len(y))
        ax.plot(index, y, "k.", label="truth")
        ax.plot(index, mean, label="ensemble mean")
        ax.fill_between(index, mean - 2 * band, mean + 2 * band, alpha=0.3, label=label)
        ax.legend()
        return ax


def _check_dataset(data, name):
    if not isinstance(data, Dataset):
        raise TypeError(f"{name} must be an ekinet.datasets.Dataset, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{name} is empty")
    if data.task == "classification" and data.num_classes is None:
        raise ValueError(f"{name} is a classification set without num_classes")
    return data


def _positive_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} = {value!r} must be an integer >= {minimum}")
    return int(value)


def _softmax(xp, z):
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softplus(xp, s):
    return xp.logaddexp(s, 0) + 1e-6  # the floor keeps sigma and the NLL finite when s is very negative


def _sigmoid(xp, s):
    return 1 / (1 + xp.exp(-s))


