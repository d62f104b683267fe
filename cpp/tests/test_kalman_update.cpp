#include <tuple>

#include "test_support.hpp"

namespace ekinet {
void PrintTo(Formulation formulation, std::ostream* os) { *os << to_string(formulation); }
}  // namespace ekinet

namespace ekinet::testing {
namespace {

// Solves A X = B (n x n, n x r, row-major) by Gaussian elimination with partial pivoting: the test's oracle.
Matrix solve(Matrix a, Matrix b, std::int64_t n, std::int64_t r) {
  for (std::int64_t k = 0; k < n; ++k) {
    std::int64_t pivot = k;
    for (std::int64_t i = k + 1; i < n; ++i)
      if (std::abs(a[i * n + k]) > std::abs(a[pivot * n + k])) pivot = i;
    for (std::int64_t c = 0; c < n; ++c) std::swap(a[k * n + c], a[pivot * n + c]);
    for (std::int64_t c = 0; c < r; ++c) std::swap(b[k * r + c], b[pivot * r + c]);
    for (std::int64_t i = k + 1; i < n; ++i) {
      const double f = a[i * n + k] / a[k * n + k];
      for (std::int64_t c = k; c < n; ++c) a[i * n + c] -= f * a[k * n + c];
      for (std::int64_t c = 0; c < r; ++c) b[i * r + c] -= f * b[k * r + c];
    }
  }
  for (std::int64_t k = n - 1; k >= 0; --k)
    for (std::int64_t c = 0; c < r; ++c) {
      double s = b[k * r + c];
      for (std::int64_t j = k + 1; j < n; ++j) s -= a[k * n + j] * b[j * r + c];
      b[k * r + c] = s / a[k * n + k];
    }
  return b;
}

// u_j + C^uw (C^ww + Gamma/h)^{-1} (y + eta_j - G_j), covariances with 1/J, straight from eki-math section 1.
Matrix textbook_update(const Matrix& U, const Matrix& G, const Matrix& y, const Matrix& gamma, const Matrix& eta,
                       std::int64_t J, std::int64_t P, std::int64_t M, double h) {
  Matrix ubar(P, 0.0), gbar(M, 0.0);
  for (std::int64_t j = 0; j < J; ++j) {
    for (std::int64_t p = 0; p < P; ++p) ubar[p] += U[j * P + p] / J;
    for (std::int64_t m = 0; m < M; ++m) gbar[m] += G[j * M + m] / J;
  }
  Matrix cuw(P * M, 0.0), cww(M * M, 0.0), residuals(M * J);
  for (std::int64_t j = 0; j < J; ++j) {
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t m = 0; m < M; ++m) cuw[p * M + m] += (U[j * P + p] - ubar[p]) * (G[j * M + m] - gbar[m]) / J;
    for (std::int64_t a = 0; a < M; ++a)
      for (std::int64_t b = 0; b < M; ++b) cww[a * M + b] += (G[j * M + a] - gbar[a]) * (G[j * M + b] - gbar[b]) / J;
    for (std::int64_t m = 0; m < M; ++m)
      residuals[m * J + j] = y[m] + (eta.empty() ? 0.0 : eta[j * M + m]) - G[j * M + m];
  }
  for (std::int64_t i = 0; i < M * M; ++i) cww[i] += gamma[i] / h;
  const Matrix x = solve(cww, residuals, M, J);
  Matrix out = U;
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t m = 0; m < M; ++m) out[j * P + p] += cuw[p * M + m] * x[m * J + j];
  return out;
}

enum class NoiseKind { scalar, diagonal, full };
void PrintTo(NoiseKind kind, std::ostream* os) {
  *os << (kind == NoiseKind::scalar ? "scalar" : kind == NoiseKind::diagonal ? "diagonal" : "full");
}

struct Problem {
  std::int64_t J, P, M;
  Matrix U, G, y, gamma_full, variances;
  double gamma_scalar = 0.7;

  Problem(std::int64_t J_, std::int64_t P_, std::int64_t M_, std::uint64_t seed) : J(J_), P(P_), M(M_) {
    U = random_matrix(J, P, seed);
    G = random_matrix(J, M, seed + 1);
    y = random_matrix(1, M, seed + 2);
    gamma_full = random_spd(M, seed + 3);
    variances = random_matrix(1, M, seed + 4);
    for (double& v : variances) v = 0.5 + v * v;
  }
  Matrix dense_gamma(NoiseKind kind) const {
    Matrix out(M * M, 0.0);
    if (kind == NoiseKind::full) return gamma_full;
    for (std::int64_t m = 0; m < M; ++m) out[m * M + m] = kind == NoiseKind::scalar ? gamma_scalar : variances[m];
    return out;
  }
};

NoiseCovariance noise_for(Harness& harness, const Problem& p, NoiseKind kind) {
  switch (kind) {
    case NoiseKind::scalar: return NoiseCovariance::isotropic(p.gamma_scalar);
    case NoiseKind::diagonal: return NoiseCovariance::diagonal(harness.upload(p.variances, 1, p.M));
    case NoiseKind::full: return NoiseCovariance::full(harness.upload(p.gamma_full, p.M, p.M));
  }
  return {};
}

using Shape = std::tuple<std::int64_t, std::int64_t, std::int64_t>;

class KalmanUpdate
    : public ::testing::TestWithParam<std::tuple<std::string, Shape, NoiseKind, Formulation>> {};

TEST_P(KalmanUpdate, EqualsTheTextbookFormula) {
  const auto& [device, shape, noise_kind, formulation] = GetParam();
  EKINET_SKIP_UNLESS_AVAILABLE(device);
  const auto [J, P, M] = shape;
  const Problem p(J, P, M, 42);
  const Matrix eta = random_matrix(J, M, 7, 0.3);
  const double h = 0.6;
  Harness harness(device);
  const MatrixView out = harness.zeros(J, P);
  KalmanOptions options;
  options.step = h;
  options.formulation = formulation;
  const UpdateReport report = kalman_update(harness.context(), harness.upload(p.U, J, P), harness.upload(p.G, J, M),
                                            harness.upload(p.y, 1, M), noise_for(harness, p, noise_kind),
                                            Perturbation::given(harness.upload(eta, J, M)), options, out);
  const Matrix expected = textbook_update(p.U, p.G, p.y, p.dense_gamma(noise_kind), eta, J, P, M, h);
  EXPECT_EQ(report.formulation, formulation);
  EXPECT_LT(max_abs_difference(harness.download(out), expected), 1e-10 * (1 + max_abs(expected)));
}

INSTANTIATE_TEST_SUITE_P(
    Grid, KalmanUpdate,
    ::testing::Combine(::testing::ValuesIn(devices()),
                       ::testing::Values(Shape{2, 5, 3}, Shape{4, 30, 25}, Shape{12, 9, 3}, Shape{6, 1, 8}),
                       ::testing::Values(NoiseKind::scalar, NoiseKind::diagonal, NoiseKind::full),
                       ::testing::Values(Formulation::ensemble, Formulation::observation)));

class OnDevice : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { EKINET_SKIP_UNLESS_AVAILABLE(GetParam()); }
};
INSTANTIATE_TEST_SUITE_P(Devices, OnDevice, ::testing::ValuesIn(devices()));

TEST_P(OnDevice, SeededPerturbationsAreReproducibleAndAgreeAcrossFormulations) {
  const Problem p(8, 20, 6, 3);
  Harness harness(GetParam());
  auto run = [&](Formulation formulation, std::uint64_t seed) {
    const MatrixView out = harness.zeros(p.J, p.P);
    KalmanOptions options;
    options.formulation = formulation;
    kalman_update(harness.context(), harness.upload(p.U, p.J, p.P), harness.upload(p.G, p.J, p.M),
                  harness.upload(p.y, 1, p.M), noise_for(harness, p, NoiseKind::full), Perturbation::seeded(seed),
                  options, out);
    return harness.download(out);
  };
  const Matrix a = run(Formulation::ensemble, 5);
  EXPECT_LT(max_abs_difference(a, run(Formulation::observation, 5)), 1e-10);
  EXPECT_EQ(a, run(Formulation::ensemble, 5));
  EXPECT_GT(max_abs_difference(a, run(Formulation::ensemble, 6)), 1e-3);
}

TEST_P(OnDevice, InPlaceEqualsOutOfPlace) {
  const Problem p(7, 33, 5, 11);
  Harness harness(GetParam());
  const MatrixView out = harness.zeros(p.J, p.P);
  const MatrixView u = harness.upload(p.U, p.J, p.P);
  const MatrixView g = harness.upload(p.G, p.J, p.M);
  const MatrixView y = harness.upload(p.y, 1, p.M);
  kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(0.5), {}, {}, out);
  kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(0.5), {}, {}, u);
  EXPECT_LT(max_abs_difference(harness.download(out), harness.download(u)), 1e-12);
}

// An update whose gain is large enough to overflow float32 (outputs whose spread is about sqrt(gamma), large
// anomalies of U) throws NumericalError in both formulations, in place too, where the error says U was
// overwritten; it never returns Inf/NaN silently.
TEST_P(OnDevice, OverflowIsANumericalErrorInEveryFormulationAndInPlace) {
  const std::int64_t J = 4, P = 2, M = 2;
  Matrix U(J * P), G(J * M), y(M, 1e3);
  for (std::int64_t j = 0; j < J; ++j) {
    for (std::int64_t p = 0; p < P; ++p) U[j * P + p] = (static_cast<double>(j) - 1.5) * 1e37;
    for (std::int64_t m = 0; m < M; ++m) G[j * M + m] = (static_cast<double>(j) - 1.5) * 1e-3;
  }
  Harness harness(GetParam());
  for (Formulation formulation : {Formulation::ensemble, Formulation::observation}) {
    for (bool in_place : {false, true}) {
      KalmanOptions options;
      options.formulation = formulation;
      const MatrixView u = harness.upload<float>(U, J, P);
      const MatrixView out = in_place ? u : harness.zeros<float>(J, P);
      const Matrix before = harness.download(u);
      try {
        kalman_update(harness.context(), u, harness.upload<float>(G, J, M), harness.upload<float>(y, 1, M),
                      NoiseCovariance::isotropic(1e-6), Perturbation::none(), options, out);
        ADD_FAILURE() << to_string(formulation) << (in_place ? " in place" : "") << ": no error";
      } catch (const NumericalError& error) {
        const std::string message = error.what();
        EXPECT_NE(message.find("overflowed"), std::string::npos) << message;
        EXPECT_EQ(message.find("in place") != std::string::npos, in_place) << message;
      }
      if (!in_place) EXPECT_EQ(max_abs_difference(harness.download(u), before), 0.0);  // U untouched
    }
  }
}

Matrix member_mean(const Matrix& U, std::int64_t J, std::int64_t P) {
  Matrix mean(P, 0.0);
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t p = 0; p < P; ++p) mean[p] += U[j * P + p] / J;
  return mean;
}

// UpdateOutput::mean writes the mean of the ensemble the full update gives, in both formulations, also when
// failed members are re-drawn; it never writes into U.
TEST_P(OnDevice, MeanOutputIsTheMeanOfTheUpdatedEnsemble) {
  const std::int64_t J = 8, P = 21, M = 5;
  for (bool failures : {false, true}) {
    Problem p(J, P, M, 31);
    if (failures) p.G[3 * M + 2] = std::nan("");
    for (Formulation formulation : {Formulation::ensemble, Formulation::observation, Formulation::automatic}) {
      Harness harness(GetParam());
      const MatrixView u = harness.upload(p.U, J, P), g = harness.upload(p.G, J, M), y = harness.upload(p.y, 1, M);
      KalmanOptions options;
      options.formulation = formulation;
      options.step = 0.6;
      const MatrixView full = harness.zeros(J, P), mean = harness.zeros(1, P);
      const UpdateReport full_report =
          kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(0.5), Perturbation::seeded(3), options, full);
      options.output = UpdateOutput::mean;
      const UpdateReport report =
          kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(0.5), Perturbation::seeded(3), options, mean);
      EXPECT_EQ(report.failed_members, failures ? 1 : 0);
      EXPECT_EQ(report.failed_members, full_report.failed_members);
      const Matrix expected = member_mean(harness.download(full), J, P);
      EXPECT_LT(max_abs_difference(harness.download(mean), expected), 1e-12 * (1 + max_abs(expected)))
          << to_string(formulation) << (failures ? " with a failed member" : "");
      EXPECT_THROW(kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(0.5), {}, options, full),
                   InvalidArgument);  // J x P is not the mean's shape
      EXPECT_THROW(kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(0.5), {}, options,
                                 MatrixView{u.data, u.dtype, u.device, 1, P, P}),
                   InvalidArgument);  // the mean must not overwrite U
    }
  }
}

TEST_P(OnDevice, MembersStayInTheInitialAffineSubspace) {
  const std::int64_t J = 5, P = 40, M = 12;
  const Problem p(J, P, M, 19);
  Harness harness(GetParam());
  MatrixView u = harness.upload(p.U, J, P);
  const MatrixView out = harness.zeros(J, P);
  for (int step = 0; step < 4; ++step) {
    // A nonlinear forward map: G_j = tanh(A u_j).
    const Matrix current = harness.download(u);
    const Matrix a = random_matrix(M, P, 99, 0.2);
    Matrix g(J * M, 0.0);
    for (std::int64_t j = 0; j < J; ++j)
      for (std::int64_t m = 0; m < M; ++m) {
        double s = 0;
        for (std::int64_t q = 0; q < P; ++q) s += a[m * P + q] * current[j * P + q];
        g[j * M + m] = std::tanh(s);
      }
    kalman_update(harness.context(), u, harness.upload(g, J, M), harness.upload(p.y, 1, M),
                  NoiseCovariance::isotropic(0.1), Perturbation::seeded(step), {}, out);
    u = harness.upload(harness.download(out), J, P);
  }
  // Gram-Schmidt basis of the initial anomalies; residual of (u_j - ubar_0) outside it must vanish.
  Matrix mean(P, 0.0);
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t q = 0; q < P; ++q) mean[q] += p.U[j * P + q] / J;
  std::vector<Matrix> basis;
  for (std::int64_t j = 0; j < J; ++j) {
    Matrix v(P);
    for (std::int64_t q = 0; q < P; ++q) v[q] = p.U[j * P + q] - mean[q];
    for (const Matrix& b : basis) {
      double d = 0;
      for (std::int64_t q = 0; q < P; ++q) d += v[q] * b[q];
      for (std::int64_t q = 0; q < P; ++q) v[q] -= d * b[q];
    }
    double norm = 0;
    for (double x : v) norm += x * x;
    if (norm > 1e-12) {
      for (double& x : v) x /= std::sqrt(norm);
      basis.push_back(v);
    }
  }
  const Matrix final_u = harness.download(u);
  double moved = 0;
  for (std::int64_t j = 0; j < J; ++j) {
    Matrix v(P);
    for (std::int64_t q = 0; q < P; ++q) v[q] = final_u[j * P + q] - mean[q];
    const Matrix before = v;
    for (const Matrix& b : basis) {
      double d = 0;
      for (std::int64_t q = 0; q < P; ++q) d += v[q] * b[q];
      for (std::int64_t q = 0; q < P; ++q) v[q] -= d * b[q];
    }
    EXPECT_LT(max_abs(v), 1e-10) << "member " << j;
    moved = std::max(moved, max_abs_difference(before, Matrix(before.size(), 0.0)));
  }
  EXPECT_GT(moved, 1e-3);
}

TEST_P(OnDevice, FailedMembersAreRedrawnFromTheSurvivors) {
  const std::int64_t J = 6, P = 10, M = 4;
  Problem p(J, P, M, 23);
  p.G[2 * M + 1] = std::nan("");
  p.G[4 * M + 3] = INFINITY;
  Harness harness(GetParam());
  const MatrixView out = harness.zeros(J, P);
  const UpdateReport report =
      kalman_update(harness.context(), harness.upload(p.U, J, P), harness.upload(p.G, J, M), harness.upload(p.y, 1, M),
                    NoiseCovariance::isotropic(0.5), {}, {}, out);
  EXPECT_EQ(report.failed_members, 2);
  const Matrix updated = harness.download(out);
  for (double v : updated) EXPECT_TRUE(std::isfinite(v));

  // The survivors move exactly as an ensemble of the survivors alone.
  const std::vector<std::int64_t> survivors = {0, 1, 3, 5};
  Matrix us, gs;
  for (std::int64_t j : survivors) {
    us.insert(us.end(), p.U.begin() + j * P, p.U.begin() + (j + 1) * P);
    gs.insert(gs.end(), p.G.begin() + j * M, p.G.begin() + (j + 1) * M);
  }
  Harness reference(GetParam());
  const MatrixView survivors_out = reference.zeros(4, P);
  kalman_update(reference.context(), reference.upload(us, 4, P), reference.upload(gs, 4, M),
                reference.upload(p.y, 1, M), NoiseCovariance::isotropic(0.5), {}, {}, survivors_out);
  const Matrix alone = reference.download(survivors_out);
  for (std::size_t i = 0; i < survivors.size(); ++i)
    for (std::int64_t q = 0; q < P; ++q)
      EXPECT_NEAR(updated[survivors[i] * P + q], alone[i * P + q], 1e-12);
}

TEST_P(OnDevice, FailurePoliciesAndTooFewSurvivors) {
  const std::int64_t J = 3, P = 4, M = 2;
  Problem p(J, P, M, 29);
  p.G[0] = std::nan("");
  Harness harness(GetParam());
  const MatrixView out = harness.zeros(J, P);
  KalmanOptions raise;
  raise.on_failure = FailurePolicy::raise;
  EXPECT_THROW(kalman_update(harness.context(), harness.upload(p.U, J, P), harness.upload(p.G, J, M),
                             harness.upload(p.y, 1, M), NoiseCovariance::isotropic(1), {}, raise, out),
               InvalidArgument);
  p.G[M] = INFINITY;  // two of three failed
  EXPECT_THROW(kalman_update(harness.context(), harness.upload(p.U, J, P), harness.upload(p.G, J, M),
                             harness.upload(p.y, 1, M), NoiseCovariance::isotropic(1), {}, {}, out),
               NumericalError);
}

TEST_P(OnDevice, BadInputThrowsTypedErrorsNamingTheArgument) {
  const std::int64_t J = 4, P = 3, M = 5;
  Problem p(J, P, M, 31);
  Harness harness(GetParam());
  Context& ctx = harness.context();
  const MatrixView u = harness.upload(p.U, J, P), g = harness.upload(p.G, J, M), y = harness.upload(p.y, 1, M);
  const MatrixView out = harness.zeros(J, P);
  auto expect_message = [](auto&& call, const char* fragment) {
    try {
      call();
      ADD_FAILURE() << "no exception, expected one mentioning " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  const auto isotropic = NoiseCovariance::isotropic(1.0);
  expect_message([&] { kalman_update(ctx, u, harness.upload(p.G, J - 1, M), y, isotropic, {}, {}, out); }, "G has shape");
  expect_message([&] { kalman_update(ctx, u, g, harness.upload(p.y, 1, M - 1), isotropic, {}, {}, out); }, "y has shape");
  expect_message([&] { kalman_update(ctx, u, g, y, NoiseCovariance::isotropic(-1), {}, {}, out); }, "noise_cov");
  expect_message([&] { kalman_update(ctx, harness.upload(p.U, 1, P), harness.upload(p.G, 1, M), y, isotropic, {}, {},
                                     harness.zeros(1, P)); }, "at least 2");
  Matrix indefinite = random_spd(M, 3);
  indefinite[0] = -50;
  expect_message([&] { kalman_update(ctx, u, g, y, NoiseCovariance::full(harness.upload(indefinite, M, M)), {}, {}, out); },
                 "positive definite");
  const MatrixView rows = harness.upload(p.U, J + 1, P);  // U_out one row below U in the same buffer
  MatrixView upper = rows, lower = rows;
  upper.rows = lower.rows = J;
  lower.data = static_cast<char*>(rows.data) + P * size_of(rows.dtype);
  expect_message([&] { kalman_update(ctx, upper, g, y, isotropic, {}, {}, lower); },
                 "U_out shares memory with U without being the same array");
  // Column blocks of one J x 2P buffer interleave without touching: U on the left, U_out on the right.
  Matrix wide(static_cast<std::size_t>(J * 2 * P), 0.0);
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t c = 0; c < P; ++c) wide[j * 2 * P + c] = p.U[j * P + c];
  const MatrixView both = harness.upload(wide, J, 2 * P);
  MatrixView left = both, right = both;
  left.cols = right.cols = P;
  right.data = static_cast<char*>(both.data) + P * size_of(both.dtype);
  kalman_update(ctx, left, g, y, isotropic, Perturbation::seeded(3), {}, right);
  kalman_update(ctx, u, g, y, isotropic, Perturbation::seeded(3), {}, out);
  const Matrix expected = harness.download(out), both_after = harness.download(both);
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t c = 0; c < P; ++c)
      EXPECT_NEAR(both_after[j * 2 * P + P + c], expected[j * P + c], 1e-12) << j << ", " << c;
  Matrix lower_only = random_spd(M, 3);  // a C++ caller who fills one triangle gets an error, not diag(Gamma)
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = i + 1; j < M; ++j) lower_only[i * M + j] = 0;
  expect_message([&] { kalman_update(ctx, u, g, y, NoiseCovariance::full(harness.upload(lower_only, M, M)), {}, {}, out); },
                 "noise_cov is not symmetric");
  Matrix nan_u = p.U;
  nan_u[5] = std::nan("");
  expect_message([&] { kalman_update(ctx, harness.upload(nan_u, J, P), g, y, isotropic, {}, {}, out); }, "U contains 1 NaN/Inf");
  Matrix nan_y = p.y;
  nan_y[0] = INFINITY;
  expect_message([&] { kalman_update(ctx, u, g, harness.upload(nan_y, 1, M), isotropic, {}, {}, out); }, "y contains");
  KalmanOptions negative;
  negative.step = -1;
  expect_message([&] { kalman_update(ctx, u, g, y, isotropic, {}, negative, out); }, "step");
  EXPECT_THROW(kalman_update(ctx, u, harness.upload<float>(p.G, J, M), y, isotropic, {}, {}, out), DTypeError);
  expect_message([&] { kalman_update(ctx, harness.upload(p.U, J, 0), g, y, isotropic, {}, {}, harness.zeros(J, 0)); },
                 "U has no columns");
  expect_message([&] { kalman_update(ctx, u, g, y, NoiseCovariance::diagonal(ConstMatrixView{}), {}, {}, out); },
                 "unset (null) view");
  Matrix nan_member = p.U;
  nan_member[4] = std::nan("");
  expect_message([&] { ensemble_spread(ctx, harness.upload(nan_member, J, P)); }, "U contains 1 NaN/Inf");
  expect_message([&] { ensemble_mean(ctx, harness.upload(nan_member, J, P), harness.zeros(1, P)); },
                 "U contains 1 NaN/Inf");
}

TEST_P(OnDevice, SteadyLoopsReuseTheWorkspace) {
  const Problem p(10, 50, 20, 37);
  Harness harness(GetParam());
  const MatrixView u = harness.upload(p.U, p.J, p.P), g = harness.upload(p.G, p.J, p.M);
  const MatrixView y = harness.upload(p.y, 1, p.M), out = harness.zeros(p.J, p.P);
  kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(1), Perturbation::seeded(1), {}, out);
  kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(1), Perturbation::seeded(1), {}, out);
  const std::size_t bytes = harness.context().workspace_bytes();
  EXPECT_GT(bytes, 0u);
  for (int i = 0; i < 3; ++i)
    kalman_update(harness.context(), u, g, y, NoiseCovariance::isotropic(1), Perturbation::seeded(i), {}, out);
  EXPECT_EQ(harness.context().workspace_bytes(), bytes);
}

TEST_P(OnDevice, Float32AgreesWithFloat64) {
  const Problem p(16, 40, 12, 41);
  Harness harness(GetParam());
  const MatrixView out64 = harness.zeros(p.J, p.P);
  const MatrixView out32 = harness.zeros<float>(p.J, p.P);
  kalman_update(harness.context(), harness.upload(p.U, p.J, p.P), harness.upload(p.G, p.J, p.M),
                harness.upload(p.y, 1, p.M), NoiseCovariance::isotropic(0.5), {}, {}, out64);
  kalman_update(harness.context(), harness.upload<float>(p.U, p.J, p.P), harness.upload<float>(p.G, p.J, p.M),
                harness.upload<float>(p.y, 1, p.M), NoiseCovariance::isotropic(0.5), {}, {}, out32);
  const Matrix a = harness.download(out64), b = harness.download(out32);
  EXPECT_LT(max_abs_difference(a, b), 1e-4 * (1 + max_abs(a)));
}

TEST(FormulationChoice, PrefersTheCheaperFormulation) {
  // Small M against J: the observation space (M x M system) is cheaper; large M: the ensemble space.
  EXPECT_EQ(choose_formulation(2000, 100000, 50, NoiseCovariance::Kind::scalar, 4, std::size_t{1} << 40),
            Formulation::observation);
  EXPECT_EQ(choose_formulation(100, 100000, 10000, NoiseCovariance::Kind::scalar, 4, std::size_t{1} << 40),
            Formulation::ensemble);
  // The observation form needs a P x M gain; too large a gain is never chosen.
  EXPECT_EQ(choose_formulation(2000, 100000, 50, NoiseCovariance::Kind::scalar, 4, 1000), Formulation::ensemble);
}

}  // namespace
}  // namespace ekinet::testing
