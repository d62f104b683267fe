"""Online (filtering) training of recurrent regressors on a time series by EKI (eki-math section 7).

The observations arrive one at a time: the network reads y_{t-1} and predicts y_t. Every member of the
ensemble carries its own recurrent state from one update to the next, so a member's prediction depends on the
whole past of the series, as a recurrent model's should, while each update costs one forward step of the
ensemble and one Kalman update with M = 1 (or M = window). The prediction of each point is recorded before
that point is used in an update, so the errors are honest out-of-sample one-step-ahead errors, as in Kovachki &
Stuart's online experiments ("First": the first sweep through the series, "Final": the last).

>>> from ekinet import datasets, online
>>> series = datasets.load_series("melbourne")
>>> result = online.online_regression(series, "lstm:1-32-1", ensemble=100, passes=2)
>>> result.first, result.final, result.persistence_error   # MSEs in the min-max scaled units
>>> result.plot()
"""

import dataclasses
import numbers
import time

import numpy as np

from . import datasets, nn
from ._arrays import device_namespace, to_host
from .ensemble import randomize
from .updates import kalman_update

__all__ = ["OnlineResult", "online_regression"]


@dataclasses.dataclass(eq=False)
class OnlineResult:
    """Online one-step-ahead predictions of a series and their errors.

    predictions, spread : (passes, T) ensemble-average prediction (1/J) sum_j G_j of each target, made before
        the target was used, and the standard deviation over members (zero for a single network).
    targets : (T,) the predicted values y_1 .. y_T (the series without its first value), in the units the
        network saw (min-max scaled to [0, 1] when scale=True; unscale() maps back).
    errors : (passes,) mean squared error of each pass; first = errors[0], final = errors[-1].
    persistence_error : MSE of the naive forecast y_t = y_{t-1}, the bar a forecaster must clear.
    ensemble : the final (J, P) parameters (one row for a gradient-trained network); network : the nn.Sequential
        they belong to. seconds : wall time of the training.
    lo, hi : the scaling y_scaled = (y - lo) / (hi - lo) (0 and 1 when the series was not scaled).
    """

    predictions: np.ndarray
    spread: np.ndarray
    targets: np.ndarray
    errors: np.ndarray
    first: float
    final: float
    persistence_error: float
    ensemble: np.ndarray
    network: nn.Sequential
    seconds: float
    lo: float = 0.0
    hi: float = 1.0
    times: np.ndarray | None = None
    name: str = "series"
    method: str = "EKI"
    settings: dict = dataclasses.field(default_factory=dict)

    def unscale(self, values):
        """Values in the network's units back in the series' own units."""
        return self.lo + (self.hi - self.lo) * np.asarray(values)

    def to_dict(self):
        """A JSON-serialisable summary (errors, timing, settings; not the arrays)."""
        return {
            "method": self.method,
            "series": self.name,
            "points": int(self.targets.shape[0]),
            "passes": int(self.errors.shape[0]),
            "errors": [float(e) for e in self.errors],
            "first": float(self.first),
            "final": float(self.final),
            "persistence_error": float(self.persistence_error),
            "parameters": int(self.network.parameter_count),
            "members": int(self.ensemble.shape[0]),
            "seconds": float(self.seconds),
            "lo": float(self.lo),
            "hi": float(self.hi),
            "settings": dict(self.settings),
        }

    def plot(self, ax=None, pass_index=-1, *, baseline=None):
        """Truth against the online prediction of pass `pass_index`, with a +-2 spread band (needs matplotlib);
        baseline: another OnlineResult on the same series (the OGD baseline), drawn for the same pass. Returns
        the axes."""
        import matplotlib.pyplot as plt

        if baseline is not None and not np.array_equal(baseline.targets, self.targets):
            raise ValueError(f"baseline ({baseline.method}, {baseline.targets.shape[0]} points of "
                             f"{baseline.name}) was not run on this series ({self.targets.shape[0]} points of "
                             f"{self.name})")
        ax = ax or plt.gca()
        prediction, spread = self.predictions[pass_index], self.spread[pass_index]
        x = np.arange(1, self.targets.shape[0] + 1) if self.times is None else self.times
        label = f"{self.method} (pass {range(self.errors.shape[0])[pass_index] + 1})"
        ax.plot(x, self.targets, color="0.3", lw=0.8, label="truth")
        ax.plot(x, prediction, color="C0", lw=0.8, label=label)
        if np.any(spread > 0):
            ax.fill_between(x, prediction - 2 * spread, prediction + 2 * spread, color="C0", alpha=0.25, lw=0,
                            label="+-2 spread")
        if baseline is not None:
            ax.plot(x, baseline.predictions[pass_index], color="C1", lw=0.8,
                    label=f"{baseline.method} (MSE {baseline.errors[pass_index]:.3e})")
        ax.set_xlabel("time" if self.times is not None else "step")
        ax.set_ylabel(f"{self.name} (scaled)" if (self.lo, self.hi) != (0.0, 1.0) else self.name)
        ax.set_title(f"{self.name}: MSE {self.errors[pass_index]:.3e} "
                     f"(persistence {self.persistence_error:.3e})")
        ax.legend()
        return ax


# ----------------------------------------------------------------------------------------------------------
# shared with the gradient baseline (ekinet.baselines)
# ----------------------------------------------------------------------------------------------------------


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} = {value} must be >= {minimum}")
    return int(value)


def _positive_float(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} = {value!r} must be a positive finite number")
    return float(value)


def _prepare_series(series, scale, window):
    """(values, lo, hi, times, name): the series as float64, min-max scaled if asked, checked."""
    times, name = None, "series"
    if isinstance(series, datasets.TimeSeries):
        times, name = series.times, series.name
        series = series.values
    try:
        values = np.asarray(series)
    except (TypeError, ValueError) as error:  # ragged lists, device arrays
        raise TypeError(f"series must be a 1-D array of real numbers or a datasets.TimeSeries, got "
                        f"{type(series).__name__} ({error})") from error
    if values.dtype.kind not in "biuf":  # strings would be parsed and complex numbers cut to their real part
        raise TypeError(f"series must be a 1-D array of real numbers or a datasets.TimeSeries, got "
                        f"{type(series).__name__} of dtype {values.dtype}")
    values = values.astype(np.float64)
    if values.ndim != 1:
        raise ValueError(f"series has shape {values.shape}; expected a 1-D series of values (one variable)")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"series holds {bad.size} NaN/Inf value(s), the first at index {bad[0]}; fill or drop "
                         "the gaps first (online training needs every observation)")
    if values.shape[0] < window + 1:
        raise ValueError(f"series has {values.shape[0]} value(s); a window of {window} needs at least {window + 1} "
                         "(each target y_t is predicted from y_(t-1))")
    lo, hi = 0.0, 1.0
    if scale:
        if values.max() == values.min():
            raise ValueError(f"series is constant ({values[0]}): nothing to learn, and min-max scaling needs "
                             "max > min; pass scale=False to use it as it is")
        values, (lo, hi) = datasets.minmax_scale(values)
    return values, lo, hi, (None if times is None else times[1:]), name


def _check_regressor(model):
    """The nn.Sequential of `model` (a string form or a network), checked to map one feature to one output per
    step with RNN/LSTM/Dense layers only."""
    if isinstance(model, str):
        model = nn.from_string(model)
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be a string such as 'lstm:1-32-1' or an nn.Sequential, got "
                        f"{type(model).__name__}")
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, (nn.RNN, nn.Dense)):
            raise ValueError(f"model layer {i} is {layer!r}; online regression takes RNN, LSTM and Dense layers "
                             "(a sequence of one feature in, one value out per step)")
        if getattr(layer, "activation", None) == "softmax":
            raise ValueError(f"model layer {i} uses softmax, whose single output is always 1; use an identity, "
                             "sigmoid or tanh output for regression")
    features = model.input_shape[-1]
    if features != 1 or len(model.input_shape) > 2:
        raise ValueError(f"model takes input of shape {model.input_shape} per example; online regression feeds "
                         "one feature per step, (steps, 1) (e.g. 'lstm:1-32-1')")
    if isinstance(model.layers[-1], nn.RNN) or model.layers[-1].units != 1:
        raise ValueError(f"model outputs {model.output_shape} per example; online regression needs one value "
                         "per step: end the network with Dense(1) (e.g. 'lstm:1-32-1')")
    return model


def _window_network(model, steps):
    """The same parameters run over `steps` steps with a readout on every step: every recurrent layer returns
    its sequence, so Dense layers act on each step. Output (steps, 1) per example."""
    layers = [type(layer)(layer.hidden, return_sequences=True) if isinstance(layer, nn.RNN) else layer
              for layer in model.layers]
    network = nn.Sequential(layers, (steps, 1))
    assert network.parameters == model.parameters  # the readout on every step changes no parameter
    return network


def _windows(count, window):
    """(start, stop) of each update over `count` targets: blocks of `window`, the last one possibly shorter."""
    return [(start, min(start + window, count)) for start in range(0, count, window)]


def _result(predictions, spread, targets, inputs, ensemble, network, seconds, lo, hi, times, name, method,
            settings):
    errors = np.mean((predictions - targets) ** 2, axis=1)
    return OnlineResult(predictions=predictions, spread=spread, targets=targets, errors=errors,
                        first=float(errors[0]), final=float(errors[-1]),
                        persistence_error=float(np.mean((targets - inputs) ** 2)), ensemble=ensemble,
                        network=network, seconds=seconds, lo=lo, hi=hi, times=times, name=name, method=method,
                        settings=settings)


# ----------------------------------------------------------------------------------------------------------
# online EKI
# ----------------------------------------------------------------------------------------------------------


def _spread(spread, model):
    """The members' spread around their centre: "auto" picks it by the recurrent cell (see online_regression)."""
    if spread == "auto":
        return 0.1 if any(type(layer) is nn.RNN for layer in model.layers) else 1.0
    return None if spread is None else _positive_float(spread, "spread")


def _initial_ensemble(model, J, spread, bias_std, generator, dtype):
    """(J, P) members u_0 + spread * xi_j around one prior draw u_0 (drawn first, so the members' offsets do
    not depend on J), or independent prior draws when spread is None."""
    if spread is None:
        return model.prior(J, rng=generator, dtype=dtype, bias_std=bias_std)
    centre = model.prior(1, rng=generator, dtype="float64", bias_std=bias_std)
    offsets = model.prior(J, rng=generator, dtype=dtype, bias_std=bias_std)
    return (centre + spread * offsets.astype(np.float64)).astype(offsets.dtype)


def _moments(xp, G, finite):
    """Per column of G, the mean and standard deviation (float64) over the members whose row is finite, without
    reading `finite` on the host: on a GPU that would wait for the device at every observation."""
    weight = finite.astype(xp.float64)[:, None]
    kept = xp.where(finite[:, None], G, 0).astype(xp.float64)
    count = weight.sum()
    mean = kept.sum(axis=0) / count
    return mean, xp.sqrt((((kept - mean) ** 2) * weight).sum(axis=0) / count)


def online_regression(series, model="lstm:1-32-1", *, ensemble=100, passes=1, window=1, noise=1e-2, step=1.0,
                      randomization=None, perturb=True, bias_std=0.0, scale=True, rng=0, progress=True,
                      backend="auto", dtype="float32", spread="auto", device="cpu"):
    """Train a recurrent regressor by EKI while it predicts the series one step ahead.

    series : 1-D values or a datasets.TimeSeries; NaN/Inf is an error. With scale=True it is min-max scaled to
        [0, 1] and every error is in those units (as in the paper); result.unscale maps back.
    model : a string form ("lstm:1-32-1", "rnn:1-16-1", ...) or an nn.Sequential of RNN/LSTM/Dense layers
        reading one feature per step and ending in Dense(1). The input at time t is y_{t-1}, the target y_t.
    ensemble : J members u_j = u_0 + spread * xi_j around one network u_0 of the Glorot prior (biases
        N(0, bias_std^2)), xi_j from the same prior; spread=None draws the members independently from the prior
        instead (the former behaviour, kept for comparison). EKI keeps the ensemble in the span of its prior,
        so with bias_std=0 (the prior's default) every bias stays zero.
    spread : the members' offsets from their shared centre, a fraction of the prior; "auto" (default): 0.1 for
        a network with an Elman RNN layer, 1.0 otherwise (LSTM, Dense). Why a shared centre: the Kalman update
        regresses the parameters linearly on the outputs. Over independent Glorot draws a tanh network's output
        is an odd function of its weights (E[h] = 0), so no weight correlates with it and only the readout bias
        is corrected: an Elman RNN(32) on the Melbourne series stayed at MSE 0.108 / 0.059 (first / third pass,
        J = 200), ten times the persistence forecast's 0.0108. Around a shared centre the output is nearly
        linear in the members' offsets (R^2 0.98 at spread 0.05, 0.86 at 0.2, RNN(32)) and the update becomes
        a Gauss-Newton-like step: 0.0090 / 0.0083 at spread 0.1 (noise 3e-4). Measured on both series with
        J = 200, 3 passes: the Elman RNN is best at 0.1 (0.2 and 0.5 were worse, 0.2 unstable in its second
        pass); the LSTM, whose output moves about four times less per unit of spread, needs 1.0 (Melbourne,
        noise 1e-3: 0.0090 / 0.0083, against 0.0109 / 0.0093 at 0.1 and 0.0095 / 0.0083 with independent
        draws; on a noisy sine 0.3 left it at twice its error at 1.0).
    passes : sweeps through the series; each starts from a zero recurrent state, the ensemble carries over.
    window : observations per update. 1: each new point is one update (M = 1). w > 1 ("batched online"): the
        next w points are predicted by running w steps from the carried state, and one update uses all w
        (M = w); the state after the window is carried on.
    noise, step : the noise variance gamma (scaled units) and the step h of the Kalman update; with
        perturb=True (default) the observations are perturbed, eta_j ~ N(0, gamma / h).
    randomization : an ekinet.Randomization applied after every `every` updates: u_j <- ubar + gamma(n) xi_j,
        n counting updates, xi_j from the network's prior (prior_std() with bias_std, times the
        Randomization's prior_std, which may be a scalar factor or one value per parameter).
    rng : seed or numpy Generator for the prior, the perturbations and the randomisation (same seed, same run).
    backend, dtype : of the forward pass and the update ("auto": the native core).
    device : "cpu" (NumPy) or "cuda" (CuPy: the ensemble, the recurrent state and the predictions stay on the
        GPU, where a one-step network runs whole in one launch; the results come back as NumPy arrays).

    Returns an OnlineResult.
    """
    from tqdm.auto import tqdm

    model = _check_regressor(model)
    J = _positive_int(ensemble, "ensemble", 2)
    passes = _positive_int(passes, "passes")
    window = _positive_int(window, "window")
    noise = _positive_float(noise, "noise")
    step = _positive_float(step, "step")
    spread = _spread(spread, model)
    if randomization is not None and not hasattr(randomization, "gamma"):
        raise TypeError(f"randomization must be an ekinet.Randomization or None, got {type(randomization).__name__}")
    xp = device_namespace(device)
    values, lo, hi, times, name = _prepare_series(series, scale, window)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    inputs, targets = values[:-1], values[1:]
    blocks = _windows(targets.shape[0], window)
    networks = {size: _window_network(model, size) for size in {stop - start for start, stop in blocks}}
    U = xp.asarray(_initial_ensemble(model, J, spread, bias_std, generator, dtype))
    with np.errstate(over="ignore"):  # the overflow is what is checked
        representable = np.all(np.isfinite(values.astype(U.dtype)))
    if not representable:
        raise ValueError(f"series holds values beyond the range of {U.dtype} (largest magnitude "
                         f"{np.abs(values).max():.3g}); pass scale=True or rescale it, or use dtype='float64'")
    X = xp.asarray(inputs.astype(U.dtype).reshape(1, -1, 1))
    y = xp.asarray(targets)
    prior_std = None
    if randomization is not None:
        factor = np.asarray(randomization.prior_std, U.dtype)
        if factor.size not in (1, model.parameter_count):
            raise ValueError(f"randomization.prior_std has {factor.size} values; pass one factor for the network's "
                             f"prior or one value per parameter ({model.parameter_count})")
        prior_std = xp.asarray(model.prior_std(U.dtype, bias_std=bias_std) * factor.reshape(-1))
    predictions = xp.empty((passes, targets.shape[0]))
    deviations = xp.empty_like(predictions)

    updates = 0
    started = time.perf_counter()
    with tqdm(total=passes * len(blocks), desc="online EKI", unit="update", disable=not progress) as bar:
        for p in range(passes):
            state = None
            for start, stop in blocks:
                G, state = networks[stop - start].forward(U, X[:, start:stop], state=state, return_state=True,
                                                          backend=backend)
                G = G.reshape(J, stop - start)
                finite = xp.isfinite(G).all(axis=1)
                # kalman_update redraws failed members: restart their memory too (a select, not a masked write)
                state = xp.where(finite[:, None], state, 0)
                predictions[p, start:stop], deviations[p, start:stop] = _moments(xp, G, finite)
                U = kalman_update(U, G, y[start:stop], noise, rng=generator, perturb=perturb, step=step,
                                  backend=backend)
                updates += 1
                if randomization is not None and randomization.every and updates % randomization.every == 0:
                    U = randomize(U, randomization.gamma(updates), prior_std=prior_std, rng=generator,
                                  centred=randomization.centred, backend=backend)
                bar.update()
                if progress and (updates % 100 == 0 or stop == targets.shape[0]):
                    error = float(xp.mean((predictions[p, :stop] - y[:stop]) ** 2))
                    bar.set_postfix(pass_=p + 1, mse=f"{error:.3e}")
    seconds = time.perf_counter() - started

    settings = {"model": repr(model.layers), "ensemble": J, "window": window, "noise": noise, "step": step,
                "perturb": bool(perturb), "bias_std": float(bias_std),
                "spread": None if spread is None else float(spread), "scale": bool(scale), "dtype": str(U.dtype),
                "device": device,
                "randomization": None if randomization is None else {
                    "scale": float(randomization.scale), "every": int(randomization.every),
                    "decay": float(randomization.decay), "centred": bool(randomization.centred)}}
    return _result(to_host(predictions), to_host(deviations), targets, inputs, to_host(U), model, seconds, lo, hi,
                   times, name, "EKI", settings)
