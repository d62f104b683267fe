#include "test_support.hpp"

namespace ekinet::testing {
namespace {

TEST(CounterRandom, IsDeterministicAndStandardNormal) {
  const std::uint64_t key = stream_key(7, RandomStream::perturbation);
  EXPECT_EQ(standard_normal(key, 12345), standard_normal(key, 12345));
  EXPECT_NE(standard_normal(key, 1), standard_normal(stream_key(7, RandomStream::redraw), 1));
  const int n = 200000;
  double sum = 0, sum_squares = 0, sum_fourth = 0;
  for (int i = 0; i < n; ++i) {
    const double z = standard_normal(key, static_cast<std::uint64_t>(i));
    sum += z;
    sum_squares += z * z;
    sum_fourth += z * z * z * z;
  }
  EXPECT_NEAR(sum / n, 0.0, 5 / std::sqrt(n));                 // 5 standard errors
  EXPECT_NEAR(sum_squares / n, 1.0, 5 * std::sqrt(2.0 / n));
  EXPECT_NEAR(sum_fourth / n, 3.0, 5 * std::sqrt(96.0 / n));
}

class Randomization : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { EKINET_SKIP_UNLESS_AVAILABLE(GetParam()); }
};
INSTANTIATE_TEST_SUITE_P(Devices, Randomization, ::testing::ValuesIn(devices()));

TEST_P(Randomization, RedrawsAroundTheMeanWithThePriorScale) {
  const std::int64_t J = 4000, P = 3;
  const Matrix U = random_matrix(J, P, 5);
  Harness harness(GetParam());
  const MatrixView out = harness.zeros(J, P);
  randomize(harness.context(), harness.upload(U, J, P), 0.5, harness.upload({1.0, 2.0, 0.0}, 1, P), 9, out);
  const Matrix r = harness.download(out);
  Matrix mean(P, 0.0), new_mean(P, 0.0), variance(P, 0.0);
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t p = 0; p < P; ++p) {
      mean[p] += U[j * P + p] / J;
      new_mean[p] += r[j * P + p] / J;
    }
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t p = 0; p < P; ++p) variance[p] += std::pow(r[j * P + p] - new_mean[p], 2) / J;
  EXPECT_NEAR(std::sqrt(variance[0]), 0.5, 0.03);
  EXPECT_NEAR(std::sqrt(variance[1]), 1.0, 0.06);
  EXPECT_NEAR(variance[2], 0.0, 1e-20);  // a zero prior scale leaves that parameter at the mean
  EXPECT_NEAR(new_mean[2], mean[2], 1e-12);
  EXPECT_NEAR(ensemble_spread(harness.context(), out), variance[0] + variance[1] + variance[2], 1e-9);
}

// randomize(U) is randomize_around(mean of U): the same draws; the mean is checked like any input.
TEST_P(Randomization, AroundAGivenMeanDrawsWhatRandomizeDraws) {
  const std::int64_t J = 7, P = 5;
  const Matrix U = random_matrix(J, P, 21);
  Matrix mean(P, 0.0);
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t p = 0; p < P; ++p) mean[p] += U[j * P + p] / J;
  Harness harness(GetParam());
  const MatrixView prior_std = harness.upload({0.5, 1.0, 2.0, 0.1, 3.0}, 1, P);
  const MatrixView from_ensemble = harness.zeros(J, P), around = harness.zeros(J, P);
  randomize(harness.context(), harness.upload(U, J, P), 0.3, prior_std, 4, from_ensemble);
  randomize_around(harness.context(), harness.upload(mean, 1, P), 0.3, prior_std, 4, around);
  EXPECT_LT(max_abs_difference(harness.download(around), harness.download(from_ensemble)), 1e-13);
  EXPECT_THROW(randomize_around(harness.context(), harness.upload(mean, 1, P - 1), 0.3, prior_std, 4, around),
               InvalidArgument);
  EXPECT_THROW(randomize_around(harness.context(), harness.upload(mean, 1, P), -1.0, prior_std, 4, around),
               InvalidArgument);
  Matrix bad = mean;
  bad[2] = std::nan("");
  EXPECT_THROW(randomize_around(harness.context(), harness.upload(bad, 1, P), 0.3, prior_std, 4, around),
               InvalidArgument);
  MatrixView last_row = around;  // a mean inside U_out would be read while the draw overwrites it
  last_row.rows = 1;
  last_row.data = static_cast<char*>(around.data) + (J - 1) * P * size_of(around.dtype);
  EXPECT_THROW(randomize_around(harness.context(), last_row, 0.3, prior_std, 4, around), InvalidArgument);
}

// The backends' vectorised draws are the scalar generator's numbers (to an ulp or two of a double), including
// the rows' tails past the vector width and the largest |z| (u1 near 2^-32) a long run meets.
TEST_P(Randomization, DrawsTheGeneratorsNumbers) {
  const std::int64_t J = 301, P = 1003;
  Harness harness(GetParam());
  const MatrixView out = harness.zeros(J, P);
  randomize(harness.context(), harness.zeros(J, P), 1.0, harness.upload({1.0}, 1, 1), 11, out);
  const Matrix r = harness.download(out);
  const std::uint64_t key = stream_key(11, RandomStream::randomization);
  double worst = 0;
  for (std::int64_t i = 0; i < J * P; ++i) {
    const double expected = standard_normal(key, static_cast<std::uint64_t>(i));
    worst = std::max(worst, std::fabs(r[i] - expected) / std::max(1.0, std::fabs(expected)));
  }
  EXPECT_LT(worst, 1e-14);
}

}  // namespace
}  // namespace ekinet::testing
