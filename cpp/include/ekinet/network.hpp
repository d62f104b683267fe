// Ensembles of small neural networks evaluated together: J members share the architecture and the input
// batch, each has its own flat parameter vector (one row of the J x P ensemble). Nothing is kept for a
// backward pass; EKI needs only the outputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ekinet/context.hpp"

namespace ekinet {

enum class Activation { identity, relu, tanh, sigmoid, heaviside, softmax };
std::string to_string(Activation activation);

struct Layer {
  enum class Kind { dense, conv2d, maxpool2d, flatten, rnn, lstm };
  Kind kind = Kind::dense;
  std::int64_t units = 0;        // dense: outputs; conv2d: output channels; rnn/lstm: hidden size
  std::int64_t kernel = 0;       // conv2d, maxpool2d: square kernel size
  std::int64_t stride = 1;       // conv2d, maxpool2d
  std::int64_t padding = 0;      // conv2d: zero padding on each side
  Activation activation = Activation::identity;  // dense, conv2d
  bool return_sequences = false;  // rnn/lstm: every time step (B x T x h) or the last one (B x h)

  static Layer dense(std::int64_t units, Activation activation = Activation::identity);
  static Layer conv2d(std::int64_t channels, std::int64_t kernel, std::int64_t stride = 1, std::int64_t padding = 0,
                      Activation activation = Activation::identity);
  static Layer maxpool2d(std::int64_t kernel, std::int64_t stride);
  static Layer flatten();
  static Layer rnn(std::int64_t hidden, bool return_sequences = false);
  static Layer lstm(std::int64_t hidden, bool return_sequences = false);
};

// One named parameter tensor of a member's flat vector (PyTorch's names and order: weight then bias for
// dense and conv2d, weight_ih, weight_hh, bias_ih, bias_hh for rnn/lstm with LSTM gates in the order i, f, g, o).
struct ParameterSlice {
  std::string name;                // e.g. "0.weight", "2.weight_hh"
  std::int64_t offset = 0;         // into the member's row
  std::vector<std::int64_t> shape;
  std::int64_t fan_in = 0, fan_out = 0;  // for Glorot initialisation
};

class Network {
 public:
  // input_shape per example: (features) for dense, (channels, height, width) for conv2d, (steps, features)
  // for rnn/lstm. Throws InvalidArgument for layers that do not fit their input.
  Network(std::vector<Layer> layers, std::vector<std::int64_t> input_shape);

  const std::vector<Layer>& layers() const { return layers_; }
  const std::vector<std::int64_t>& input_shape() const { return shapes_.front(); }
  const std::vector<std::int64_t>& output_shape() const { return shapes_.back(); }
  // Per-example shape after layer i (shape(0) is the input; i up to the layer count). InvalidArgument past it.
  const std::vector<std::int64_t>& shape(std::size_t i) const;
  std::int64_t input_size() const;
  std::int64_t output_size() const;
  std::int64_t parameter_count() const { return parameter_count_; }
  const std::vector<ParameterSlice>& parameters() const { return parameters_; }
  // Offset of layer i's first parameter in a member's row. InvalidArgument past the last layer.
  std::int64_t parameter_offset(std::size_t i) const;
  // Values of recurrent state per example and member: h (and c for LSTM) of every recurrent layer, in order.
  std::int64_t state_size() const { return state_size_; }
  // Workspace bytes forward() needs for J members and B examples (it allocates nothing else): exact for the
  // layer-by-layer pass, an upper bound on CUDA, which runs small image and one-step networks whole in
  // shared memory with next to no workspace.
  std::size_t forward_workspace_bytes(std::int64_t J, std::int64_t B, DType dtype) const;

 private:
  std::vector<Layer> layers_;
  std::vector<std::vector<std::int64_t>> shapes_;
  std::vector<ParameterSlice> parameters_;
  std::vector<std::int64_t> layer_parameter_offset_;
  std::int64_t parameter_count_ = 0;
  std::int64_t state_size_ = 0;
};

// G (J x B*output_size) = the outputs of every member on the shared batch X (B x input_size, each example
// flattened in C order). state_in (J x B*state_size, may be empty: zeros) is the recurrent state each member
// starts from; state_out (J x B*state_size, may be empty) receives the state after the last step.
void forward(Context& ctx, const Network& network, ConstMatrixView U, ConstMatrixView X, MatrixView G,
             ConstMatrixView state_in = {}, MatrixView state_out = {});

}  // namespace ekinet
