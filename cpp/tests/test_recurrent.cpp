// The two schedules of a recurrent layer agree: the CPU backend's (each member through all steps on one core,
// with transposed weights for four or more examples, dot products below) and the step-by-step one built from
// the batched primitives that the CUDA backend runs (recurrent_steps.hpp), here on the CPU primitives. The
// Python tests check the CPU schedule against the NumPy reference and PyTorch; this keeps the CUDA schedule's
// logic tested on machines without a GPU.
#include <tuple>

#include "recurrent_steps.hpp"
#include "test_support.hpp"

namespace ekinet::testing {
namespace {

class RecurrentSchedules : public ::testing::TestWithParam<std::tuple<bool, std::int64_t, bool>> {};

TEST_P(RecurrentSchedules, FusedCpuScheduleEqualsTheStepByStepSchedule) {
  const auto [lstm, B, initial_state] = GetParam();
  const std::int64_t J = 3, steps = 4, F = 3, H = 5, G = (lstm ? 4 : 1) * H;
  const std::int64_t P = G * F + G * H + 2 * G + 7;  // a row stride wider than the layer's parameters
  auto context = make_cpu_context();
  auto& backend = detail::backend_of<double>(*context);

  const Matrix params = random_matrix(J, P, 1, 0.5);
  const Matrix x = random_matrix(B * steps, F, 2);  // shared by every member
  const Matrix h0 = random_matrix(J, B * H, 3), c0 = random_matrix(J, B * H, 4);

  detail::RecurrentLayer<double> layer;
  layer.lstm = lstm;
  layer.members = J;
  layer.examples = B;
  layer.steps = steps;
  layer.features = F;
  layer.hidden = H;
  layer.x = x.data();
  layer.x_ld = F;
  layer.params = params.data();
  layer.params_stride = P;
  if (initial_state) {
    layer.h0 = h0.data();
    layer.c0 = lstm ? c0.data() : nullptr;
    layer.state_in_stride = B * H;
  }
  layer.c_out_stride = B * H;

  const std::int64_t outputs = J * layer.h_member_stride();
  Matrix fused_h(outputs, 0.0), steps_h(outputs, 0.0), fused_c(J * B * H, 0.0), steps_c(J * B * H, 0.0);
  backend.workspace().reset();
  layer.h = fused_h.data();
  layer.c_out = lstm ? fused_c.data() : nullptr;
  backend.recurrent(layer);
  backend.workspace().reset();
  layer.h = steps_h.data();
  layer.c_out = lstm ? steps_c.data() : nullptr;
  detail::recurrent_by_steps(backend, layer);

  EXPECT_GT(max_abs(fused_h), 0.05);  // the layer did something
  EXPECT_LT(max_abs_difference(fused_h, steps_h), 1e-13);
  EXPECT_LT(max_abs_difference(fused_c, steps_c), 1e-13);
}

// Elman and LSTM; 2 examples (dot products) and 5 (transposed weights); zero or given initial state.
INSTANTIATE_TEST_SUITE_P(Cpu, RecurrentSchedules,
                         ::testing::Combine(::testing::Bool(), ::testing::Values<std::int64_t>(2, 5),
                                            ::testing::Bool()));

}  // namespace
}  // namespace ekinet::testing
