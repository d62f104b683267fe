// The CUDA backend's whole-network image path (fused_image_network.hpp), run on the host by a team of one: its
// plans, and its outputs against the CPU's layer-by-layer forward for the paper's CNN and for layers at their
// edges (pooling first, strides, padding, channel counts that are not a multiple of a thread's four, a
// convolution as the output, softmax, every activation, NaN parameters).
#include <limits>
#include <optional>
#include <vector>

#include "fused_image_network.hpp"
#include "test_support.hpp"

namespace ekinet::testing {
namespace {

using detail::FusedImagePlan;
using detail::FusedLayer;

Network cnn_mnist() {
  return Network({Layer::conv2d(16, 3, 1, 0, Activation::relu), Layer::maxpool2d(4, 2),
                  Layer::conv2d(16, 3, 1, 0, Activation::relu), Layer::conv2d(12, 3, 1, 0, Activation::relu),
                  Layer::maxpool2d(2, 2), Layer::flatten(), Layer::dense(10)},
                 {1, 28, 28});
}

// Pooling first, a strided and padded tanh convolution of 5 channels, a heaviside convolution padded by more
// than a kernel's overhang, then two dense layers ending in softmax.
Network edge_network() {
  return Network({Layer::maxpool2d(2, 1), Layer::conv2d(5, 3, 2, 1, Activation::tanh),
                  Layer::conv2d(3, 2, 1, 2, Activation::heaviside), Layer::flatten(),
                  Layer::dense(4, Activation::sigmoid), Layer::dense(3, Activation::softmax)},
                 {2, 7, 6});
}

// A convolution (6 channels, padded) as the output layer.
Network convolution_output() { return Network({Layer::conv2d(6, 3, 1, 1)}, {3, 5, 5}); }

template <class T>
Matrix fused_outputs(const Network& network, const Matrix& u, const Matrix& x, std::int64_t J, std::int64_t B) {
  const std::optional<FusedImagePlan> plan = detail::fused_image_plan(network);
  if (!plan) throw std::runtime_error("no fused plan");
  const std::int64_t P = network.parameter_count(), in = network.input_size(), out = network.output_size();
  const std::vector<T> parameters(u.begin(), u.end()), images(x.begin(), x.end());
  std::vector<T> first(static_cast<std::size_t>(plan->buffer_size[0])),
      second(static_cast<std::size_t>(plan->buffer_size[1])), outputs(static_cast<std::size_t>(J * B * out));
  T* const buffers[2] = {first.data(), second.data()};
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t b = 0; b < B; ++b)
      detail::fused_image_forward(*plan, &parameters[j * P], &images[b * in], buffers, &outputs[(j * B + b) * out],
                                  detail::SerialTeam{});
  return Matrix(outputs.begin(), outputs.end());
}

template <class T>
Matrix layered_outputs(const Network& network, const Matrix& u, const Matrix& x, std::int64_t J, std::int64_t B) {
  Harness harness("cpu");
  MatrixView G = harness.zeros<T>(J, B * network.output_size());
  forward(harness.context(), network, harness.upload<T>(u, J, network.parameter_count()),
          harness.upload<T>(x, B, network.input_size()), G);
  return harness.download(G);
}

template <class T>
void expect_equal_to_layered(const Network& network, double tolerance) {
  const std::int64_t J = 3, B = 2;
  const Matrix u = random_matrix(J, network.parameter_count(), 11, 0.3);
  const Matrix x = random_matrix(B, network.input_size(), 12);
  const Matrix fused = fused_outputs<T>(network, u, x, J, B);
  const Matrix layered = layered_outputs<T>(network, u, x, J, B);
  ASSERT_EQ(fused.size(), layered.size());
  EXPECT_LE(max_abs_difference(fused, layered), tolerance * (1 + max_abs(layered)));
  EXPECT_GT(max_abs(layered), 0.0);
}

TEST(FusedImageNetwork, PlanOfCnnMnistSkipsFlattenAndAlternatesBuffers) {
  const std::optional<FusedImagePlan> plan = detail::fused_image_plan(cnn_mnist());
  ASSERT_TRUE(plan.has_value());
  ASSERT_EQ(plan->layer_count, 6);
  EXPECT_EQ(plan->parameter_count, 6150);
  EXPECT_EQ(plan->input_size, 784);
  EXPECT_EQ(plan->output_size, 10);
  // image (784) in 0; conv 16x26x26 in 1, pool 16x12x12 in 0, conv 16x10x10 in 1, conv 12x8x8 in 0, pool 12x4x4
  // in 1; the dense layer writes the outputs
  const int sources[] = {0, 1, 0, 1, 0, 1}, targets[] = {1, 0, 1, 0, 1, FusedLayer::kOutput};
  for (int i = 0; i < plan->layer_count; ++i) {
    EXPECT_EQ(plan->layers[i].source, sources[i]) << i;
    EXPECT_EQ(plan->layers[i].target, targets[i]) << i;
  }
  EXPECT_EQ(plan->buffer_size[0], 16 * 12 * 12);
  EXPECT_EQ(plan->buffer_size[1], 16 * 26 * 26);
  EXPECT_EQ(plan->layers[5].in_size(), 192);
  EXPECT_EQ(plan->shared_bytes<float>(), (6150u + 2304u + 10816u) * 4u);
}

TEST(FusedImageNetwork, NetworksItDoesNotRunHaveNoPlan) {
  EXPECT_FALSE(detail::fused_image_plan(Network({Layer::dense(10)}, {784})).has_value());  // dense only: GEMMs
  EXPECT_FALSE(detail::fused_image_plan(Network({Layer::lstm(4), Layer::dense(1)}, {5, 1})).has_value());
  std::vector<Layer> deep(FusedImagePlan::kMaxLayers + 1, Layer::conv2d(1, 1));
  EXPECT_FALSE(detail::fused_image_plan(Network(deep, {1, 3, 3})).has_value());
  deep.pop_back();
  EXPECT_TRUE(detail::fused_image_plan(Network(deep, {1, 3, 3})).has_value());
}

TEST(FusedImageNetwork, CnnMnistEqualsTheLayeredForward) {
  expect_equal_to_layered<double>(cnn_mnist(), 1e-12);
  expect_equal_to_layered<float>(cnn_mnist(), 2e-5);
}

TEST(FusedImageNetwork, EdgeLayersEqualTheLayeredForward) {
  expect_equal_to_layered<double>(edge_network(), 1e-12);
  expect_equal_to_layered<float>(edge_network(), 2e-5);
}

TEST(FusedImageNetwork, ConvolutionOutputEqualsTheLayeredForward) {
  expect_equal_to_layered<double>(convolution_output(), 1e-12);
}

TEST(FusedImageNetwork, SoftmaxRowsSumToOne) {
  const Network network = edge_network();
  const Matrix u = random_matrix(2, network.parameter_count(), 3), x = random_matrix(4, network.input_size(), 4);
  const Matrix out = fused_outputs<double>(network, u, x, 2, 4);
  for (std::size_t row = 0; row < out.size(); row += 3) EXPECT_NEAR(out[row] + out[row + 1] + out[row + 2], 1.0, 1e-12);
}

TEST(FusedImageNetwork, NaNParameterMakesOnlyItsMemberNaN) {
  const Network network = cnn_mnist();
  const std::int64_t J = 2, B = 2, P = network.parameter_count();
  Matrix u = random_matrix(J, P, 5, 0.3);
  u[P + 7] = std::numeric_limits<double>::quiet_NaN();  // member 1, a first-layer weight
  const Matrix out = fused_outputs<double>(network, u, random_matrix(B, network.input_size(), 6), J, B);
  for (std::int64_t k = 0; k < B * 10; ++k) {
    EXPECT_TRUE(std::isfinite(out[k])) << k;
    EXPECT_TRUE(std::isnan(out[B * 10 + k])) << k;
  }
}

}  // namespace
}  // namespace ekinet::testing
