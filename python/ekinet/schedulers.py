"""Step schedulers for EKI (eki-math section 4). A scheduler gives the step h of the next update."""

import math

import numpy as np


class ConstantStep:
    """h_n = step."""

    adaptive = False

    def __init__(self, step=1.0):
        if not step > 0:
            raise ValueError(f"step = {step} must be positive")
        self.step = float(step)

    def next_step(self, misfits=None, n_outputs=None):
        return self.step


class AdaptiveStep:
    """The general-loss scheme's adaptive step h_n = step / (||D(u_n)||_F + eps) (Kovachki & Stuart)."""

    adaptive = True

    def __init__(self, step=1.0, eps=1e-8):
        if not step > 0:
            raise ValueError(f"step = {step} must be positive")
        self.step = float(step)
        self.eps = float(eps)

    def next_step(self, misfits=None, n_outputs=None):
        return self.step


class DataMisfitController:
    """Iglesias & Yang (2021): h = min(max(M / (2 mean Phi), sqrt(M / (2 var Phi))), T - t).

    Phi_j = 1/2 |Gamma^{-1/2} (G_j - y)|^2 per member, var the population variance over the members with a finite
    misfit (divided by their number, not one less); the pseudo-time t stops at terminal_time, after which
    `finished` is True and the optimiser makes no further update.
    """

    adaptive = False

    def __init__(self, terminal_time=1.0):
        if not terminal_time > 0:
            raise ValueError(f"terminal_time = {terminal_time} must be positive")
        self.terminal_time = float(terminal_time)
        self.time = 0.0

    @property
    def finished(self):
        return self.time >= self.terminal_time * (1 - 1e-12)

    def next_step(self, misfits, n_outputs):
        if self.finished:
            raise RuntimeError(f"DataMisfitController has reached its terminal time {self.terminal_time}: no step "
                               "is left; check `finished` before asking, or make a new controller")
        if misfits is None:
            raise ValueError("DataMisfitController chooses the step from the members' misfits: pass the data y "
                             "to tell() (or loss_values with method='loss')")
        misfits = np.asarray(misfits, dtype=np.float64)
        misfits = misfits[np.isfinite(misfits)]  # failed members take no part
        if misfits.size == 0:
            raise ValueError("no member has a finite misfit, so DataMisfitController has no step to choose; check "
                             "the forward model's outputs")
        mean, variance = float(misfits.mean()), float(misfits.var())
        candidates = [n_outputs / (2 * mean) if mean > 0 else math.inf]
        if variance > 0:
            candidates.append(math.sqrt(n_outputs / (2 * variance)))
        step = min(max(candidates), self.terminal_time - self.time)
        self.time += step
        return step
