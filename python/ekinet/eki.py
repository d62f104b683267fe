"""EKI as an ask/tell optimiser for black-box forward models, and a minimize() loop with a progress bar."""

import dataclasses
import math
import numbers

import numpy as np

from . import losses
from ._arrays import namespace_of, to_host
from ._backend import BACKENDS
from ._inputs import choice, ensemble, require_finite, seed_from
from .ensemble import ensemble_mean, ensemble_spread, randomize, randomize_around
from .schedulers import AdaptiveStep, ConstantStep, DataMisfitController
from .updates import FAILURE_POLICIES, FORMULATIONS, kalman_update, loss_update, nesterov_extrapolate

METHODS = ("kalman", "loss")


@dataclasses.dataclass
class Randomization:
    """EKI(R): every `every` updates, u_j <- ubar + gamma(n) xi_j with gamma(n) = scale * decay**n and xi_j
    drawn from the centred prior N(0, prior_std^2) (prior_std: one value or one per parameter). centred: subtract
    the draws' sample mean, so that the redrawn ensemble's mean is ubar exactly."""

    scale: float = 0.1
    every: int = 1
    decay: float = 1.0
    prior_std: object = 1.0
    centred: bool = False

    def gamma(self, n):
        return self.scale * self.decay**n


def _momentum(momentum):
    """False, True (Nesterov's n/(n+3)) or a constant coefficient in (0, 1)."""
    if isinstance(momentum, (bool, np.bool_)):
        return bool(momentum)
    if isinstance(momentum, (int, float, np.floating)) and 0 < momentum < 1:
        return float(momentum)
    raise ValueError(f"momentum = {momentum!r} must be False, True (the coefficient n/(n+3)) or a constant "
                     "coefficient between 0 and 1")


class EKI:
    """Ensemble Kalman inversion of a black-box forward model, driven by ask() and tell().

    >>> opt = EKI(U0, noise_cov=0.01, rng=0)
    >>> for _ in range(20):
    ...     U = opt.ask()                      # (J, P) parameters to evaluate
    ...     opt.tell(forward(U), y)            # (J, M) outputs; the Kalman update
    >>> opt.mean, opt.history[-1]

    method : "kalman" (the EKI update, needs y) or "loss" (the general-loss scheme, needs grad, or y for the
        least-squares loss).
    scheduler : ConstantStep(h), AdaptiveStep(h) (loss scheme) or DataMisfitController() (Kalman); default
        ConstantStep(1) for "kalman" and AdaptiveStep(1) for "loss".
    momentum : Nesterov acceleration (MEKI), v_{n+1} = u_{n+1} + c_n (u_{n+1} - u_n). True: c_n = n/(n+3), the
        paper's; a number in (0, 1): that constant (c_0 = 0 all the same). restart_momentum() starts n again from
        0. Under a redraw of every member after an update, the redrawn members share the velocity of the mean.
    randomization : a Randomization for EKI(R), or None. An update after which every member is redrawn computes
        only the mean of the updated ensemble (output="mean"), which is all the redraw uses.
        ask(subspace=...) then draws each update's members in a subspace chosen for it (see ask).
    perturb : "kalman" only: draw perturbed observations eta_j ~ N(0, Gamma/h) (True) or not.
    """

    def __init__(self, U0, *, noise_cov=1.0, method="kalman", scheduler=None, momentum=False, randomization=None,
                 perturb=True, formulation="auto", on_failure="redraw", rng=None, backend="auto"):
        if method not in METHODS:
            raise ValueError(f"method = {method!r} is not one of {', '.join(map(repr, METHODS))}")
        xp, U0 = ensemble(U0, "U0")
        require_finite(xp, U0, "U0")
        if isinstance(noise_cov, numbers.Real) and not (math.isfinite(noise_cov) and noise_cov > 0):
            raise ValueError(f"noise_cov = {noise_cov!r} must be a positive, finite variance")
        self.method = method
        self.noise_cov = noise_cov
        self.scheduler = scheduler or (ConstantStep(1.0) if method == "kalman" else AdaptiveStep(1.0))
        if method == "kalman" and isinstance(self.scheduler, AdaptiveStep):
            raise ValueError("AdaptiveStep belongs to the loss scheme; use ConstantStep or DataMisfitController")
        self.momentum = _momentum(momentum)
        self.randomization = randomization
        self.perturb = bool(perturb)
        self.formulation = choice(formulation, "formulation", FORMULATIONS)
        self.on_failure = choice(on_failure, "on_failure", FAILURE_POLICIES)
        self.backend = choice(backend, "backend", BACKENDS)
        self._rng = np.random.default_rng(seed_from(rng))
        self._U = U0.copy()
        self._V = self._U  # where the forward model is evaluated (differs from U under momentum)
        self._centre = None  # the mean the last update computed, when the members were then redrawn around it
        self._shift = None  # MEKI(R): c (centre - previous centre), where the redrawn members are evaluated
        self._drawn_from = None  # the RNG state before _U was drawn around _centre, which repeats that draw
        self._members = U0.shape[0]
        self._pending = None  # (subspace, centre, reduced centre, members) of an ask(subspace=...)
        self._shown = None  # the ensemble drawn for looking at, when only a centre is kept (see ensemble)
        self.iteration = 0
        self._momentum_start = 0  # the iteration of the last restart_momentum(); n counts updates since
        self.history = []
        self._best = None

    @property
    def ensemble(self):
        """The current ensemble U (J, P). After updates in subspaces only their centre is kept; the ensemble is
        then a draw around it from the full prior, from a random stream of its own (the same draw at every read
        until the next update), so that looking at it changes none of the updates that follow."""
        if self._U is None:
            if self._shown is None:
                self._shown = self._draw_around_centre(np.random.Generator(self._rng.bit_generator.jumped()))
            return self._shown
        return self._U

    def _draw_around_centre(self, rng):
        spec = self.randomization
        return randomize_around(self._centre, self._members, spec.gamma(self.iteration), prior_std=spec.prior_std,
                                rng=rng, centred=spec.centred, backend=self.backend)

    def _draw_members(self):
        """The members around the centre, from the training stream (after a full update, and on restore)."""
        self._drawn_from = self._rng.bit_generator.state
        self._U = self._draw_around_centre(self._rng)
        self._V = self._U if self._shift is None else self._U + self._shift

    @property
    def mean(self):
        return ensemble_mean(self.ensemble, backend=self.backend)

    @property
    def updated_mean(self):
        """The mean of the last update's ensemble: under EKI(R) the exact centre the members were redrawn around
        (computed by the update, free), otherwise the ensemble mean."""
        return self.mean if self._centre is None else self._centre

    @property
    def next_centre(self):
        """The point the next ask(subspace=...) draws its members around: the last update's centre, under
        momentum moved by its velocity; before the first update (or after a restore) the ensemble's mean."""
        if self._centre is None:
            return ensemble_mean(self.ensemble, backend=self.backend)
        return self._centre if self._shift is None else self._centre + self._shift

    @property
    def best(self):
        """The member with the lowest loss at the last tell() (the paper's u^(j*))."""
        return self._best

    @property
    def finished(self):
        return bool(getattr(self.scheduler, "finished", False))

    def ask(self, subspace=None):
        """The ensemble whose outputs the next tell() expects.

        subspace : EKI(R) with a redraw after every update only: draw this update's members in a subspace
            (for example ekinet.input_span: a network's first-layer weights in the span of the batch's inputs),
            an object with reduce(U) -> its coordinates of (P,) or (J, P) parameters, expand(V, centre,
            reduced_centre) -> centre + T (V - reduced_centre) back in (P,) or (J, P), and prior_std, the draws'
            standard deviations in its coordinates. The members are returned in its coordinates, drawn around
            the last update's centre (under momentum, moved by its velocity; before the first update, the
            initial ensemble mapped there); tell() maps the updated mean back, so the update equals the full
            update of the members centre + T (v - reduce(centre)).
        """
        self._pending = None
        if subspace is None:
            if self._U is None:  # only a centre, after updates in subspaces: the members are the ensemble shown
                self._U = self.ensemble
                self._V = self._U if self._shift is None else self._U + self._shift
            return self._V
        spec = self.randomization
        if not self._redraws_after_update() or (spec.every != 1):
            raise ValueError("ask(subspace=...) draws the members of every update in its own subspace: it needs "
                             "EKI(R) with a redraw after every update (Randomization(every=1))")
        centre = self.next_centre
        reduced_centre = subspace.reduce(centre)
        if self._centre is None:  # the ensemble is real (the initial one, or restored): its members, mapped
            V = subspace.reduce(self._U)
        else:
            V = randomize_around(reduced_centre, self._members, spec.gamma(self.iteration),
                                 prior_std=subspace.prior_std, rng=self._rng, centred=spec.centred,
                                 backend=self.backend)
        self._pending = (subspace, centre, reduced_centre, V)
        return V

    def tell(self, G, y=None, *, grad=None, loss_values=None, mean_output=None):
        """Update with the outputs G (J, M) of the ensemble from ask().

        kalman: y (M,) is required. loss: grad (J, M) from a loss of ekinet.losses (or y alone for the
        least-squares loss with noise_cov); loss_values (J,) are recorded in the history when given.
        mean_output (M,): the outputs of the ensemble's mean particle, if the caller evaluated it; with y, its
        least-squares loss is recorded as mean_particle_loss.
        Returns the new ensemble; after an update in a subspace (ask(subspace=...)) its centre (P,), the
        ensemble being drawn around it when asked for.
        """
        if self.finished:
            raise RuntimeError("the DataMisfitController reached its terminal time; no further update is made")
        V = self.ask() if self._pending is None else self._pending[3]
        # A tell that raises (bad input, too many failed members, overflow) changes nothing more: not the step
        # schedule, not the random stream, not the best member, not the history.
        scheduler_state = dict(vars(self.scheduler)) if hasattr(self.scheduler, "__dict__") else None
        rng_state, best = self._rng.bit_generator.state, self._best
        try:
            U_new, record = self._update(V, G, y, grad, loss_values, mean_output)
        except Exception:
            if scheduler_state is not None:
                vars(self.scheduler).update(scheduler_state)
            self._rng.bit_generator.state, self._best = rng_state, best
            raise
        self.history.append(record)
        self._advance(U_new)
        return self._centre if self._U is None else self._U

    def _update(self, V, G, y, grad, loss_values, mean_output):
        """(the update of the members V for _advance, its history record); changes only the scheduler, the RNG
        and the best member."""
        xp = namespace_of(V)
        G = xp.asarray(G)
        # When every member is redrawn around the mean right after this update, only the mean is computed.
        output = "mean" if self._redraws_after_update() else "ensemble"
        if y is not None:
            misfits, grad_squared = self._least_squares(G, xp.asarray(y, dtype=G.dtype))
        mean_loss = None
        if mean_output is not None and y is not None:
            mean_loss = self._mean_particle_loss(xp.asarray(mean_output, dtype=G.dtype), xp.asarray(y, dtype=G.dtype))
        if self.method == "kalman":
            if y is None:
                raise ValueError("method='kalman' needs the data y: tell(G, y)")
            step = self.scheduler.next_step(to_host(misfits), G.shape[1])
            U_new, info = kalman_update(
                V, G, y, self.noise_cov, rng=self._rng, perturb=self.perturb, step=step,
                formulation=self.formulation, backend=self.backend, on_failure=self.on_failure, output=output,
                return_info=True)
        else:
            if grad is None:
                if y is None:
                    raise ValueError("method='loss' needs grad= (see ekinet.losses) or y for the least-squares loss")
                grad = grad_squared
            if loss_values is None and y is not None:
                loss_values = misfits
            step = self.scheduler.next_step(None if loss_values is None else to_host(loss_values), G.shape[1])
            U_new, _, info = loss_update(V, G, grad, step=step, adaptive=self.scheduler.adaptive,
                                         eps=getattr(self.scheduler, "eps", 1e-8), backend=self.backend,
                                         on_failure=self.on_failure, rng=self._rng, output=output,
                                         return_info=True)
        member_loss = to_host(misfits) if y is not None else (None if loss_values is None else to_host(loss_values))
        record = self._record(V, member_loss, info)
        if self._pending is not None and member_loss is not None:
            subspace, centre, reduced_centre, _ = self._pending
            self._best = subspace.expand(self._best, centre, reduced_centre)
        if mean_loss is not None:
            record["mean_particle_loss"] = mean_loss
        return U_new, record

    def _mean_particle_loss(self, mean_output, y):
        """The least-squares loss of the mean particle's outputs (M,); NaN when the model failed there."""
        xp = namespace_of(mean_output)
        mean_output = mean_output.reshape(1, -1)
        if not bool(xp.all(xp.isfinite(mean_output))):
            return float("nan")
        loss, _ = losses.squared(xp.concatenate([mean_output, mean_output]), y, noise_cov=self.noise_cov,
                                 backend=self.backend)
        return float(to_host(loss)[0])

    def _least_squares(self, G, y):
        """Per-member misfits 1/2 |G_j - y|^2_Gamma and their gradients; NaN for failed members (rows with
        NaN/Inf), which the update then drops and re-draws."""
        xp = namespace_of(G)
        finite = xp.all(xp.isfinite(G), axis=1)
        if bool(finite.all()):
            return losses.squared(G, y, noise_cov=self.noise_cov, backend=self.backend)
        misfits = xp.full(G.shape[0], xp.nan, dtype=G.dtype)
        grad = xp.full_like(G, xp.nan)
        if int(finite.sum()) > 0:
            misfits[finite], grad[finite] = losses.squared(G[finite], y, noise_cov=self.noise_cov,
                                                           backend=self.backend)
        return misfits, grad

    def randomize(self, scale=None):
        """Apply the EKI(R) randomisation now (e.g. at the end of an epoch); scale defaults to gamma(n)."""
        spec = self.randomization or Randomization()
        gamma = spec.gamma(self.iteration) if scale is None else scale
        self._U = randomize(self.ensemble, gamma, prior_std=spec.prior_std, rng=self._rng, centred=spec.centred,
                            backend=self.backend)
        self._V, self._shift, self._drawn_from = self._U, None, None
        return self._U

    def state(self):
        """(arrays, info): what restore() needs to continue exactly as this optimiser would, for checkpoints.
        Members drawn around the last update's centre (EKI(R)) are kept as that centre and the RNG state before
        their draw, which restore() repeats: (P,) values instead of (J, P), for DNN 4 at J = 2000 2.3 MB instead
        of 4.6 GB. arrays: U and V (members, and where they are evaluated if elsewhere), centre, shift, best; info:
        the update count, where the momentum last restarted, the RNG state and the state the members were drawn
        from. The history and the scheduler are not part of it."""
        if self._pending is not None:
            raise RuntimeError("the optimiser is between ask() and tell(); save its state after tell()")
        drawn = self._U is not None and self._drawn_from is not None
        arrays = {"centre": self._centre, "shift": self._shift, "best": self._best}
        if self._U is not None and not drawn:
            arrays["U"] = self._U
            if self._V is not self._U:
                arrays["V"] = self._V
        info = {"iteration": self.iteration, "momentum_start": self._momentum_start,
                "rng": self._rng.bit_generator.state, "drawn_from": self._drawn_from if drawn else None}
        return {k: v for k, v in arrays.items() if v is not None}, info

    def restore(self, arrays, info):
        """Continue from what state() returned (arrays on this optimiser's device)."""
        drawn_from = info.get("drawn_from") if "U" not in arrays else None
        if "U" not in arrays and "centre" not in arrays:
            raise ValueError("the saved state has neither members (U) nor the centre they are drawn around")
        if drawn_from is not None and self.randomization is None:
            raise ValueError("the saved members are a draw around a centre, which needs the randomisation they "
                             "were drawn with; this optimiser has randomization=None")
        self._pending = None
        self.iteration, self._momentum_start = info["iteration"], info["momentum_start"]
        self._centre, self._shift, self._best = (arrays.get(k) for k in ("centre", "shift", "best"))
        self._U = arrays.get("U")
        self._V = arrays.get("V", self._U)
        self._drawn_from = self._shown = None
        if drawn_from is not None:
            self._rng.bit_generator.state = drawn_from
            self._draw_members()
            if self._rng.bit_generator.state != info["rng"]:
                raise ValueError("redrawing the members did not end at the saved RNG state: the state before the "
                                 "draw and the state after it do not belong together; the state is damaged")
        self._rng.bit_generator.state = info["rng"]

    def restart_momentum(self):
        """Nesterov restart: the next update is taken from the current ensemble (v = u) and the momentum
        coefficient n/(n+3) counts n from 0 again. Its limit 1 suits a deterministic descent; with the noise of
        mini-batch updates, momentum that never restarts accumulates that noise, and MEKI at J = 2000 diverged
        in its fifth epoch on MNIST (docs/results.md, "MEKI at the paper's size"). No-op without momentum."""
        if self.momentum and self._U is not None:
            self._V = self._U
        self._shift = None
        self._momentum_start = self.iteration

    def _redraws_after_update(self):
        spec = self.randomization
        return bool(spec is not None and spec.every and (self.iteration + 1) % spec.every == 0)

    def _advance(self, U_new):
        """U_new: the updated ensemble, or its mean (P,) when the randomisation redraws every member now."""
        self.iteration += 1
        self._shown = None
        coefficient = self._nesterov_coefficient()
        if self._pending is None and U_new.ndim == 2:
            self._centre = self._shift = self._drawn_from = None
            U_old, self._U = self._U, U_new
            self._V = nesterov_extrapolate(U_new, U_old, coefficient, backend=self.backend) if coefficient else U_new
            return
        if coefficient:
            previous_mean = self._centre if self._centre is not None else ensemble_mean(self._U, backend=self.backend)
        subspace = None
        if self._pending is not None:  # the mean of an update in a subspace, in its coordinates
            subspace, centre, reduced_centre, _ = self._pending
            self._pending = None
            U_new = subspace.expand(U_new, centre, reduced_centre)
        # MEKI(R): the redrawn members share the velocity of the mean. A member's own velocity means nothing
        # after the redraw, and the shared one lets the update compute only the mean.
        self._centre, self._U, self._V, self._drawn_from = U_new, None, None, None
        self._shift = coefficient * (U_new - previous_mean) if coefficient else None
        if subspace is None:  # draw now; after an update in a subspace only the centre is kept (see ensemble)
            self._draw_members()

    def _nesterov_coefficient(self):
        """c_n of the update just made, n counting from the last restart_momentum(); 0 without momentum."""
        n = self.iteration - 1 - self._momentum_start
        if not self.momentum or n == 0:
            return 0.0
        return n / (n + 3) if self.momentum is True else self.momentum

    def _record(self, V, member_loss, info):
        """The history record of an update of the members V (and the best member, kept)."""
        record = {
            "iteration": self.iteration,
            "step": float(info["step"]),
            "formulation": info["formulation"],
            "failed_members": int(info["failed_members"]),
            "spread": float(ensemble_spread(V, backend=self.backend)),
        }
        if member_loss is not None:
            finite = np.isfinite(member_loss)
            best = int(np.argmin(np.where(finite, member_loss, np.inf)))
            record.update(best_member=best, best_loss=float(member_loss[best]),
                          mean_member_loss=float(member_loss[finite].mean()) if finite.any() else float("nan"))
            self._best = V[best].copy()
        return record

    def history_arrays(self):
        """The history as a dict of NumPy arrays, one entry per recorded quantity."""
        keys = list(dict.fromkeys(k for record in self.history for k in record if k != "formulation"))
        return {k: np.array([r.get(k, np.nan) for r in self.history]) for k in keys}

    def plot_history(self, ax=None, keys=("mean_member_loss", "best_loss", "mean_particle_loss")):
        """Learning curves (needs matplotlib); returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        arrays = self.history_arrays()
        for key in keys:
            if key in arrays:
                ax.semilogy(arrays["iteration"], arrays[key], label=key.replace("_", " "))
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.legend()
        return ax


@dataclasses.dataclass
class MinimizeResult:
    mean: object
    best: object
    ensemble: object
    history: list
    optimizer: EKI


def minimize(forward, U0, y, *, noise_cov=1.0, iterations=20, batched=True, progress=True, callback=None,
             **options):
    """Run EKI on forward(U) -> G for `iterations` updates; records the loss of the mean particle (evaluated
    with the members, before each update).

    forward : with batched=True takes the (J, P) ensemble and returns (J, M) outputs; with batched=False it
        takes one parameter vector (P,) and returns (M,) outputs.
    options : passed to EKI (method, scheduler, momentum, randomization, rng, backend, ...).
    Returns a MinimizeResult (mean, best, ensemble, history, optimizer).
    """
    from tqdm.auto import tqdm

    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ValueError(f"iterations = {iterations!r} must be a positive integer (the number of updates)")
    optimizer = EKI(U0, noise_cov=noise_cov, **options)
    xp = namespace_of(optimizer.ensemble)
    y = xp.asarray(y)

    def evaluate(U):
        if batched:
            G = xp.asarray(forward(U))
            if G.ndim != 2 or G.shape[0] != U.shape[0]:
                raise ValueError(f"forward returned outputs of shape {tuple(G.shape)} for {U.shape[0]} rows of "
                                 f"parameters (the {U.shape[0] - 1} members and their mean); it must return "
                                 f"({U.shape[0]}, M), one row of outputs per row of its input")
            return G
        G = xp.stack([xp.asarray(forward(u)) for u in U])
        if G.ndim != 2:
            raise ValueError(f"forward (batched=False) returned outputs of shape {tuple(G.shape[1:])} for one "
                             "parameter vector; it must return an (M,) vector")
        return G

    bar = tqdm(range(iterations), disable=not progress, desc="EKI", unit="it")
    for _ in bar:
        if optimizer.finished:
            break
        V = optimizer.ask()
        outputs = evaluate(xp.concatenate([V, V.mean(axis=0, keepdims=True)]))  # members and mean particle
        optimizer.tell(outputs[:-1], y, mean_output=outputs[-1])
        bar.set_postfix(loss=f"{optimizer.history[-1]['mean_particle_loss']:.4g}")
        if callback is not None:
            callback(optimizer)
    return MinimizeResult(optimizer.mean, optimizer.best, optimizer.ensemble, optimizer.history, optimizer)


