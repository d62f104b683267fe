// The rescue path of the gain solve (jittered Cholesky, then eigen-decomposition) on matrices built to need it.
#include <limits>

#include "spd_solve.hpp"
#include "test_support.hpp"

namespace ekinet::testing {
namespace {

TEST(RobustSpdSolve, SolvesAWellConditionedSystemWithoutRescue) {
  auto context = make_cpu_context();
  auto& backend = detail::backend_of<double>(*context);
  backend.workspace().reset();
  Matrix a = random_spd(5, 1);
  const Matrix x = random_matrix(5, 2, 2);  // column-major 5 x 2
  Matrix b(10, 0.0);
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 5; ++i)
      for (int k = 0; k < 5; ++k) b[c * 5 + i] += a[i * 5 + k] * x[c * 5 + k];
  UpdateReport report;
  detail::robust_spd_solve(backend, 5, a.data(), 5, 2, b.data(), 5, report);
  EXPECT_LT(max_abs_difference(b, x), 1e-12);
  EXPECT_EQ(report.cholesky_jitter_retries + report.eigen_fallbacks, 0);
}

TEST(RobustSpdSolve, SingularMatrixIsRescuedByJitterAndCounted) {
  auto context = make_cpu_context();
  auto& backend = detail::backend_of<double>(*context);
  backend.workspace().reset();
  Matrix a = {1, 1, 1, 1};  // rank one
  Matrix b = {2, 2};
  UpdateReport report;
  detail::robust_spd_solve(backend, 2, a.data(), 2, 1, b.data(), 2, report);
  EXPECT_EQ(report.cholesky_jitter_retries + report.eigen_fallbacks, 1);
  EXPECT_TRUE(std::isfinite(b[0]) && std::isfinite(b[1]));
}

TEST(RobustSpdSolve, CholeskyWhoseSolveOverflowsIsRescuedByJitter) {
  auto context = make_cpu_context();
  auto& backend = detail::backend_of<float>(*context);
  backend.workspace().reset();
  // potrf accepts the pivot sqrt(1e-30), but 1e10 / 1e-30 overflows float32: the jittered system answers instead.
  std::vector<float> a = {1, 0, 0, 1e-30f};
  std::vector<float> b = {1, 1e10f, -7, 2, 2e10f, -7};  // two right-hand sides, ldb = 3 (-7: padding)
  UpdateReport report;
  detail::robust_spd_solve(backend, 2, a.data(), 2, 2, b.data(), 3, report);
  EXPECT_EQ(report.cholesky_jitter_retries, 1);
  const double jitter = std::sqrt(std::numeric_limits<float>::epsilon()) * 0.5;
  for (int c = 0; c < 2; ++c) {
    EXPECT_NEAR(b[3 * c] / (c + 1), 1 / (1 + jitter), 1e-6);
    EXPECT_NEAR(b[3 * c + 1] / ((c + 1) * 1e10 / jitter), 1.0, 1e-4);
    EXPECT_EQ(b[3 * c + 2], -7);
  }
}

TEST(RobustSpdSolve, IndefiniteMatrixFallsBackToTheEigenDecomposition) {
  auto context = make_cpu_context();
  auto& backend = detail::backend_of<double>(*context);
  backend.workspace().reset();
  Matrix a = {1, 0, 0, -1};  // jitter cannot fix a negative eigenvalue: clamped instead
  Matrix b = {3, 5};
  UpdateReport report;
  detail::robust_spd_solve(backend, 2, a.data(), 2, 1, b.data(), 2, report);
  EXPECT_EQ(report.eigen_fallbacks, 1);
  EXPECT_NEAR(b[0], 3.0, 1e-12);  // the positive direction is solved exactly
  EXPECT_TRUE(std::isfinite(b[1]));
}

TEST(RobustSpdSolve, NonFiniteMatrixRaises) {
  auto context = make_cpu_context();
  auto& backend = detail::backend_of<double>(*context);
  backend.workspace().reset();
  Matrix a = {std::nan(""), 0, 0, 1};
  Matrix b = {1, 1};
  UpdateReport report;
  EXPECT_THROW(detail::robust_spd_solve(backend, 2, a.data(), 2, 1, b.data(), 2, report), NumericalError);
}

}  // namespace
}  // namespace ekinet::testing
