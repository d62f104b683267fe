#include "test_support.hpp"

namespace ekinet::testing {
namespace {

class Losses : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { EKINET_SKIP_UNLESS_AVAILABLE(GetParam()); }
};
INSTANTIATE_TEST_SUITE_P(Devices, Losses, ::testing::ValuesIn(devices()));

// The gradient of every loss equals central finite differences of its value.
void expect_gradient_matches_differences(Harness& harness, Loss loss, Matrix z, const Matrix& y, std::int64_t J,
                                         std::int64_t M, std::int64_t width, const NoiseCovariance& noise) {
  const std::int64_t targets = static_cast<std::int64_t>(y.size());
  const MatrixView values = harness.zeros(1, J), grad = harness.zeros(J, M);
  loss_and_gradient(harness.context(), loss, harness.upload(z, J, M), harness.upload(y, 1, targets), width, noise,
                    values, grad);
  const Matrix g = harness.download(grad);
  const double h = 1e-6;
  for (std::int64_t i = 0; i < J * M; i += 3) {
    const double saved = z[i];
    z[i] = saved + h;
    loss_and_gradient(harness.context(), loss, harness.upload(z, J, M), harness.upload(y, 1, targets), width, noise,
                      values, MatrixView{});
    const double plus = harness.download(values)[i / M];
    z[i] = saved - h;
    loss_and_gradient(harness.context(), loss, harness.upload(z, J, M), harness.upload(y, 1, targets), width, noise,
                      values, MatrixView{});
    const double minus = harness.download(values)[i / M];
    z[i] = saved;
    EXPECT_NEAR(g[i], (plus - minus) / (2 * h), 1e-6 * (1 + std::abs(g[i]))) << "entry " << i;
  }
}

TEST_P(Losses, GradientsMatchFiniteDifferences) {
  Harness harness(GetParam());
  const std::int64_t J = 3, B = 4, C = 3, M = B * C;
  const Matrix logits = random_matrix(J, M, 1);
  Matrix one_hot(M, 0.0);
  for (std::int64_t b = 0; b < B; ++b) one_hot[b * C + b % C] = 1;
  Matrix probabilities(J * M);
  for (std::int64_t i = 0; i < J * M; ++i) probabilities[i] = 0.2 + 0.1 * std::abs(logits[i]);
  const Matrix targets = random_matrix(1, M, 2);
  Matrix variances(M);
  for (std::int64_t m = 0; m < M; ++m) variances[m] = 0.5 + 0.1 * m;

  expect_gradient_matches_differences(harness, Loss::squared, logits, targets, J, M, M, NoiseCovariance::isotropic(0.3));
  expect_gradient_matches_differences(harness, Loss::squared, logits, targets, J, M, M,
                                      NoiseCovariance::diagonal(harness.upload(variances, 1, M)));
  expect_gradient_matches_differences(harness, Loss::squared, logits, targets, J, M, M,
                                      NoiseCovariance::full(harness.upload(random_spd(M, 3), M, M)));
  expect_gradient_matches_differences(harness, Loss::cross_entropy, probabilities, one_hot, J, M, C, {});
  expect_gradient_matches_differences(harness, Loss::cross_entropy_logits, logits, one_hot, J, M, C, {});
  Matrix mean_std = logits;  // width 2k = 4 per example: [mu1, mu2, sigma1, sigma2]
  for (std::int64_t i = 0; i < J * M; ++i)
    if (i % 4 >= 2) mean_std[i] = 0.5 + std::abs(mean_std[i]);
  expect_gradient_matches_differences(harness, Loss::gaussian_nll, mean_std, random_matrix(1, M / 2, 4), J, M, 4, {});
}

TEST_P(Losses, SoftmaxCrossEntropyValue) {
  Harness harness(GetParam());
  const Matrix logits = {std::log(1.0), std::log(3.0)}, target = {0.0, 1.0};  // p = (1/4, 3/4)
  const MatrixView values = harness.zeros(1, 1);
  loss_and_gradient(harness.context(), Loss::cross_entropy_logits, harness.upload(logits, 1, 2),
                    harness.upload(target, 1, 2), 2, {}, values, MatrixView{});
  EXPECT_NEAR(harness.download(values)[0], -std::log(0.75), 1e-14);
}

TEST_P(Losses, InvalidProbabilitiesAndStandardDeviationsAreRejected) {
  Harness harness(GetParam());
  const MatrixView values = harness.zeros(1, 1);
  EXPECT_THROW(loss_and_gradient(harness.context(), Loss::cross_entropy, harness.upload({0.0, 1.0}, 1, 2),
                                 harness.upload({1.0, 0.0}, 1, 2), 2, {}, values, MatrixView{}),
               InvalidArgument);
  EXPECT_THROW(loss_and_gradient(harness.context(), Loss::gaussian_nll, harness.upload({0.0, -1.0}, 1, 2),
                                 harness.upload({1.0}, 1, 1), 2, {}, values, MatrixView{}),
               InvalidArgument);
  EXPECT_THROW(loss_and_gradient(harness.context(), Loss::cross_entropy_logits, harness.upload({0.0, 1.0, 2.0}, 1, 3),
                                 harness.upload({1.0, 0.0, 0.0}, 1, 3), 2, {}, values, MatrixView{}),
               InvalidArgument);
}

}  // namespace
}  // namespace ekinet::testing
