"""Reference forward pass of an ensemble of Sequential networks (ekinet.nn), written for reading.

Activations carry a leading member axis: (J, B, ...) once the members' parameters have been applied, (1, B, ...)
for the input batch that every member shares (broadcasting does the rest). Each layer is the textbook formula:

    Dense     out = act(x W^T + b) on the last axis (each step of a sequence)
    Conv2d    out[o, y, x] = act(b[o] + sum_{c, k, l} W[o, c, k, l] xpad[c, s y + k, s x + l])
    MaxPool2d out[c, y, x] = max_{k, l} x[c, s y + k, s x + l]
    Flatten   C order per example
    RNN       h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    LSTM      (i, f, g, o) = (sigma, sigma, tanh, sigma)(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),
              c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)                  (PyTorch's equations and gate order)

The parameters of member j are read from row j of U with the network's layout (network.parameters: name ->
(offset, PyTorch shape)). NaN propagates (ReLU and the max keep it, Heaviside maps it to NaN), so a member with
NaN parameters yields NaN outputs, as in the native core. X is not checked here (the public API does).
"""

import numpy as np

from ._common import namespace


def _tensor(network, U, name):
    """Every member's tensor `name`: (J, *shape)."""
    offset, shape = network.parameters[name]
    size = int(np.prod(shape))
    return U[:, offset:offset + size].reshape((U.shape[0],) + tuple(shape))


def _sigmoid(xp, v):
    with np.errstate(over="ignore"):
        return 1 / (1 + xp.exp(-v))


def activate(xp, v, activation):
    """The element-wise activations, and softmax over the last axis."""
    if activation == "identity":
        return v
    if activation == "relu":
        return xp.where(v < 0, xp.zeros_like(v), v)  # NaN < 0 is false: NaN stays NaN
    if activation == "tanh":
        return xp.tanh(v)
    if activation == "sigmoid":
        return _sigmoid(xp, v)
    if activation == "heaviside":  # 1 where v > 0, 0 where v <= 0, NaN stays NaN
        return xp.where(v > 0, xp.ones_like(v), xp.where(xp.isnan(v), v, xp.zeros_like(v)))
    if activation == "softmax":
        with np.errstate(invalid="ignore"):
            e = xp.exp(v - xp.max(v, axis=-1, keepdims=True))
            return e / xp.sum(e, axis=-1, keepdims=True)
    raise ValueError(f"unknown activation {activation!r}")


def _per_member(W, a):
    """W (J, ...) reshaped to broadcast against an activation a (J or 1, B, ..., features)."""
    return W.reshape((W.shape[0],) + (1,) * (a.ndim - 3) + W.shape[1:])


def dense(xp, a, W, b, activation):
    """a (J|1, B, [steps,] features), W (J, units, features), b (J, units) -> (J, B, [steps,] units)."""
    out = a @ _per_member(xp.swapaxes(W, 1, 2), a) + b.reshape((b.shape[0],) + (1,) * (a.ndim - 2) + b.shape[1:])
    return activate(xp, out, activation)


def _windows(xp, a, kernel, stride):
    """a (J|1, B, C, H, W) -> (J|1, B, C, out_h, out_w, kernel, kernel): every kernel x kernel window."""
    windows = xp.lib.stride_tricks.sliding_window_view(a, (kernel, kernel), axis=(-2, -1))
    return windows[:, :, :, ::stride, ::stride]


def conv2d(xp, a, W, b, stride, padding, activation):
    """a (J|1, B, C, H, W), W (J, O, C, k, k), b (J, O) -> (J, B, O, out_h, out_w).

    The sum over (c, k, l) is einsum("jbcyxkl,jockl->jboyx") written as one matrix product per member."""
    J, O, C, k, _ = W.shape
    if padding:
        a = xp.pad(a, ((0, 0), (0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = _windows(xp, a, k, stride)
    members, B, _, out_h, out_w = windows.shape[:5]
    patches = windows.transpose(0, 1, 3, 4, 2, 5, 6).reshape(members, B * out_h * out_w, C * k * k)
    out = patches @ xp.swapaxes(W.reshape(J, O, C * k * k), 1, 2)  # (J, B out_h out_w, O)
    out = out.reshape(J, B, out_h, out_w, O).transpose(0, 1, 4, 2, 3) + b[:, None, :, None, None]
    return activate(xp, out, activation)


def maxpool2d(xp, a, kernel, stride):
    """a (J|1, B, C, H, W) -> (J|1, B, C, out_h, out_w); NaN in a window gives NaN."""
    return xp.max(_windows(xp, a, kernel, stride), axis=(-2, -1))


def recurrent(xp, a, weights, h, c, lstm, return_sequences):
    """a (J|1, B, steps, features); weights (W_ih, W_hh, b_ih, b_hh) as (J, G h, ...); h, c (J, B, hidden).

    Returns (outputs (J, B, steps, hidden) or (J, B, hidden), h_T, c_T)."""
    W_ih, W_hh, b_ih, b_hh = weights
    hidden = W_hh.shape[2]
    pre = a @ _per_member(xp.swapaxes(W_ih, 1, 2), a) + b_ih[:, None, None, :] + b_hh[:, None, None, :]
    outputs = []
    for t in range(a.shape[2]):
        z = pre[:, :, t, :] + h @ xp.swapaxes(W_hh, 1, 2)  # (J, B, G hidden)
        if lstm:
            i = _sigmoid(xp, z[..., :hidden])
            f = _sigmoid(xp, z[..., hidden:2 * hidden])
            g = xp.tanh(z[..., 2 * hidden:3 * hidden])
            o = _sigmoid(xp, z[..., 3 * hidden:])
            c = f * c + i * g
            h = o * xp.tanh(c)
        else:
            h = xp.tanh(z)
        outputs.append(h)
    out = xp.stack(outputs, axis=2) if return_sequences else h
    return out, h, c


def forward(network, U, X, state=None):
    """Outputs of every member of U (J, P) on the batch X ((B, *input_shape) or (B, input_size)).

    network : an ekinet.nn.Sequential (its layers, input_shape, state_size and parameters are read).
    state : None (zeros) or (J, B * state_size): for each recurrent layer in order, h as a (B, hidden) block,
            then c as a (B, hidden) block for an LSTM.
    Returns (outputs (J, B, *output_shape), state after the last step (J, B * state_size)).
    """
    xp = namespace(U, X)
    J, B = U.shape[0], X.shape[0]
    a = X.reshape((1, B) + tuple(network.input_shape))  # shared by every member
    state_parts, offset = [], 0

    def take_state(hidden):
        nonlocal offset
        if state is None:
            part = xp.zeros((J, B, hidden), dtype=U.dtype)
        else:
            part = state[:, offset:offset + B * hidden].reshape(J, B, hidden)
        offset += B * hidden
        return part

    for index, layer in enumerate(network.layers):
        spec = layer.spec()
        kind = spec["kind"]

        def p(tensor):
            return _tensor(network, U, f"{index}.{tensor}")

        if kind == "dense":
            a = dense(xp, a, p("weight"), p("bias"), spec.get("activation", "identity"))
        elif kind == "conv2d":
            a = conv2d(xp, a, p("weight"), p("bias"), spec.get("stride", 1), spec.get("padding", 0),
                       spec.get("activation", "identity"))
        elif kind == "maxpool2d":
            a = maxpool2d(xp, a, spec["kernel"], spec.get("stride", spec["kernel"]))
        elif kind == "flatten":
            a = a.reshape(a.shape[0], B, -1)
        elif kind in ("rnn", "lstm"):
            lstm = kind == "lstm"
            hidden = spec["units"]
            h0 = take_state(hidden)
            c0 = take_state(hidden) if lstm else None
            weights = (p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"))
            a, h, c = recurrent(xp, a, weights, h0, c0, lstm, spec.get("return_sequences", False))
            state_parts += [h, c] if lstm else [h]
        else:
            raise ValueError(f"unknown layer kind {kind!r}")

    outputs = xp.broadcast_to(a, (J,) + a.shape[1:]).astype(U.dtype, copy=False)
    if tuple(outputs.shape[2:]) != tuple(network.output_shape):
        raise AssertionError(f"reference forward: output shape {outputs.shape[2:]} != {network.output_shape}")
    state_out = (xp.concatenate([s.reshape(J, -1) for s in state_parts], axis=1) if state_parts
                 else xp.zeros((J, 0), dtype=U.dtype))
    return xp.ascontiguousarray(outputs), xp.ascontiguousarray(state_out.astype(U.dtype, copy=False))
