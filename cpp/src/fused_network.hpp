// Small networks run whole for one member on one example, their activations in on-chip buffers: the CUDA
// backend's forward for
// - image networks (conv2d, maxpool2d, flatten and dense layers). The layer-by-layer path (im2col + one batched
//   GEMM per layer) sends every activation and every im2col patch through global memory, nine times the
//   activations for 3 x 3 kernels: CNN-MNIST ran at 1.8 TFLOP/s that way on an H200, half the speed of
//   torch.func + vmap at B = 256;
// - one step of a recurrent network (RNN, LSTM and dense layers on sequences of one step: the online drivers'
//   call). Layer by layer that is about ten launches of tiny kernels and GEMMs, whose launch costs were most of
//   the step's time (0.10 ms for J = 2000 LSTM(32) members).
// Only the input, each member's parameters (once per block), the recurrent state and the outputs leave the chip.
// The networks must fit in a block's shared memory.
//
// The code is written once for a team of threads that share the buffers (a CUDA block) and is host-callable
// with a team of one, so the C++ tests check it on the CPU against the layer-by-layer forward.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <optional>

#include "ekinet/network.hpp"
#include "index_math.hpp"

namespace ekinet::detail {

template <class T>
EKINET_HOST_DEVICE T sigmoid(T v) {
  using std::exp;
  return T{1} / (T{1} + exp(-v));
}

// Every activation but softmax, which needs the whole row.
template <class T>
EKINET_HOST_DEVICE T activate(T v, Activation activation) {
  using std::tanh;
  switch (activation) {
    case Activation::relu: return v <= T{0} ? T{0} : v;  // a NaN stays NaN (fmax would drop it), -0 gives +0
    case Activation::tanh: return tanh(v);
    case Activation::sigmoid: return sigmoid(v);
    case Activation::heaviside: return v > T{0} ? T{1} : (v != v ? v : T{0});  // NaN stays NaN, as in relu
    case Activation::identity:
    case Activation::softmax: break;
  }
  return v;
}

// One layer of the plan, its input and output as (channels, height, width) per example (dense and recurrent
// layers: features x 1 x 1 and units x 1 x 1).
struct FusedLayer {
  Layer::Kind kind = Layer::Kind::dense;
  Activation activation = Activation::identity;
  int in_channels = 0, in_height = 0, in_width = 0;
  int out_channels = 0, out_height = 0, out_width = 0;
  int kernel = 0, stride = 1, padding = 0;
  int weights = 0;  // offset of the layer's weights in a member's parameters; its biases follow them
  int state = 0;    // rnn/lstm: recurrent state values per example of the layers before this one
  int source = 0;   // buffer read: 0 or 1
  int target = 0;   // buffer written: 0 or 1, or kOutput for the member's outputs
  static constexpr int kOutput = -1;

  EKINET_HOST_DEVICE int in_size() const { return in_channels * in_height * in_width; }
  EKINET_HOST_DEVICE int out_size() const { return out_channels * out_height * out_width; }
  EKINET_HOST_DEVICE int gates() const { return (kind == Layer::Kind::lstm ? 4 : 1) * out_channels; }
};

// The network as a fixed-size value, so that a kernel takes it as an argument. Flatten layers are left out:
// activations are kept per example in C order (channel, row, column), which is already the flattened order.
struct FusedPlan {
  static constexpr int kMaxLayers = 16;
  FusedLayer layers[kMaxLayers];
  int layer_count = 0;
  int input_size = 0, output_size = 0, parameter_count = 0;
  int state_size = 0;           // recurrent state values per example (Network::state_size)
  int buffer_size[3] = {0, 0, 0};  // the two activation buffers (the input is copied into the first) and the
                                   // recurrent layers' gates

  // Shared memory of a team: the member's parameters and the three buffers.
  template <class T>
  std::size_t shared_bytes() const {
    const std::size_t values = static_cast<std::size_t>(parameter_count) + static_cast<std::size_t>(buffer_size[0]) +
                               static_cast<std::size_t>(buffer_size[1]) + static_cast<std::size_t>(buffer_size[2]);
    return values * sizeof(T);
  }
};

// The plan of `network`, or nothing when this path does not run it: an image network needs a conv2d layer
// (dense-only networks are GEMMs, which cuBLAS does best); a recurrent network needs sequences of one step;
// and all sizes must fit in 32 bits.
inline std::optional<FusedPlan> fused_plan(const Network& network) {
  const std::vector<Layer>& layers = network.layers();
  const std::vector<std::int64_t>& input = network.input_shape();
  const auto has = [&](auto kind_test) { return std::any_of(layers.begin(), layers.end(), kind_test); };
  const bool image = input.size() == 3 && has([](const Layer& l) { return l.kind == Layer::Kind::conv2d; });
  const bool step = input.size() == 2 && input[0] == 1 &&
                    has([](const Layer& l) { return l.kind == Layer::Kind::rnn || l.kind == Layer::Kind::lstm; });
  if ((!image && !step) || network.parameter_count() > INT_MAX) return std::nullopt;
  std::size_t last = layers.size();
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].kind != Layer::Kind::flatten) last = i;
  }

  // (channels, height, width) of a per-example shape; any other shape is features x 1 x 1.
  const auto dims = [](const std::vector<std::int64_t>& shape, int out[3]) {
    std::int64_t size = 1;
    for (std::int64_t d : shape) size *= d;
    if (size > INT_MAX) return false;
    out[0] = static_cast<int>(shape.size() == 3 ? shape[0] : size);
    out[1] = static_cast<int>(shape.size() == 3 ? shape[1] : 1);
    out[2] = static_cast<int>(shape.size() == 3 ? shape[2] : 1);
    return true;
  };
  FusedPlan plan;
  int in[3], out[3];
  if (!dims(input, in) || !dims(network.output_shape(), out) || network.state_size() > INT_MAX) return std::nullopt;
  plan.input_size = in[0] * in[1] * in[2];
  plan.output_size = out[0] * out[1] * out[2];
  plan.parameter_count = static_cast<int>(network.parameter_count());
  plan.state_size = static_cast<int>(network.state_size());
  plan.buffer_size[0] = plan.input_size;
  int current = 0, state = 0;  // the buffer holding the activation a layer reads; the state before the layer
  for (std::size_t i = 0; i <= last; ++i) {
    const Layer& layer = layers[i];
    if (layer.kind == Layer::Kind::flatten) continue;
    if (plan.layer_count == FusedPlan::kMaxLayers) return std::nullopt;
    FusedLayer& fused = plan.layers[plan.layer_count++];
    if (!dims(network.shape(i), in) || !dims(network.shape(i + 1), out)) return std::nullopt;
    fused.kind = layer.kind;
    fused.activation = layer.activation;
    fused.in_channels = in[0], fused.in_height = in[1], fused.in_width = in[2];
    fused.out_channels = out[0], fused.out_height = out[1], fused.out_width = out[2];
    fused.kernel = static_cast<int>(layer.kernel);
    fused.stride = static_cast<int>(layer.stride);
    fused.padding = static_cast<int>(layer.padding);
    fused.weights = static_cast<int>(network.parameter_offset(i));
    if (layer.kind == Layer::Kind::rnn || layer.kind == Layer::Kind::lstm) {
      fused.out_channels = static_cast<int>(layer.units);  // one step: (1, hidden) is hidden values
      fused.out_height = fused.out_width = 1;
      fused.state = state;
      state += (layer.kind == Layer::Kind::lstm ? 2 : 1) * fused.out_channels;  // h, and c for an LSTM
      plan.buffer_size[2] = std::max(plan.buffer_size[2], fused.gates());
    }
    fused.source = current;
    fused.target = i == last ? FusedLayer::kOutput : 1 - current;
    if (i != last) {
      current = 1 - current;
      plan.buffer_size[current] = std::max(plan.buffer_size[current], fused.out_size());
    }
  }
  return plan;
}

// The threads that run one example together: rank in [0, size), sync() a barrier for all of them.
struct SerialTeam {
  EKINET_HOST_DEVICE int rank() const { return 0; }
  EKINET_HOST_DEVICE int size() const { return 1; }
  EKINET_HOST_DEVICE void sync() const {}
};

// Output channels a thread computes for one pixel: each input value it reads serves all of them.
constexpr int kFusedChannelsPerThread = 4;

EKINET_HOST_DEVICE inline int smaller(int a, int b) { return a < b ? a : b; }

// w . x over n values, starting at `start` and wrapping around. Ranks that each take one row of a row-major
// weight matrix read at a stride of the row length; rows of 32 or 192 values would put every rank of a warp in
// the same shared-memory bank at each step. Starting each row at its own index spreads them over the banks.
template <class T>
EKINET_HOST_DEVICE T rotated_dot(const T* w, const T* x, int n, int start) {
  // One loop with a wrapping index, not two: a warp steps in lockstep, and two loops whose lengths differ by
  // lane would take n + 31 steps instead of n.
  T sum = 0;
  for (int i = 0, k = start; i < n; ++i) {
    sum += w[k] * x[k];
    if (++k == n) k = 0;
  }
  return sum;
}
EKINET_HOST_DEVICE inline int larger(int a, int b) { return a > b ? a : b; }

// Weights (out_channels, in_channels, kernel, kernel) as PyTorch's, then the biases. Neighbouring ranks take
// neighbouring pixels of the same channels: their inputs are neighbours and their weights the same.
template <class T, class Team>
EKINET_HOST_DEVICE void fused_conv2d(const FusedLayer& layer, const T* parameters, const T* in, T* out,
                                     const Team& team) {
  const int pixels = layer.out_height * layer.out_width, taps = layer.kernel * layer.kernel;
  const int patch = layer.in_channels * taps, plane = layer.in_height * layer.in_width;
  const int groups = (layer.out_channels + kFusedChannelsPerThread - 1) / kFusedChannelsPerThread;
  const T* weights = parameters + layer.weights;
  const T* bias = weights + layer.out_channels * patch;
  for (int item = team.rank(); item < groups * pixels; item += team.size()) {
    const int group = item / pixels, pixel = item - group * pixels;
    const int oy = pixel / layer.out_width, ox = pixel - oy * layer.out_width;
    const int first = group * kFusedChannelsPerThread;
    const int channels = smaller(kFusedChannelsPerThread, layer.out_channels - first);
    const int y0 = oy * layer.stride - layer.padding, x0 = ox * layer.stride - layer.padding;
    const int ky_begin = larger(0, -y0), ky_end = smaller(layer.kernel, layer.in_height - y0);
    const int kx_begin = larger(0, -x0), kx_end = smaller(layer.kernel, layer.in_width - x0);
    T sum[kFusedChannelsPerThread] = {};
    for (int c = 0; c < layer.in_channels; ++c) {
      const int corner = c * plane + y0 * layer.in_width + x0;  // may be negative; the pixels read are not
      const T* w = weights + first * patch + c * taps;
      for (int ky = ky_begin; ky < ky_end; ++ky) {
        for (int kx = kx_begin; kx < kx_end; ++kx) {
          const T v = in[corner + ky * layer.in_width + kx];
          const int tap = ky * layer.kernel + kx;
          for (int t = 0; t < kFusedChannelsPerThread; ++t) {
            if (t < channels) sum[t] += v * w[t * patch + tap];
          }
        }
      }
    }
    for (int t = 0; t < channels; ++t) {
      out[(first + t) * pixels + pixel] = activate(static_cast<T>(sum[t] + bias[first + t]), layer.activation);
    }
  }
}

template <class T, class Team>
EKINET_HOST_DEVICE void fused_maxpool2d(const FusedLayer& layer, const T* in, T* out, const Team& team) {
  const int pixels = layer.out_height * layer.out_width;
  for (int item = team.rank(); item < layer.out_channels * pixels; item += team.size()) {
    const int channel = item / pixels, pixel = item - channel * pixels;
    const int oy = pixel / layer.out_width, ox = pixel - oy * layer.out_width;
    const T* window = in + (channel * layer.in_height + oy * layer.stride) * layer.in_width + ox * layer.stride;
    T max_v = static_cast<T>(-INFINITY);
    for (int ky = 0; ky < layer.kernel; ++ky) {
      for (int kx = 0; kx < layer.kernel; ++kx) {
        const T v = window[ky * layer.in_width + kx];
        if (v != v || v > max_v) max_v = v;  // once NaN, nothing compares greater: a failed member stays NaN
      }
    }
    out[item] = max_v;
  }
}

// Weights (units, features) as PyTorch's, then the biases; softmax in double by one rank, as the other paths.
template <class T, class Team>
EKINET_HOST_DEVICE void fused_dense(const FusedLayer& layer, const T* parameters, const T* in, T* out,
                                    const Team& team) {
  using std::exp;
  const int features = layer.in_size(), units = layer.out_channels;
  const T* weights = parameters + layer.weights;
  const T* bias = weights + units * features;
  for (int unit = team.rank(); unit < units; unit += team.size()) {
    const T sum = rotated_dot(weights + unit * features, in, features, unit % features);
    out[unit] = activate(static_cast<T>(sum + bias[unit]), layer.activation);
  }
  if (layer.activation != Activation::softmax) return;
  team.sync();
  if (team.rank() == 0) {
    T max_v = static_cast<T>(-INFINITY);
    for (int unit = 0; unit < units; ++unit) max_v = max_v < out[unit] ? out[unit] : max_v;  // NaN: row stays NaN
    double sum = 0;
    for (int unit = 0; unit < units; ++unit) sum += exp(static_cast<double>(out[unit] - max_v));
    for (int unit = 0; unit < units; ++unit) {
      out[unit] = static_cast<T>(exp(static_cast<double>(out[unit] - max_v)) / sum);
    }
  }
}

// One step of an Elman RNN (h = tanh(W_ih x + b_ih + W_hh h + b_hh)) or an LSTM (PyTorch's equations and gate
// order i, f, g, o): weights W_ih (gates, features), W_hh (gates, hidden), then b_ih and b_hh. The previous h and
// c are read from `previous` (h, then c for an LSTM; null: zeros, a sequence's start) and the new ones written
// to `next` (may be null) at the same places; h is also the layer's output.
template <class T, class Team>
EKINET_HOST_DEVICE void fused_recurrent_step(const FusedLayer& layer, const T* parameters, const T* in,
                                             const T* previous_h, const T* previous_c, T* next_h, T* next_c,
                                             T* gates, T* out, const Team& team) {
  const int features = layer.in_size(), hidden = layer.out_channels, count = layer.gates();
  const T* w_ih = parameters + layer.weights;
  const T* w_hh = w_ih + count * features;
  const T* b_ih = w_hh + count * hidden;
  const T* b_hh = b_ih + count;
  for (int gate = team.rank(); gate < count; gate += team.size()) {
    T sum = rotated_dot(w_ih + gate * features, in, features, gate % features);
    if (previous_h != nullptr) sum += rotated_dot(w_hh + gate * hidden, previous_h, hidden, gate % hidden);
    gates[gate] = sum + b_ih[gate] + b_hh[gate];
  }
  team.sync();
  using std::tanh;
  for (int unit = team.rank(); unit < hidden; unit += team.size()) {
    T h;
    if (layer.kind == Layer::Kind::lstm) {
      const T cell = previous_c != nullptr ? previous_c[unit] : T{0};
      const T c = sigmoid(gates[hidden + unit]) * cell + sigmoid(gates[unit]) * tanh(gates[2 * hidden + unit]);
      h = sigmoid(gates[3 * hidden + unit]) * tanh(c);
      if (next_c != nullptr) next_c[unit] = c;
    } else {
      h = tanh(gates[unit]);
    }
    out[unit] = h;
    if (next_h != nullptr) next_h[unit] = h;
  }
}

// The outputs of one member (its parameters, all of them) on one example (input_size values, C order) into
// output (output_size values). buffers[0], [1] and [2] hold at least plan.buffer_size[0], [1] and [2] values.
// state_in and state_out are the member's rows of the recurrent state (examples * state_size values, as
// Network::forward lays them out; null: zeros, and not wanted). Every rank of the team calls this with the
// same arguments.
template <class T, class Team>
EKINET_HOST_DEVICE void fused_forward(const FusedPlan& plan, const T* parameters, const T* example_input,
                                      T* const buffers[3], T* output, const T* state_in, T* state_out,
                                      std::int64_t examples, std::int64_t example, const Team& team) {
  for (int k = team.rank(); k < plan.input_size; k += team.size()) buffers[0][k] = example_input[k];
  team.sync();
  for (int i = 0; i < plan.layer_count; ++i) {
    const FusedLayer& layer = plan.layers[i];
    // selected, not indexed: an indexed array of pointers would live in a GPU thread's (slow) local memory
    const T* in = layer.source == 0 ? buffers[0] : buffers[1];
    T* out = layer.target == FusedLayer::kOutput ? output : layer.target == 0 ? buffers[0] : buffers[1];
    switch (layer.kind) {
      case Layer::Kind::conv2d: fused_conv2d(layer, parameters, in, out, team); break;
      case Layer::Kind::maxpool2d: fused_maxpool2d(layer, in, out, team); break;
      case Layer::Kind::dense: fused_dense(layer, parameters, in, out, team); break;
      case Layer::Kind::rnn:
      case Layer::Kind::lstm: {
        // h of every example, then (LSTM) c of every example, after the layers before
        const std::int64_t h = layer.state * examples + example * layer.out_channels;
        const std::int64_t c = h + examples * layer.out_channels;
        const bool lstm = layer.kind == Layer::Kind::lstm;
        fused_recurrent_step(layer, parameters, in, state_in != nullptr ? state_in + h : nullptr,
                             state_in != nullptr && lstm ? state_in + c : nullptr,
                             state_out != nullptr ? state_out + h : nullptr,
                             state_out != nullptr && lstm ? state_out + c : nullptr, buffers[2], out, team);
        break;
      }
      case Layer::Kind::flatten: break;  // not in a plan
    }
    team.sync();  // the next layer (or example) reads what this one wrote, and overwrites what it read
  }
}

}  // namespace ekinet::detail
