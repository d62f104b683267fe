// The batched forward pass of J member networks on one shared input batch. Members are processed in
// chunks whose workspace fits a fixed budget; within a chunk a dense layer is a strided batched GEMM over the
// members (stride 0 for the shared input) followed by one element-wise kernel, and a convolutional or recurrent
// layer is one backend call that schedules it. A backend may instead run a small network whole per member and
// example (CUDA: fused_network.hpp).
#include <algorithm>
#include <optional>
#include <string>

#include "backend.hpp"
#include "dispatch.hpp"
#include "ekinet/errors.hpp"
#include "ekinet/network.hpp"
#include "validation.hpp"

namespace ekinet {

namespace {

constexpr std::size_t kChunkBudgetBytes = std::size_t{1} << 30;  // workspace of one chunk of members

using detail::i64;
using detail::Trans;

// Per-example sizes a layer adds to the workspace: its output, plus im2col patches for a convolution (CUDA's
// schedule; the CPU's direct convolution needs only each thread's copy of a member's weights, far less).
struct LayerFootprint {
  i64 per_member = 0;  // elements for each member of the chunk
  i64 shared = 0;      // elements once per chunk (computed from the shared input only)
};

i64 product(const std::vector<i64>& shape) {
  i64 p = 1;
  for (i64 d : shape) p *= d;
  return p;
}

// Whether layer i reads the shared input batch, the same for every member: no layer before it has parameters.
bool reads_shared_input(const Network& network, std::size_t i) {
  const std::vector<Layer>& layers = network.layers();
  return std::all_of(layers.begin(), layers.begin() + static_cast<std::ptrdiff_t>(i), [](const Layer& layer) {
    return layer.kind == Layer::Kind::maxpool2d || layer.kind == Layer::Kind::flatten;
  });
}

// A convolution takes the max-pooling layer after it into the same backend call.
bool pools_next(const Network& network, std::size_t i) {
  const std::vector<Layer>& layers = network.layers();
  return layers[i].kind == Layer::Kind::conv2d && i + 1 < layers.size() &&
         layers[i + 1].kind == Layer::Kind::maxpool2d;
}

// The geometry of convolutional layer i (and of the pooling it takes) on B images; no data yet.
template <class T>
detail::ConvolutionLayer<T> convolution_geometry(const Network& network, std::size_t i, i64 B) {
  const Layer& layer = network.layers()[i];
  const std::vector<i64>& shape = network.shape(i);
  const std::vector<i64>& out_shape = network.shape(i + 1);
  detail::ConvolutionLayer<T> geometry;
  geometry.images = B;
  geometry.channels = shape[0];
  geometry.height = shape[1];
  geometry.width = shape[2];
  geometry.kernel = layer.kernel;
  geometry.stride = layer.stride;
  geometry.padding = layer.padding;
  geometry.out_channels = layer.units;
  geometry.out_h = out_shape[1];
  geometry.out_w = out_shape[2];
  geometry.activation = layer.activation;
  if (pools_next(network, i)) {
    geometry.pool_kernel = network.layers()[i + 1].kernel;
    geometry.pool_stride = network.layers()[i + 1].stride;
  }
  return geometry;
}

LayerFootprint footprint(const Network& network, std::size_t i, i64 B) {
  const Layer& layer = network.layers()[i];
  const std::vector<i64>& in = network.shape(i);
  const i64 out = product(network.shape(i + 1));
  const bool shared = reads_shared_input(network, i);
  switch (layer.kind) {
    case Layer::Kind::dense: return {B * out, 0};
    case Layer::Kind::flatten: return shared ? LayerFootprint{0, B * out} : LayerFootprint{B * out, 0};
    case Layer::Kind::maxpool2d: {
      // + a CNHW copy of X when pooling comes first; + a row for each CPU thread
      const i64 elements = B * out + (i == 0 ? B * product(in) : 0);
      const i64 rows = detail::cpu_threads() * in[2];
      return shared ? LayerFootprint{0, elements + rows} : LayerFootprint{elements, rows};
    }
    case Layer::Kind::conv2d: {
      // + CUDA's im2col patches, or the CPU's scratch for each thread (16 float lanes) and its patch offsets
      // (64-bit: 2 elements each)
      const detail::ConvolutionLayer<float> geometry = convolution_geometry<float>(network, i, B);
      const i64 patches = geometry.patch_size() * geometry.out_h * geometry.out_w * B;
      const i64 cpu = detail::cpu_threads() * geometry.thread_scratch(16) +
                      2 * (geometry.patch_size() + geometry.out_h * geometry.out_w);
      return shared ? LayerFootprint{B * out, patches + cpu} : LayerFootprint{B * out + patches, cpu};
    }
    case Layer::Kind::rnn:
    case Layer::Kind::lstm: {
      const i64 steps = in[0], features = in[1], hidden = layer.units;
      const i64 gates = (layer.kind == Layer::Kind::lstm ? 4 : 1) * hidden;
      const i64 cell = layer.kind == Layer::Kind::lstm ? B * hidden : 0;
      // h of all steps, one step's gates, c, the bias, and the transposed weights of the CPU schedule
      return {B * steps * hidden + B * gates + cell + gates + (features + hidden) * gates, 0};
    }
  }
  return {};
}

LayerFootprint total_footprint(const Network& network, i64 B) {
  LayerFootprint total;
  for (std::size_t i = 0; i < network.layers().size(); ++i) {
    const LayerFootprint f = footprint(network, i, B);
    total.per_member += f.per_member;
    total.shared += f.shared;
  }
  return total;
}

// Members per chunk so that the chunk's workspace stays within the budget (at least one).
i64 chunk_members(const Network& network, i64 J, i64 B, std::size_t element_bytes) {
  const LayerFootprint f = total_footprint(network, B);
  const double free_bytes = static_cast<double>(kChunkBudgetBytes) - static_cast<double>(f.shared * element_bytes);
  const double per_member = static_cast<double>(f.per_member * element_bytes) + 1024.0;  // + alignment
  return std::clamp<i64>(static_cast<i64>(free_bytes / per_member), 1, J);
}

}  // namespace

std::size_t Network::forward_workspace_bytes(std::int64_t J, std::int64_t B, DType dtype) const {
  const std::size_t element = size_of(dtype);
  const LayerFootprint f = total_footprint(*this, B);
  const i64 members = chunk_members(*this, J, B, element);
  // + 256 bytes of alignment per buffer
  return static_cast<std::size_t>(f.shared + members * f.per_member) * element + 256 * (3 * layers_.size() + 2);
}

namespace detail {
namespace {

// A chunk's activations: member i's block at data + i * member_stride (0: shared by all members), rows at ld.
// channel_major: convolutional activations, rows = channels, cols = images * pixels (CNHW).
template <class T>
struct Activations {
  const T* data = nullptr;
  i64 member_stride = 0;
  i64 rows = 0, cols = 0, ld = 0;
  bool channel_major = false;
};

template <class T>
class ForwardPass {
 public:
  ForwardPass(Backend<T>& backend, const Network& network, const ConstMatrixView& U, i64 B,
              const ConstMatrixView& state_in, const MatrixView& state_out)
      : backend_(backend), network_(network), B_(B), ldu_(U.row_stride), u_(U.as<T>()),
        state_in_(state_in.as<T>()), state_in_ld_(state_in.row_stride), state_out_(state_out.as<T>()),
        state_out_ld_(state_out.row_stride) {}

  // Outputs of members [first, first + count) into G's rows.
  void run(i64 first, i64 count, const T* x, T* g, i64 ldg) {
    first_ = first;
    count_ = count;
    state_offset_ = 0;
    const std::vector<i64>& input = network_.input_shape();
    // One row per example (images in NCHW order), or per (example, step) for sequences (steps, features).
    Activations<T> a = input.size() == 2 ? Activations<T>{x, 0, B_ * input[0], input[1], input[1], false}
                                         : Activations<T>{x, 0, B_, product(input), product(input), false};
    for (std::size_t i = 0; i < network_.layers().size(); i += pools_next(network_, i) ? 2 : 1) a = layer(i, a);
    store(a, g + first * ldg, ldg);
  }

 private:
  const T* parameters(std::size_t layer, i64 offset_in_layer) const {
    return u_ + first_ * ldu_ + network_.parameter_offset(layer) + offset_in_layer;
  }
  T* take(i64 per_member) { return backend_.workspace().template take<T>(count_ * per_member); }
  // Blocks a parameter-free layer computes from `in`: one when it is shared by all members, else one per member.
  i64 blocks(const Activations<T>& in) const { return in.member_stride == 0 ? 1 : count_; }
  static i64 block_stride(const Activations<T>& in, i64 per_block) { return in.member_stride == 0 ? 0 : per_block; }
  T* take_for(const Activations<T>& in, i64 per_block) {
    return backend_.workspace().template take<T>(blocks(in) * per_block);
  }

  Activations<T> layer(std::size_t i, const Activations<T>& in) {
    const Layer& layer = network_.layers()[i];
    switch (layer.kind) {
      case Layer::Kind::dense: return dense(i, in);
      case Layer::Kind::conv2d: return conv2d(i, in);
      case Layer::Kind::maxpool2d: return maxpool2d(i, in);
      case Layer::Kind::flatten: return flatten(i, in);
      case Layer::Kind::rnn:
      case Layer::Kind::lstm: return recurrent(i, in);
    }
    return in;
  }

  // rows x units = in (rows x features) W^T + b: column-major C (units x rows) = W (units x features) in^T.
  Activations<T> dense(std::size_t i, const Activations<T>& in) {
    const Layer& layer = network_.layers()[i];
    const i64 units = layer.units, features = in.cols, rows = in.rows;
    T* out = take(rows * units);
    backend_.gemm_strided_batched(Trans::yes, Trans::no, units, rows, features, T{1}, parameters(i, 0), features,
                                  ldu_, in.data, in.ld, in.member_stride, T{0}, out, units, rows * units, count_);
    backend_.bias_activation(count_, rows, units, out, units, rows * units, parameters(i, units * features), ldu_,
                             false, layer.activation);
    return {out, rows * units, rows, units, units, false};
  }

  // CNHW output, bias and activation applied, and pooled when a max-pooling layer follows; the backend chooses
  // the schedule.
  Activations<T> conv2d(std::size_t i, const Activations<T>& in) {
    ConvolutionLayer<T> args = convolution_geometry<T>(network_, i, B_);
    const i64 pixels = args.height * args.width;
    args.members = count_;
    args.in = in.data;
    args.channel_stride = in.channel_major ? B_ * pixels : pixels;
    args.image_stride = in.channel_major ? pixels : args.channels * pixels;
    args.in_member_stride = in.member_stride;
    args.params = parameters(i, 0);
    args.params_stride = ldu_;
    args.out = take(args.out_member_stride());
    backend_.conv2d(args);
    const i64 n = B_ * args.result_pixels();
    return {args.out, args.out_member_stride(), args.out_channels, n, n, true};
  }

  // Pooling the shared input (no parameters before it) is done once for the chunk and stays shared.
  Activations<T> maxpool2d(std::size_t i, const Activations<T>& in) {
    const Layer& layer = network_.layers()[i];
    const std::vector<i64>& shape = network_.shape(i);
    const std::vector<i64>& out_shape = network_.shape(i + 1);
    Activations<T> source = in;
    if (!in.channel_major) source = to_channel_major(in, shape[0], shape[1] * shape[2]);
    const i64 n = B_ * out_shape[1] * out_shape[2];
    const i64 stride = block_stride(in, shape[0] * n);
    T* out = take_for(in, shape[0] * n);
    backend_.maxpool2d(blocks(in), shape[0], B_, shape[1], shape[2], source.data, source.member_stride, layer.kernel,
                       layer.stride, out_shape[1], out_shape[2], out, stride);
    return {out, stride, shape[0], n, n, true};
  }

  // The input batch (NCHW rows) as CNHW for a pooling layer that comes first.
  Activations<T> to_channel_major(const Activations<T>& in, i64 channels, i64 pixels) {
    const i64 size = channels * B_ * pixels, stride = block_stride(in, size);
    T* out = take_for(in, size);
    // Row c of the CNHW block gathers pixel block c of every image: a strided copy per channel.
    for (i64 c = 0; c < channels; ++c) {
      backend_.copy_strided(blocks(in), B_, pixels, in.data + c * pixels, in.ld, in.member_stride,
                            out + c * B_ * pixels, pixels, stride);
    }
    return {out, stride, channels, B_ * pixels, B_ * pixels, true};
  }

  Activations<T> flatten(std::size_t i, const Activations<T>& in) {
    const i64 size = product(network_.shape(i + 1));
    if (!in.channel_major) return {in.data, in.member_stride, B_, size, in.rows == B_ ? in.ld : size, false};
    const i64 channels = in.rows, pixels = in.cols / B_, stride = block_stride(in, B_ * size);
    T* out = take_for(in, B_ * size);
    backend_.channels_to_rows(blocks(in), channels, B_, pixels, in.data, in.member_stride, out, stride);
    return {out, stride, B_, size, size, false};
  }

  // Elman RNN and LSTM (PyTorch's equations) over the whole sequence, scheduled by the backend; only h of
  // every step is kept, (example, step) rows.
  Activations<T> recurrent(std::size_t i, const Activations<T>& in) {
    const Layer& layer = network_.layers()[i];
    RecurrentLayer<T> args;
    args.lstm = layer.kind == Layer::Kind::lstm;
    args.members = count_;
    args.examples = B_;
    args.steps = network_.shape(i)[0];
    args.features = in.cols;
    args.hidden = layer.units;
    args.x = in.data;
    args.x_ld = in.ld;
    args.x_member_stride = in.member_stride;
    args.params = parameters(i, 0);
    args.params_stride = ldu_;
    const i64 hidden = layer.units, rows = B_ * args.steps;
    const i64 state_h = state_offset_, state_c = state_offset_ + B_ * hidden;
    state_offset_ += B_ * hidden * (args.lstm ? 2 : 1);
    if (state_in_ != nullptr) {
      args.h0 = state_in_ + first_ * state_in_ld_ + state_h;
      args.c0 = args.lstm ? state_in_ + first_ * state_in_ld_ + state_c : nullptr;
      args.state_in_stride = state_in_ld_;
    }
    if (state_out_ != nullptr && args.lstm) {
      args.c_out = state_out_ + first_ * state_out_ld_ + state_c;
      args.c_out_stride = state_out_ld_;
    }
    T* h = take(rows * hidden);
    args.h = h;
    backend_.recurrent(args);

    const i64 h_ld = args.steps * hidden, h_member = rows * hidden;
    const T* last = h + (args.steps - 1) * hidden;
    if (state_out_ != nullptr) {
      backend_.copy_strided(count_, B_, hidden, last, h_ld, h_member, state_out_ + first_ * state_out_ld_ + state_h,
                            hidden, state_out_ld_);
    }
    if (layer.return_sequences) return {h, h_member, rows, hidden, hidden, false};
    return {last, h_member, B_, hidden, h_ld, false};
  }

  // Each member's outputs as one row of G: examples one after another, each in C order.
  void store(const Activations<T>& a, T* g, i64 ldg) {
    if (a.channel_major) {
      backend_.channels_to_rows(count_, a.rows, B_, a.cols / B_, a.data, a.member_stride, g, ldg);
    } else {
      backend_.copy_strided(count_, a.rows, a.cols, a.data, a.ld, a.member_stride, g, a.cols, ldg);
    }
  }

  Backend<T>& backend_;
  const Network& network_;
  const i64 B_, ldu_;
  const T* u_;
  const T* state_in_;
  const i64 state_in_ld_;
  T* state_out_;
  const i64 state_out_ld_;
  i64 first_ = 0, count_ = 0, state_offset_ = 0;
};

template <class T>
void forward_typed(Context& ctx, const Network& network, const ConstMatrixView& U, const ConstMatrixView& X,
                   MatrixView G, const ConstMatrixView& state_in, const MatrixView& state_out) {
  Backend<T>& backend = backend_of<T>(ctx);
  const ArgumentChecker check("forward", ctx, U.dtype);
  check.array(U, "U");
  const i64 J = U.rows, B = X.rows;
  if (J < 1) check.fail("U has no members (rows)");
  if (U.cols != network.parameter_count()) {
    check.fail("U has " + std::to_string(U.cols) + " parameters per member but the network has " +
               std::to_string(network.parameter_count()));
  }
  check.shape(X, "X", B, network.input_size(), "one flattened example per row, of the network's input size");
  if (B < 1) check.fail("X has no examples (rows)");
  if (!X.contiguous()) check.fail("X must have contiguous rows");
  check.shape(G, "G", J, B * network.output_size(), "the outputs of every example, one row per member");
  const i64 state = B * network.state_size();
  if (!state_in.empty()) check.shape(state_in, "state_in", J, state, "the recurrent state of each member");
  if (state_out.data != nullptr) check.shape(state_out, "state_out", J, state, "the recurrent state of each member");
  backend.workspace().reset();  // the finiteness count may take workspace (a counter on the GPU)
  check.finite(backend, X, "X");

  if (const std::optional<FusedPlan> plan = ctx.whole_networks() ? fused_plan(network) : std::nullopt;
      plan && backend.fused_forward(*plan, J, B, U.as<T>(), U.row_stride, X.as<T>(), X.row_stride, G.as<T>(),
                                    G.row_stride, state_in.empty() ? nullptr : state_in.as<T>(),
                                    state_in.row_stride, state_out.data == nullptr ? nullptr : state_out.as<T>(),
                                    state_out.row_stride)) {
    return;
  }
  const i64 chunk = chunk_members(network, J, B, sizeof(T));
  ForwardPass<T> pass(backend, network, U, B, state_in, state_out);
  for (i64 first = 0; first < J; first += chunk) {
    backend.workspace().reset();
    pass.run(first, std::min(chunk, J - first), X.as<T>(), G.as<T>(), G.row_stride);
  }
}

}  // namespace
}  // namespace detail

void forward(Context& ctx, const Network& network, ConstMatrixView U, ConstMatrixView X, MatrixView G,
             ConstMatrixView state_in, MatrixView state_out) {
  detail::dispatch_dtype(U.dtype, [&](auto tag) {
    detail::forward_typed<decltype(tag)>(ctx, network, U, X, G, state_in, state_out);
  });
}

}  // namespace ekinet
