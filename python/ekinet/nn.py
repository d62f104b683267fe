"""Batched ensembles of small neural networks: J members share one architecture and one input batch, each has
its own flat parameter vector (one row of the J x P ensemble U that EKI updates).

>>> from ekinet import nn
>>> net = nn.Sequential([nn.Dense(100, activation="relu"), nn.Dense(10)], input_shape=(784,))
>>> U = net.prior(50, rng=0)                   # (50, 79510) Glorot-normal members, float32
>>> G = net.forward(U, X)                      # (50, B, 10): every member on the batch X (B, 784)

Layers follow PyTorch's conventions, so a member's tensors load into torch.nn modules unchanged: Dense is
nn.Linear (weight (out, in), then bias), Conv2d is nn.Conv2d (weight (Cout, Cin, k, k), then bias; images
NCHW), MaxPool2d is nn.MaxPool2d, Flatten is nn.Flatten, RNN is nn.RNN (Elman, tanh) and LSTM is nn.LSTM
(gates i, f, g, o), both batch-first: weight_ih (G h, d), weight_hh (G h, h), bias_ih, bias_hh. Parameter names
are "<layer index>.<tensor>", e.g. "0.weight", "2.weight_hh".

Shapes are per example. A 1-D input (features) feeds Dense layers; (channels, height, width) feeds Conv2d and
MaxPool2d (Flatten before Dense); (steps, features) is a sequence for RNN/LSTM. A recurrent layer returns its last
hidden state (hidden,) or, with return_sequences=True, every step (steps, hidden); a Dense layer on a sequence
acts on each step. Softmax is an output activation: only the last layer may use it.

The forward pass runs in the native core (CPU, or CUDA for CuPy arrays); backend="reference" runs the readable
NumPy/CuPy version of ekinet.reference.forward.
"""

import functools
import math
import numbers

import numpy as np

from . import _core, reference
from ._arrays import (FLOAT_DTYPES, floating, like_input, namespace_of, same_dtype, same_namespace, to_array,
                      to_host)
from ._backend import resolve
from ._inputs import require_finite
from ._native import context_for, rows_contiguous, view

ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid", "heaviside", "softmax")


# ----------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------


def _integer(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} = {value} must be {'positive' if minimum == 1 else f'>= {minimum}'}")
    return int(value)


def _activation(value, name, allowed=ACTIVATIONS):
    if value not in allowed:
        raise ValueError(f"{name} = {value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


def _dtype_name(dtype, name="dtype"):
    try:
        text = np.dtype(dtype).name
    except TypeError as error:
        raise TypeError(f"{name} = {dtype!r} is not a dtype; ekinet computes in float32 or float64") from error
    if text not in FLOAT_DTYPES:
        raise TypeError(f"{name} = {text}: ekinet computes in float32 or float64")
    return text


def _shape_text(shape):
    return "(" + ", ".join(map(str, shape)) + (",)" if len(shape) == 1 else ")")


# ----------------------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------------------


class Layer:
    """A layer of a Sequential network; spec() is the dict the native core takes."""

    kind = None

    def spec(self):
        raise NotImplementedError

    def _arguments(self):
        return []

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(self._arguments())})"

    def __eq__(self, other):
        return type(self) is type(other) and self.spec() == other.spec()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.spec().items()))))


class Dense(Layer):
    """Fully connected, out = activation(x W^T + b) on the last axis (each step of a sequence). PyTorch's
    nn.Linear: weight (units, in_features), bias (units,)."""

    kind = "dense"

    def __init__(self, units, activation="identity"):
        self.units = _integer(units, "Dense: units", 1)
        self.activation = _activation(activation, "Dense: activation")

    def spec(self):
        return {"kind": self.kind, "units": self.units, "activation": self.activation}

    def _arguments(self):
        return [str(self.units)] + ([f"activation={self.activation!r}"] if self.activation != "identity" else [])


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as in PyTorch) of NCHW images with a square kernel, zero padding on
    every side, then an element-wise activation. weight (channels, in_channels, kernel, kernel), bias (channels,).
    Softmax is not offered here: it is an output activation of Dense layers (add Flatten() and Dense(...))."""

    kind = "conv2d"

    def __init__(self, channels, kernel, stride=1, padding=0, activation="identity"):
        self.channels = _integer(channels, "Conv2d: channels", 1)
        self.kernel = _integer(kernel, "Conv2d: kernel", 1)
        self.stride = _integer(stride, "Conv2d: stride", 1)
        self.padding = _integer(padding, "Conv2d: padding", 0)
        if activation == "softmax":
            raise ValueError("Conv2d: activation = 'softmax' is not supported; softmax is an output activation of "
                             "Dense layers (add Flatten() and Dense(..., activation='softmax'))")
        self.activation = _activation(activation, "Conv2d: activation", ACTIVATIONS[:-1])

    def spec(self):
        return {"kind": self.kind, "units": self.channels, "kernel": self.kernel, "stride": self.stride,
                "padding": self.padding, "activation": self.activation}

    def _arguments(self):
        out = [str(self.channels), f"kernel={self.kernel}"]
        out += [f"stride={self.stride}"] if self.stride != 1 else []
        out += [f"padding={self.padding}"] if self.padding else []
        return out + ([f"activation={self.activation!r}"] if self.activation != "identity" else [])


class MaxPool2d(Layer):
    """Max over kernel x kernel windows moved by stride (default: kernel), no padding; NaN propagates."""

    kind = "maxpool2d"

    def __init__(self, kernel, stride=None):
        self.kernel = _integer(kernel, "MaxPool2d: kernel", 1)
        self.stride = self.kernel if stride is None else _integer(stride, "MaxPool2d: stride", 1)

    def spec(self):
        return {"kind": self.kind, "kernel": self.kernel, "stride": self.stride}

    def _arguments(self):
        return [str(self.kernel)] + ([f"stride={self.stride}"] if self.stride != self.kernel else [])


class Flatten(Layer):
    """Each example flattened in C order (NCHW images: channel, row, column), like nn.Flatten()."""

    kind = "flatten"

    def spec(self):
        return {"kind": self.kind}


class RNN(Layer):
    """Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), on (steps, features) input; returns the
    last h (hidden,) or every step (steps, hidden) with return_sequences=True. PyTorch's nn.RNN (one layer,
    batch_first) tensors: weight_ih (hidden, features), weight_hh (hidden, hidden), bias_ih, bias_hh (hidden,)."""

    kind = "rnn"

    def __init__(self, hidden, return_sequences=False):
        self.hidden = _integer(hidden, f"{type(self).__name__}: hidden", 1)
        if not isinstance(return_sequences, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}: return_sequences must be True or False, got "
                            f"{return_sequences!r}")
        self.return_sequences = bool(return_sequences)

    def spec(self):
        return {"kind": self.kind, "units": self.hidden, "return_sequences": self.return_sequences}

    def _arguments(self):
        return [str(self.hidden)] + (["return_sequences=True"] if self.return_sequences else [])


class LSTM(RNN):
    """LSTM with PyTorch's equations and gate order i, f, g, o: weight_ih (4 hidden, features), weight_hh
    (4 hidden, hidden), bias_ih, bias_hh (4 hidden,). Its state is h and the cell c."""

    kind = "lstm"


# ----------------------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------------------


class Sequential:
    """A stack of layers evaluated for a whole ensemble at once.

    layers : list of Dense, Conv2d, MaxPool2d, Flatten, RNN, LSTM.
    input_shape : the shape of one example: (features,), (channels, height, width) or (steps, features).

    Shapes are checked when the network is built (ValueError naming the layer). Attributes: parameter_count
    (P), input_shape, output_shape, input_size, output_size, state_size (recurrent values per example and
    member), parameters (name -> (offset, shape) in a member's row), layers, shapes (per-example shape after
    each layer).
    """

    def __init__(self, layers, input_shape):
        if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of layers (Dense, Conv2d, ...), got {type(layers).__name__}")
        if not layers:
            raise ValueError("layers is empty; a network needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] is a {type(layer).__name__}, not a layer (Dense, Conv2d, MaxPool2d, "
                                "Flatten, RNN, LSTM)")
        if isinstance(input_shape, numbers.Integral) and not isinstance(input_shape, bool):
            input_shape = (input_shape,)
        if not isinstance(input_shape, (list, tuple)) or not input_shape:
            raise ValueError(f"input_shape = {input_shape!r} must be a non-empty tuple of positive sizes")
        input_shape = tuple(_integer(size, f"input_shape[{i}]", 1) for i, size in enumerate(input_shape))
        self._layers = tuple(layers)
        self._network = _core.network([layer.spec() for layer in self._layers], list(input_shape))
        self._check_windows()
        self._parameters = {p["name"]: (int(p["offset"]), tuple(p["shape"])) for p in self._network.parameters}
        self._fans = {p["name"]: (int(p["fan_in"]), int(p["fan_out"])) for p in self._network.parameters}

    def _check_windows(self):
        # The core counts windows as (size + 2 padding - kernel) // stride + 1 with C++ division, which rounds
        # towards zero: a kernel up to stride - 1 larger than the (padded) image gets one window instead of none,
        # and max pooling then reads past the image. Refuse those here, with the core's message.
        for i, layer in enumerate(self._layers):
            if isinstance(layer, (Conv2d, MaxPool2d)):
                shape = tuple(self._network.shape(i))
                padding = getattr(layer, "padding", 0)
                if min(shape[1:]) + 2 * padding < layer.kernel:
                    why = ("the kernel is larger than the padded image" if isinstance(layer, Conv2d) else
                           "the window is larger than the image")
                    raise ValueError(f"network layer {i} ({type(layer).__name__}) cannot take input of shape "
                                     f"{_shape_text(shape)} per example: {why}")

    # ---- description -----------------------------------------------------------------------------------

    @property
    def layers(self):
        return self._layers

    # The network is immutable: its sizes are read from the core once (forward() uses them on every call).

    @functools.cached_property
    def parameter_count(self):
        return int(self._network.parameter_count)

    @functools.cached_property
    def input_shape(self):
        return tuple(self._network.input_shape)

    @functools.cached_property
    def output_shape(self):
        return tuple(self._network.output_shape)

    @functools.cached_property
    def input_size(self):
        return math.prod(self.input_shape)

    @functools.cached_property
    def output_size(self):
        return math.prod(self.output_shape)

    @functools.cached_property
    def state_size(self):
        return int(self._network.state_size)

    @property
    def shapes(self):
        """Per-example shapes: shapes[0] the input, shapes[i + 1] after layer i."""
        return [tuple(self._network.shape(i)) for i in range(len(self._layers) + 1)]

    @property
    def parameters(self):
        """name -> (offset in a member's row, PyTorch shape), in the order of the row."""
        return dict(self._parameters)

    @property
    def fans(self):
        """name -> (fan_in, fan_out) of the tensor's layer, as used by the Glorot prior."""
        return dict(self._fans)

    def layer_parameter_count(self, index):
        prefix = f"{index}."
        return sum(int(np.prod(shape)) for name, (_, shape) in self._parameters.items() if name.startswith(prefix))

    def __repr__(self):
        rows = [(str(i), repr(layer), _shape_text(self._network.shape(i + 1)), str(self.layer_parameter_count(i)))
                for i, layer in enumerate(self._layers)]
        header = ("#", "layer", "output shape", "parameters")
        widths = [max(len(r[c]) for r in rows + [header]) for c in range(4)]

        def line(r):
            return f"  {r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}"

        return "\n".join([f"Sequential(input_shape={_shape_text(self.input_shape)}, "
                          f"parameters={self.parameter_count}, state_size={self.state_size})", line(header)]
                         + [line(r) for r in rows])

    # ---- the prior ----------------------------------------------------------------------------------------

    def prior_std(self, dtype="float32", *, bias_std=0.0, xp=np):
        """(P,) standard deviations of the prior: sqrt(2 / (fan_in + fan_out)) for every weight tensor (Glorot
        normal; conv2d fans include the kernel area, recurrent weights use their own (G h, d) and (G h, h)
        shapes), bias_std for biases. Suits ekinet.randomize(prior_std=...) and EKI(R)."""
        dtype = _dtype_name(dtype)
        bias_std = float(bias_std)
        if not (bias_std >= 0 and np.isfinite(bias_std)):
            raise ValueError(f"bias_std = {bias_std} must be a non-negative finite standard deviation")
        std = np.empty(self.parameter_count, dtype=np.float64)
        for name, (offset, shape) in self._parameters.items():
            fan_in, fan_out = self._fans[name]
            is_bias = name.rsplit(".", 1)[1].startswith("bias")
            std[offset:offset + int(np.prod(shape))] = bias_std if is_bias else np.sqrt(2.0 / (fan_in + fan_out))
        return xp.asarray(std.astype(dtype))

    def prior(self, J, *, rng=None, dtype="float32", xp=np, bias_std=0.0):
        """(J, P) ensemble of independent members drawn from N(0, diag(prior_std)^2): Glorot (Xavier) normal
        weights, biases zero unless bias_std > 0.

        rng : an int seed or a numpy Generator (reproducible; members are drawn one after another, so the first
              members do not depend on J), or None for fresh entropy. The draws are float64 and then rounded:
              the float32 prior is the float64 prior of the same seed cast to float32.
        xp : numpy or cupy: where the ensemble lives (drawn on the host either way).
        """
        J = _integer(J, "J", 1)
        dtype = _dtype_name(dtype)
        if isinstance(rng, bool) or not (rng is None or isinstance(rng, (numbers.Integral, np.random.Generator))):
            raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")
        if isinstance(rng, numbers.Integral) and rng < 0:
            raise ValueError(f"rng = {rng} must be a non-negative seed")
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        std = self.prior_std("float64", bias_std=bias_std)
        P = self.parameter_count
        U = xp.empty((J, P), dtype=dtype)
        rows = max(1, (1 << 23) // max(P, 1))  # members per draw: about 64 MiB of float64 at a time
        for first in range(0, J, rows):
            count = min(rows, J - first)
            U[first:first + count] = xp.asarray((generator.standard_normal((count, P)) * std).astype(dtype))
        return U

    # ---- members' tensors -----------------------------------------------------------------------------------

    def weights(self, U, member, name):
        """Member `member`'s tensor `name` (e.g. "0.weight") with its PyTorch shape: a view into U."""
        original = U
        U = self._members(U)
        J = U.shape[0]
        member = _integer(member, "member", -J)
        if member >= J:
            raise ValueError(f"member = {member} is out of range for an ensemble of {J} members")
        if name not in self._parameters:
            raise ValueError(f"name = {name!r} is not a parameter of this network; it has "
                             f"{', '.join(map(repr, self._parameters))}")
        offset, shape = self._parameters[name]
        return like_input(U[member, offset:offset + int(np.prod(shape))].reshape(shape), original)

    def split_state(self, state):
        """The recurrent state (J, B * state_size) as {"<layer>.h": (J, B, hidden), "<layer>.c": (J, B, hidden)}
        (c for LSTM layers), views into state: write into them to build an initial state."""
        state = to_array(state, "state")
        if self.state_size == 0:
            raise ValueError("this network has no recurrent layers, so no state to split (state_size = 0)")
        if state.ndim != 2 or state.shape[1] % self.state_size:
            raise ValueError(f"state has shape {tuple(state.shape)}; expected (J, B * {self.state_size}) "
                             "(state_size values per example and member)")
        J, B = state.shape[0], state.shape[1] // self.state_size
        parts, offset = {}, 0
        for i, layer in enumerate(self._layers):
            if isinstance(layer, RNN):
                for part in ("h", "c") if isinstance(layer, LSTM) else ("h",):
                    parts[f"{i}.{part}"] = state[:, offset:offset + B * layer.hidden].reshape(J, B, layer.hidden)
                    offset += B * layer.hidden
        return parts

    # ---- the forward pass -------------------------------------------------------------------------------------

    def _members(self, U, name="U"):
        U = floating(to_array(U, name), name)
        P = self.parameter_count
        if U.ndim != 2:
            raise ValueError(f"{name} has shape {tuple(U.shape)}; expected (J, {P}): one row of {P} parameters "
                             "per member")
        if U.shape[0] < 1:
            raise ValueError(f"{name} has no members (rows)")
        if U.shape[1] != P:
            raise ValueError(f"{name} has {U.shape[1]} parameters per member (columns) but the network has "
                             f"parameter_count = {P}")
        return U

    def _batch(self, X, xp, dtype):
        X = same_dtype(same_namespace(to_array(X, "X"), "X", xp), "X", dtype)
        shape, size = self.input_shape, self.input_size
        if X.ndim < 2 or X.shape[0] < 1 or (tuple(X.shape[1:]) != shape and tuple(X.shape[1:]) != (size,)):
            flat = "" if len(shape) == 1 else f" or (B, {size}) flattened"
            raise ValueError(f"X has shape {tuple(X.shape)} but (B, {', '.join(map(str, shape))}){flat} was "
                             "expected: a batch of B >= 1 examples of the network's input shape")
        return xp.ascontiguousarray(X.reshape(X.shape[0], size))

    def forward(self, U, X, *, state=None, return_state=False, backend="auto"):
        """The outputs of every member on the shared batch X.

        U : (J, P) ensemble, float32 or float64 (NumPy, CuPy, or DLPack such as PyTorch).
        X : (B, *input_shape) or (B, input_size) examples, U's dtype and device; NaN/Inf is a ValueError.
        state : None (zeros) or the recurrent state each member starts from, (J, B * state_size), laid out as
                in the core: for each recurrent layer in order, h as a (B, hidden) block, then for an LSTM c as a
                (B, hidden) block (split_state gives named (J, B, hidden) views).
        return_state : also return the state after the last step, in the same layout ((J, 0) without recurrent
                layers): pass it as `state` to continue the sequences.
        backend : "auto", "native" (the C++/CUDA core) or "reference" (NumPy/CuPy).

        Returns outputs (J, B, *output_shape), and the state with return_state=True.
        """
        original = U
        U = self._members(U)
        xp = namespace_of(U)
        U = rows_contiguous(xp, U)
        X = self._batch(X, xp, U.dtype)
        J, B, S = U.shape[0], X.shape[0], self.state_size
        if state is not None:
            state = same_dtype(same_namespace(to_array(state, "state"), "state", xp), "state", U.dtype)
            if S == 0 and state.size == 0 and state.ndim == 2 and state.shape[0] == J:
                state = None
            elif state.ndim != 2 or state.shape != (J, B * S):
                why = ("this network has no recurrent layers (state_size = 0): pass state=None" if S == 0 else
                       f"(J, B * state_size) = ({J}, {B * S}) was expected")
                raise ValueError(f"state has shape {tuple(state.shape)}; {why}")
            else:
                state = rows_contiguous(xp, state)

        if resolve(backend, xp) == "reference":
            require_finite(xp, X, "X")
            G, state_out = reference.forward(self, U, X, state)
            G = xp.ascontiguousarray(G)
        else:
            G = xp.empty((J, B * self.output_size), dtype=U.dtype)
            state_out = xp.empty((J, B * S), dtype=U.dtype) if return_state else None
            _core.forward(context_for(xp), self._network, view(U), view(X), view(G),
                          None if state is None else view(state),
                          None if state_out is None or S == 0 else view(state_out))
        G = like_input(G.reshape((J, B) + self.output_shape), original)
        return (G, like_input(state_out, original)) if return_state else G

    def workspace_bytes(self, J, B, dtype="float32"):
        """Bytes of workspace the native forward pass takes for J members and B examples (members are evaluated
        in chunks within a fixed budget, so this stops growing with J once a chunk is full). It is all the pass
        allocates besides its results: G (J * B * output_size values) and, when asked for, the returned state
        (J * B * state_size values). On CUDA this is an upper bound: small image networks (CNN-MNIST) and
        one-step recurrent networks (an online step) run whole per member in shared memory, with next to no
        workspace."""
        return int(self._network.forward_workspace_bytes(_integer(J, "J", 1), _integer(B, "B", 1),
                                                         _dtype_name(dtype)))

    # ---- PyTorch ---------------------------------------------------------------------------------------------

    def to_torch(self, u):
        """A torch.nn.Module computing member u ((P,) parameters) on a (B, *input_shape) tensor, on the CPU in
        u's dtype. Dense and Conv2d layers are modules named "<index>" holding "weight" and "bias" like
        ekinet's names; recurrent layers are nn.RNN/nn.LSTM (batch_first) subclasses with PyTorch's names
        (weight_ih_l0, ...) returning the last step or every step."""
        import torch

        u = to_array(u, "u")
        u = to_host(u)
        if u.ndim == 2 and u.shape[0] == 1:
            u = u[0]
        u = floating(u, "u")
        if u.shape != (self.parameter_count,):
            raise ValueError(f"u has shape {tuple(u.shape)}; expected ({self.parameter_count},): one member")
        dtype = torch.float64 if u.dtype == np.float64 else torch.float32
        classes = _torch_classes()
        modules, shape = torch.nn.Sequential(), self.input_shape

        def tensor(name):
            offset, tshape = self._parameters[name]
            return torch.from_numpy(np.array(u[offset:offset + int(np.prod(tshape))]).reshape(tshape))

        for i, layer in enumerate(self._layers):
            if isinstance(layer, Dense):
                module = torch.nn.Linear(shape[-1], layer.units, dtype=dtype)
            elif isinstance(layer, Conv2d):
                module = torch.nn.Conv2d(shape[0], layer.channels, layer.kernel, stride=layer.stride,
                                         padding=layer.padding, dtype=dtype)
            elif isinstance(layer, MaxPool2d):
                module = torch.nn.MaxPool2d(layer.kernel, stride=layer.stride)
            elif isinstance(layer, Flatten):
                module = torch.nn.Flatten()
            else:
                cls = classes.LSTM if isinstance(layer, LSTM) else classes.RNN
                module = cls(shape[-1], layer.hidden, batch_first=True, dtype=dtype)
                module.return_sequences = layer.return_sequences
            with torch.no_grad():
                for name, parameter in module.named_parameters():
                    parameter.copy_(tensor(f"{i}.{name.removesuffix('_l0')}"))
            modules.add_module(str(i), module)
            activation = getattr(layer, "activation", "identity")
            if activation != "identity":
                modules.add_module(f"{i}_{activation}", classes.activation(activation))
            shape = tuple(self._network.shape(i + 1))
        return modules.eval()


def _torch_classes():
    """torch.nn pieces for to_torch, defined on first use (PyTorch is optional)."""
    global _TORCH_CLASSES
    if _TORCH_CLASSES is not None:
        return _TORCH_CLASSES
    import types

    import torch

    class Heaviside(torch.nn.Module):
        def forward(self, x):
            return torch.where(x > 0, torch.ones_like(x), torch.where(torch.isnan(x), x, torch.zeros_like(x)))

    def recurrent(base):
        class Recurrent(base):
            return_sequences = False

            def forward(self, x):
                out = super().forward(x)[0]
                return out if self.return_sequences else out[:, -1]

        Recurrent.__name__ = base.__name__
        return Recurrent

    def activation(name):
        return {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "heaviside": Heaviside,
                "softmax": lambda: torch.nn.Softmax(dim=-1)}[name]()

    _TORCH_CLASSES = types.SimpleNamespace(RNN=recurrent(torch.nn.RNN), LSTM=recurrent(torch.nn.LSTM),
                                           activation=activation)
    return _TORCH_CLASSES


_TORCH_CLASSES = None


# ----------------------------------------------------------------------------------------------------------
# ready-made networks
# ----------------------------------------------------------------------------------------------------------


def mlp(sizes, activation="relu", output_activation="identity"):
    """Dense layers sizes[0] -> sizes[1] -> ... -> sizes[-1] with `activation` between and
    `output_activation` on the last; input_shape (sizes[0],). mlp([784, 100, 10])."""
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes = {sizes} needs an input size and at least one layer size")
    sizes = [_integer(s, f"sizes[{i}]", 1) for i, s in enumerate(sizes)]
    _activation(activation, "activation")
    if activation == "softmax":
        raise ValueError("activation = 'softmax' is an output activation; pass output_activation='softmax'")
    layers = [Dense(units, activation) for units in sizes[1:-1]] + [Dense(sizes[-1], output_activation)]
    return Sequential(layers, (sizes[0],))


DNN_SIZES = {1: (784, 10), 2: (784, 100, 10), 3: (784, 300, 100, 10), 4: (784, 500, 300, 100, 10)}


def dnn(k, activation="relu"):
    """The paper's fully connected MNIST networks DNN k, k = 1..4: 784-10, 784-100-10, 784-300-100-10,
    784-500-300-100-10 (ReLU hidden layers, identity logits)."""
    if isinstance(k, bool) or k not in DNN_SIZES:
        raise ValueError(f"k = {k!r} is not one of 1, 2, 3, 4 (DNN 1 to DNN 4)")
    return mlp(DNN_SIZES[k], activation)


def cnn_mnist():
    """The paper's MNIST CNN (P = 6150) on (1, 28, 28) images: Conv2d(16, 3, relu), MaxPool2d(4, stride=2),
    Conv2d(16, 3, relu), Conv2d(12, 3, relu), MaxPool2d(2), Flatten, Dense(10) logits."""
    return Sequential([Conv2d(16, 3, activation="relu"), MaxPool2d(4, stride=2), Conv2d(16, 3, activation="relu"),
                       Conv2d(12, 3, activation="relu"), MaxPool2d(2), Flatten(), Dense(10)], (1, 28, 28))


def rnn_mnist(hidden=128):
    """Two stacked Elman RNNs of `hidden` units reading an MNIST image as 28 steps of 28 pixels (one row a
    step), then Dense(10) logits on the last hidden state; input_shape (28, 28)."""
    return Sequential([RNN(hidden, return_sequences=True), RNN(hidden), Dense(10)], (28, 28))


def recurrent(sizes, *, cell="rnn", steps=1):
    """Stacked RNN/LSTM layers sizes[1:-1] on sequences of `steps` steps of sizes[0] features, then Dense(sizes[-1])
    on the last hidden state; input_shape (steps, sizes[0])."""
    _activation(cell, "cell", ("rnn", "lstm"))
    sizes = list(sizes)
    if len(sizes) < 3:
        raise ValueError(f"sizes = {sizes} needs input features, at least one hidden size and an output size")
    sizes = [_integer(s, f"sizes[{i}]", 1) for i, s in enumerate(sizes)]
    steps = _integer(steps, "steps", 1)
    kind = LSTM if cell == "lstm" else RNN
    hidden = sizes[1:-1]
    layers = [kind(h, return_sequences=i + 1 < len(hidden)) for i, h in enumerate(hidden)]
    return Sequential(layers + [Dense(sizes[-1])], (steps, sizes[0]))


STRING_FORMS = ("mlp:784-100-10", "mlp:784-100-10:tanh", "dnn:1 .. dnn:4", "cnn-mnist", "rnn:1-32-1",
                "lstm:1-32-1", "rnn-mnist")


def from_string(text, *, steps=None):
    """A network from a short description:

    "mlp:784-100-10"        Dense layers, ReLU between, identity output; input (784,)
    "mlp:784-100-10:tanh"   the same with another hidden activation
    "dnn:2"                 the paper's DNN 2 (dnn(k), k = 1..4)
    "cnn-mnist"             cnn_mnist()
    "rnn:1-32-1"            RNN(32) then Dense(1) on sequences of `steps` steps (default 1) of 1 feature;
                            more hidden sizes ("rnn:1-32-32-1") stack layers
    "lstm:1-32-1"           the same with LSTM layers
    "rnn-mnist"             rnn_mnist(): two RNN(128) reading 28 rows of 28 pixels, then Dense(10)
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string such as 'mlp:784-100-10', got {type(text).__name__}")
    known = f"known forms: {', '.join(STRING_FORMS)}"
    head, _, rest = text.strip().partition(":")
    head = head.lower()
    if steps is not None and head not in ("rnn", "lstm"):
        raise ValueError(f"steps applies to the 'rnn:...' and 'lstm:...' forms only, not to {text!r}")

    def sizes(part):
        try:
            values = [int(s) for s in part.split("-")]
        except ValueError:
            raise ValueError(f"{text!r}: {part!r} is not a list of sizes such as 784-100-10; {known}") from None
        return values

    if head == "mlp" and rest:
        part, _, activation = rest.partition(":")
        return mlp(sizes(part), activation or "relu")
    if head == "dnn" and rest.strip() in ("1", "2", "3", "4"):
        return dnn(int(rest))
    if head in ("rnn", "lstm") and rest:
        return recurrent(sizes(rest), cell=head, steps=1 if steps is None else steps)
    if head == "cnn-mnist" and not rest:
        return cnn_mnist()
    if head == "rnn-mnist" and not rest:
        return rnn_mnist()
    raise ValueError(f"unknown network {text!r}; {known}")


__all__ = ["ACTIVATIONS", "Conv2d", "Dense", "Flatten", "LSTM", "Layer", "MaxPool2d", "RNN", "Sequential",
           "cnn_mnist", "dnn", "from_string", "mlp", "recurrent", "rnn_mnist"]
