#include "test_support.hpp"

namespace ekinet::testing {
namespace {

class LossUpdate : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { EKINET_SKIP_UNLESS_AVAILABLE(GetParam()); }
};
INSTANTIATE_TEST_SUITE_P(Devices, LossUpdate, ::testing::ValuesIn(devices()));

// u_j - h sum_k D^{jk} u_k with D^{jk} = (1/J) <G_k - Gbar, g_j>, and the adaptive h.
Matrix textbook(const Matrix& U, const Matrix& G, const Matrix& grad, std::int64_t J, std::int64_t P, std::int64_t M,
                double h, bool adaptive, double eps, double& step) {
  Matrix gbar(M, 0.0), d(J * J, 0.0);
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t m = 0; m < M; ++m) gbar[m] += G[j * M + m] / J;
  double norm = 0;
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t k = 0; k < J; ++k) {
      for (std::int64_t m = 0; m < M; ++m) d[j * J + k] += (G[k * M + m] - gbar[m]) * grad[j * M + m] / J;
      norm += d[j * J + k] * d[j * J + k];
    }
  step = adaptive ? h / (std::sqrt(norm) + eps) : h;
  Matrix out = U;
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t k = 0; k < J; ++k)
      for (std::int64_t p = 0; p < P; ++p) out[j * P + p] -= step * d[j * J + k] * U[k * P + p];
  return out;
}

TEST_P(LossUpdate, EqualsTheTextbookSchemeWithAndWithoutAdaptiveStep) {
  const std::int64_t J = 9, P = 14, M = 6;
  const Matrix U = random_matrix(J, P, 1), G = random_matrix(J, M, 2), grad = random_matrix(J, M, 3);
  for (bool adaptive : {true, false}) {
    Harness harness(GetParam());
    const MatrixView out = harness.zeros(J, P);
    LossUpdateOptions options;
    options.step = 0.3;
    options.adaptive = adaptive;
    const UpdateReport report = loss_update(harness.context(), harness.upload(U, J, P), harness.upload(G, J, M),
                                            harness.upload(grad, J, M), options, out);
    double step = 0;
    const Matrix expected = textbook(U, G, grad, J, P, M, 0.3, adaptive, 1e-8, step);
    EXPECT_NEAR(report.step, step, 1e-12 * step);
    EXPECT_LT(max_abs_difference(harness.download(out), expected), 1e-10 * (1 + max_abs(expected)));
  }
}

// With eps = 0 and outputs that do not vary over the members D = 0: the update moves nothing whatever the step,
// so the adaptive step is h itself, not h / 0 (which made 0 * Inf = NaN of the ensemble).
TEST_P(LossUpdate, ZeroDWithZeroEpsMovesNothing) {
  const std::int64_t J = 4, P = 3, M = 2;
  const Matrix U = random_matrix(J, P, 5), G(J * M, 1.0), grad = random_matrix(J, M, 6);
  Harness harness(GetParam());
  const MatrixView u = harness.upload(U, J, P);
  LossUpdateOptions options;
  options.eps = 0;
  options.step = 0.5;
  const UpdateReport report =
      loss_update(harness.context(), u, harness.upload(G, J, M), harness.upload(grad, J, M), options, u);
  EXPECT_EQ(report.step, 0.5);
  EXPECT_LT(max_abs_difference(harness.download(u), U), 1e-15);
}

TEST_P(LossUpdate, NaNRowsOfTheGradientAreFailedMembers) {
  const std::int64_t J = 5, P = 3, M = 4;
  const Matrix U = random_matrix(J, P, 4), G = random_matrix(J, M, 5);
  Matrix grad = random_matrix(J, M, 6);
  grad[3 * M] = std::nan("");
  Harness harness(GetParam());
  const MatrixView out = harness.zeros(J, P);
  LossUpdateOptions options;
  const UpdateReport report = loss_update(harness.context(), harness.upload(U, J, P), harness.upload(G, J, M),
                                          harness.upload(grad, J, M), options, out);
  EXPECT_EQ(report.failed_members, 1);
  for (double v : harness.download(out)) EXPECT_TRUE(std::isfinite(v));
  EXPECT_THROW(loss_update(harness.context(), harness.upload(U, J, P), harness.upload(G, J, M),
                           harness.upload(grad, J, M - 1), options, out),
               InvalidArgument);
}

TEST_P(LossUpdate, MeanOutputIsTheMeanOfTheUpdatedEnsemble) {
  const std::int64_t J = 9, P = 14, M = 6;
  const Matrix U = random_matrix(J, P, 11), G = random_matrix(J, M, 12);
  Matrix grad = random_matrix(J, M, 13);
  for (bool failures : {false, true}) {
    if (failures) grad[4 * M + 1] = INFINITY;
    Harness harness(GetParam());
    const MatrixView u = harness.upload(U, J, P), g = harness.upload(G, J, M), d = harness.upload(grad, J, M);
    LossUpdateOptions options;
    options.step = 0.4;
    const MatrixView full = harness.zeros(J, P), mean = harness.zeros(1, P);
    const UpdateReport full_report = loss_update(harness.context(), u, g, d, options, full);
    options.output = UpdateOutput::mean;
    const UpdateReport report = loss_update(harness.context(), u, g, d, options, mean);
    EXPECT_EQ(report.failed_members, failures ? 1 : 0);
    EXPECT_DOUBLE_EQ(report.step, full_report.step);
    const Matrix updated = harness.download(full);
    Matrix expected(P, 0.0);
    for (std::int64_t j = 0; j < J; ++j)
      for (std::int64_t p = 0; p < P; ++p) expected[p] += updated[j * P + p] / J;
    EXPECT_LT(max_abs_difference(harness.download(mean), expected), 1e-12 * (1 + max_abs(expected)));
    EXPECT_THROW(loss_update(harness.context(), u, g, d, options, full), InvalidArgument);
  }
}

TEST_P(LossUpdate, NesterovExtrapolation) {
  const Matrix a = random_matrix(3, 4, 7), b = random_matrix(3, 4, 8);
  Harness harness(GetParam());
  const MatrixView out = harness.zeros(3, 4);
  const double c = nesterov_coefficient(5);
  EXPECT_DOUBLE_EQ(c, 5.0 / 8.0);
  nesterov_extrapolate(harness.context(), harness.upload(a, 3, 4), harness.upload(b, 3, 4), c, out);
  const Matrix v = harness.download(out);
  for (std::size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(v[i], a[i] + c * (a[i] - b[i]), 1e-14);
}

}  // namespace
}  // namespace ekinet::testing
