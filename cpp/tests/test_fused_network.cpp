// The CUDA backend's whole-network path (fused_network.hpp), run on the host by a team of one: its plans, and its
// outputs against the CPU's layer-by-layer forward. Image networks: the paper's CNN and layers at their edges
// (pooling first, strides, padding, channel counts that are not a multiple of a thread's four, a convolution as
// the output, softmax, every activation, NaN parameters). One recurrent step: LSTM and Elman layers, stacked,
// with dense layers before and after, from a given state or zeros, several examples, and the state returned.
#include <condition_variable>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "fused_network.hpp"
#include "test_support.hpp"

namespace ekinet::testing {
namespace {

using detail::FusedPlan;
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

// A team of real threads meeting at a barrier, as a GPU block's do: it exercises the ranks' partition of the
// work and the barriers between layers, which a team of one cannot.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      all_arrived_.notify_all();
    } else {
      all_arrived_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable all_arrived_;
  const int count_;
  int arrived_ = 0;
  long generation_ = 0;
};

struct ThreadTeam {
  int rank_, size_;
  Barrier* barrier;
  int rank() const { return rank_; }
  int size() const { return size_; }
  void sync() const { barrier->wait(); }
};

// Outputs (J x B * output_size) and, for recurrent networks, the state after the step (J x B * state_size).
struct Outputs {
  Matrix outputs, state;
};

template <class T>
Outputs fused_outputs(const Network& network, const Matrix& u, const Matrix& x, std::int64_t J, std::int64_t B,
                      const Matrix& state = {}, int threads = 1) {
  const std::optional<FusedPlan> plan = detail::fused_plan(network);
  if (!plan) throw std::runtime_error("no fused plan");
  const std::int64_t P = network.parameter_count(), in = network.input_size(), out = network.output_size();
  const std::int64_t S = B * network.state_size();
  const std::vector<T> parameters(u.begin(), u.end()), examples(x.begin(), x.end()), state_in(state.begin(),
                                                                                              state.end());
  std::vector<T> first(static_cast<std::size_t>(plan->buffer_size[0])),
      second(static_cast<std::size_t>(plan->buffer_size[1])), gates(static_cast<std::size_t>(plan->buffer_size[2])),
      outputs(static_cast<std::size_t>(J * B * out)), state_out(static_cast<std::size_t>(J * S));
  T* const buffers[3] = {first.data(), second.data(), gates.data()};
  const auto run = [&](const auto& team) {
    for (std::int64_t j = 0; j < J; ++j)
      for (std::int64_t b = 0; b < B; ++b)
        detail::fused_forward(*plan, &parameters[j * P], &examples[b * in], buffers, &outputs[(j * B + b) * out],
                              state.empty() ? nullptr : &state_in[j * S], S == 0 ? nullptr : &state_out[j * S], B,
                              b, team);
  };
  if (threads == 1) {
    run(detail::SerialTeam{});
  } else {
    Barrier barrier(threads);
    std::vector<std::thread> team;
    for (int rank = 0; rank < threads; ++rank) {
      team.emplace_back([&, rank] { run(ThreadTeam{rank, threads, &barrier}); });
    }
    for (std::thread& thread : team) thread.join();
  }
  return {Matrix(outputs.begin(), outputs.end()), Matrix(state_out.begin(), state_out.end())};
}

template <class T>
Outputs layered_outputs(const Network& network, const Matrix& u, const Matrix& x, std::int64_t J, std::int64_t B,
                        const Matrix& state = {}) {
  Harness harness("cpu");
  const std::int64_t S = B * network.state_size();
  MatrixView G = harness.zeros<T>(J, B * network.output_size());
  MatrixView state_out = harness.zeros<T>(J, S);
  forward(harness.context(), network, harness.upload<T>(u, J, network.parameter_count()),
          harness.upload<T>(x, B, network.input_size()), G,
          state.empty() ? ConstMatrixView{} : ConstMatrixView(harness.upload<T>(state, J, S)),
          S == 0 ? MatrixView{} : state_out);
  return {harness.download(G), S == 0 ? Matrix{} : harness.download(state_out)};
}

template <class T>
void expect_equal_to_layered(const Network& network, double tolerance, std::int64_t J = 3, std::int64_t B = 2,
                             bool with_state = false, int threads = 1) {
  const Matrix u = random_matrix(J, network.parameter_count(), 11, 0.3);
  const Matrix x = random_matrix(B, network.input_size(), 12);
  const Matrix state = with_state ? random_matrix(J, B * network.state_size(), 13, 0.5) : Matrix{};
  const Outputs fused = fused_outputs<T>(network, u, x, J, B, state, threads);
  const Outputs layered = layered_outputs<T>(network, u, x, J, B, state);
  ASSERT_EQ(fused.outputs.size(), layered.outputs.size());
  EXPECT_LE(max_abs_difference(fused.outputs, layered.outputs), tolerance * (1 + max_abs(layered.outputs)));
  EXPECT_GT(max_abs(layered.outputs), 0.0);
  if (network.state_size() > 0) {
    ASSERT_EQ(fused.state.size(), layered.state.size());
    EXPECT_LE(max_abs_difference(fused.state, layered.state), tolerance * (1 + max_abs(layered.state)));
    EXPECT_GT(max_abs(layered.state), 0.0);
  }
}

TEST(FusedNetwork, PlanOfCnnMnistSkipsFlattenAndAlternatesBuffers) {
  const std::optional<FusedPlan> plan = detail::fused_plan(cnn_mnist());
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

TEST(FusedNetwork, NetworksItDoesNotRunHaveNoPlan) {
  EXPECT_FALSE(detail::fused_plan(Network({Layer::dense(10)}, {784})).has_value());  // dense only: GEMMs
  EXPECT_FALSE(detail::fused_plan(Network({Layer::lstm(4), Layer::dense(1)}, {5, 1})).has_value());  // 5 steps
  EXPECT_FALSE(detail::fused_plan(Network({Layer::dense(4), Layer::dense(1)}, {1, 3})).has_value());
  std::vector<Layer> deep(FusedPlan::kMaxLayers + 1, Layer::conv2d(1, 1));
  EXPECT_FALSE(detail::fused_plan(Network(deep, {1, 3, 3})).has_value());
  deep.pop_back();
  EXPECT_TRUE(detail::fused_plan(Network(deep, {1, 3, 3})).has_value());
}

TEST(FusedNetwork, CnnMnistEqualsTheLayeredForward) {
  expect_equal_to_layered<double>(cnn_mnist(), 1e-12);
  expect_equal_to_layered<float>(cnn_mnist(), 2e-5);
}

TEST(FusedNetwork, EdgeLayersEqualTheLayeredForward) {
  expect_equal_to_layered<double>(edge_network(), 1e-12);
  expect_equal_to_layered<float>(edge_network(), 2e-5);
}

TEST(FusedNetwork, ConvolutionOutputEqualsTheLayeredForward) {
  expect_equal_to_layered<double>(convolution_output(), 1e-12);
}

TEST(FusedNetwork, SoftmaxRowsSumToOne) {
  const Network network = edge_network();
  const Matrix u = random_matrix(2, network.parameter_count(), 3), x = random_matrix(4, network.input_size(), 4);
  const Matrix out = fused_outputs<double>(network, u, x, 2, 4).outputs;
  for (std::size_t row = 0; row < out.size(); row += 3) EXPECT_NEAR(out[row] + out[row + 1] + out[row + 2], 1.0, 1e-12);
}

TEST(FusedNetwork, NaNParameterMakesOnlyItsMemberNaN) {
  const Network network = cnn_mnist();
  const std::int64_t J = 2, B = 2, P = network.parameter_count();
  Matrix u = random_matrix(J, P, 5, 0.3);
  u[P + 7] = std::numeric_limits<double>::quiet_NaN();  // member 1, a first-layer weight
  const Matrix out = fused_outputs<double>(network, u, random_matrix(B, network.input_size(), 6), J, B).outputs;
  for (std::int64_t k = 0; k < B * 10; ++k) {
    EXPECT_TRUE(std::isfinite(out[k])) << k;
    EXPECT_TRUE(std::isnan(out[B * 10 + k])) << k;
  }
}

// The online drivers' network: LSTM(32) and a linear readout, one step of one observation.
Network online_lstm() { return Network({Layer::lstm(32), Layer::dense(1)}, {1, 1}); }

// Dense layers before and after, an LSTM feeding an Elman RNN (which returns its one-step sequence), softmax.
Network stacked_step() {
  return Network({Layer::dense(5, Activation::tanh), Layer::lstm(6, true), Layer::rnn(7), Layer::dense(4),
                  Layer::dense(3, Activation::softmax)},
                 {1, 3});
}

TEST(FusedNetwork, PlanOfAStepLaysOutTheStateAsTheNetworkDoes) {
  const Network network = stacked_step();
  const std::optional<FusedPlan> plan = detail::fused_plan(network);
  ASSERT_TRUE(plan.has_value());
  ASSERT_EQ(plan->layer_count, 5);
  EXPECT_EQ(plan->state_size, network.state_size());
  EXPECT_EQ(plan->layers[1].state, 0);      // the LSTM's h and c come first
  EXPECT_EQ(plan->layers[2].state, 2 * 6);  // then the RNN's h
  EXPECT_EQ(plan->state_size, 2 * 6 + 7);
  EXPECT_EQ(plan->buffer_size[2], 4 * 6);  // the LSTM's gates
  EXPECT_EQ(plan->layers[1].in_size(), 5);
  EXPECT_EQ(plan->layers[2].out_size(), 7);
}

TEST(FusedNetwork, OnlineLstmStepEqualsTheLayeredForward) {
  expect_equal_to_layered<double>(online_lstm(), 1e-12, 5, 1, true);
  expect_equal_to_layered<double>(online_lstm(), 1e-12, 5, 1, false);
  expect_equal_to_layered<float>(online_lstm(), 2e-5, 5, 1, true);
}

TEST(FusedNetwork, StackedStepEqualsTheLayeredForwardForSeveralExamples) {
  expect_equal_to_layered<double>(stacked_step(), 1e-12, 3, 4, true);
  expect_equal_to_layered<double>(stacked_step(), 1e-12, 3, 4, false);
  expect_equal_to_layered<double>(Network({Layer::rnn(8), Layer::dense(2)}, {1, 2}), 1e-12, 2, 3, true);
}

TEST(FusedNetwork, TeamsOfThreadsEqualTheLayeredForward) {
  for (const int threads : {2, 7}) {  // 7: ranks with uneven shares of every layer
    expect_equal_to_layered<double>(cnn_mnist(), 1e-12, 2, 2, false, threads);
    expect_equal_to_layered<double>(edge_network(), 1e-12, 2, 3, false, threads);
    expect_equal_to_layered<double>(stacked_step(), 1e-12, 2, 3, true, threads);
  }
}

}  // namespace
}  // namespace ekinet::testing
