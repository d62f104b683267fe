// Shape inference and the parameter layout of an ensemble network (PyTorch's tensor names, shapes and order).
#include "ekinet/network.hpp"

#include <algorithm>
#include <string>

#include "ekinet/errors.hpp"

namespace ekinet {

namespace {

using Shape = std::vector<std::int64_t>;

std::string shape_text(const Shape& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + (shape.size() == 1 ? ",)" : ")");
}

// Sizes come from the caller: a product past int64 would wrap silently (undefined behaviour), so it throws.
std::int64_t product(const Shape& shape) {
  std::int64_t size = 1;
  for (const std::int64_t extent : shape) {
    if (__builtin_mul_overflow(size, extent, &size)) {
      throw InvalidArgument("network size " + shape_text(shape) + " overflows a 64-bit count; use smaller layers");
    }
  }
  return size;
}

std::int64_t sum(std::int64_t a, std::int64_t b) {
  std::int64_t total = 0;
  if (__builtin_add_overflow(a, b, &total)) {
    throw InvalidArgument("network size " + std::to_string(a) + " + " + std::to_string(b) +
                          " overflows a 64-bit count; use smaller layers");
  }
  return total;
}

const char* kind_name(Layer::Kind kind) {
  switch (kind) {
    case Layer::Kind::dense: return "Dense";
    case Layer::Kind::conv2d: return "Conv2d";
    case Layer::Kind::maxpool2d: return "MaxPool2d";
    case Layer::Kind::flatten: return "Flatten";
    case Layer::Kind::rnn: return "RNN";
    case Layer::Kind::lstm: return "LSTM";
  }
  return "layer";
}

[[noreturn]] void reject(std::size_t index, const Layer& layer, const Shape& input, const std::string& why) {
  throw InvalidArgument("network layer " + std::to_string(index) + " (" + kind_name(layer.kind) + ") cannot take " +
                        "input of shape " + shape_text(input) + " per example: " + why);
}

// Spatial output size of a window of `kernel` moved by `stride` over `size` padded by `padding` on each side.
std::int64_t window_count(std::int64_t size, std::int64_t kernel, std::int64_t stride, std::int64_t padding) {
  return (sum(size, product({2, padding})) - kernel) / stride + 1;
}

}  // namespace

std::string to_string(Activation activation) {
  switch (activation) {
    case Activation::identity: return "identity";
    case Activation::relu: return "relu";
    case Activation::tanh: return "tanh";
    case Activation::sigmoid: return "sigmoid";
    case Activation::heaviside: return "heaviside";
    case Activation::softmax: return "softmax";
  }
  return "unknown";
}

Layer Layer::dense(std::int64_t units, Activation activation) {
  Layer layer;
  layer.kind = Kind::dense;
  layer.units = units;
  layer.activation = activation;
  return layer;
}

Layer Layer::conv2d(std::int64_t channels, std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                    Activation activation) {
  Layer layer;
  layer.kind = Kind::conv2d;
  layer.units = channels;
  layer.kernel = kernel;
  layer.stride = stride;
  layer.padding = padding;
  layer.activation = activation;
  return layer;
}

Layer Layer::maxpool2d(std::int64_t kernel, std::int64_t stride) {
  Layer layer;
  layer.kind = Kind::maxpool2d;
  layer.kernel = kernel;
  layer.stride = stride;
  return layer;
}

Layer Layer::flatten() {
  Layer layer;
  layer.kind = Kind::flatten;
  return layer;
}

Layer Layer::rnn(std::int64_t hidden, bool return_sequences) {
  Layer layer;
  layer.kind = Kind::rnn;
  layer.units = hidden;
  layer.return_sequences = return_sequences;
  return layer;
}

Layer Layer::lstm(std::int64_t hidden, bool return_sequences) {
  Layer layer = rnn(hidden, return_sequences);
  layer.kind = Kind::lstm;
  return layer;
}

Network::Network(std::vector<Layer> layers, std::vector<std::int64_t> input_shape) : layers_(std::move(layers)) {
  if (layers_.empty()) throw InvalidArgument("a network needs at least one layer");
  if (input_shape.empty() ||
      std::any_of(input_shape.begin(), input_shape.end(), [](std::int64_t extent) { return extent < 1; })) {
    throw InvalidArgument("network input shape " + shape_text(input_shape) + " must have positive sizes");
  }
  product(input_shape);  // throws if the input size overflows
  shapes_.push_back(std::move(input_shape));
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    const Shape& in = shapes_.back();
    const std::string prefix = std::to_string(i) + ".";
    layer_parameter_offset_.push_back(parameter_count_);
    auto add = [&](const std::string& name, Shape shape, std::int64_t fan_in, std::int64_t fan_out) {
      parameters_.push_back({prefix + name, parameter_count_, shape, fan_in, fan_out});
      if (__builtin_add_overflow(parameter_count_, product(shape), &parameter_count_)) {
        throw InvalidArgument("the network's parameter count overflows a 64-bit count; use smaller layers");
      }
    };
    Shape out;
    switch (layer.kind) {
      case Layer::Kind::dense: {
        if (layer.units < 1) reject(i, layer, in, "units must be positive");
        if (in.size() > 2) reject(i, layer, in, "images must be flattened first (add a Flatten layer)");
        const std::int64_t features = in.back();
        add("weight", {layer.units, features}, features, layer.units);
        add("bias", {layer.units}, features, layer.units);
        out = in;
        out.back() = layer.units;  // applied to the last axis: per time step after a sequence layer
        break;
      }
      case Layer::Kind::conv2d: {
        if (in.size() != 3) reject(i, layer, in, "expected (channels, height, width)");
        if (layer.units < 1 || layer.kernel < 1 || layer.stride < 1 || layer.padding < 0) {
          reject(i, layer, in, "channels, kernel and stride must be positive and padding non-negative");
        }
        const std::int64_t padded = product({2, layer.padding});
        if (sum(in[1], padded) < layer.kernel || sum(in[2], padded) < layer.kernel) {
          reject(i, layer, in, "the kernel is larger than the padded image");
        }
        if (layer.activation == Activation::softmax) {
          reject(i, layer, in, "softmax is defined for Dense outputs only");
        }
        const std::int64_t height = window_count(in[1], layer.kernel, layer.stride, layer.padding);
        const std::int64_t width = window_count(in[2], layer.kernel, layer.stride, layer.padding);
        const std::int64_t receptive = product({in[0], layer.kernel, layer.kernel});
        const std::int64_t fan_out = product({layer.units, layer.kernel, layer.kernel});
        add("weight", {layer.units, in[0], layer.kernel, layer.kernel}, receptive, fan_out);
        add("bias", {layer.units}, receptive, fan_out);
        out = {layer.units, height, width};
        break;
      }
      case Layer::Kind::maxpool2d: {
        if (in.size() != 3) reject(i, layer, in, "expected (channels, height, width)");
        if (layer.kernel < 1 || layer.stride < 1) reject(i, layer, in, "kernel and stride must be positive");
        if (in[1] < layer.kernel || in[2] < layer.kernel) reject(i, layer, in, "the window is larger than the image");
        const std::int64_t height = window_count(in[1], layer.kernel, layer.stride, 0);
        const std::int64_t width = window_count(in[2], layer.kernel, layer.stride, 0);
        out = {in[0], height, width};
        break;
      }
      case Layer::Kind::flatten:
        out = {product(in)};
        break;
      case Layer::Kind::rnn:
      case Layer::Kind::lstm: {
        if (in.size() != 2) reject(i, layer, in, "expected (steps, features)");
        if (layer.units < 1) reject(i, layer, in, "the hidden size must be positive");
        const bool lstm = layer.kind == Layer::Kind::lstm;
        const std::int64_t hidden = layer.units, features = in[1], rows = product({lstm ? 4 : 1, hidden});
        add("weight_ih", {rows, features}, features, rows);
        add("weight_hh", {rows, hidden}, hidden, rows);
        add("bias_ih", {rows}, features, rows);
        add("bias_hh", {rows}, hidden, rows);
        state_size_ = sum(state_size_, product({lstm ? 2 : 1, hidden}));
        out = layer.return_sequences ? Shape{in[0], hidden} : Shape{hidden};
        break;
      }
    }
    if (layer.activation == Activation::softmax && i + 1 != layers_.size()) {
      reject(i, layer, in, "softmax is an output activation: only the last layer may use it");
    }
    product(out);  // throws if the layer's output size overflows (forward() multiplies these shapes freely)
    shapes_.push_back(out);
  }
}

const std::vector<std::int64_t>& Network::shape(std::size_t i) const {
  if (i >= shapes_.size()) {
    throw InvalidArgument("shape(" + std::to_string(i) + "): the network has " + std::to_string(layers_.size()) +
                          " layers, so i goes up to " + std::to_string(layers_.size()) + " (0 is the input)");
  }
  return shapes_[i];
}

std::int64_t Network::parameter_offset(std::size_t i) const {
  if (i >= layers_.size()) {
    throw InvalidArgument("parameter_offset(" + std::to_string(i) + "): the network has " +
                          std::to_string(layers_.size()) + " layers (0 to " + std::to_string(layers_.size()) +
                          " - 1)");
  }
  return layer_parameter_offset_[i];
}

std::int64_t Network::input_size() const { return product(shapes_.front()); }

std::int64_t Network::output_size() const { return product(shapes_.back()); }

}  // namespace ekinet
