#include "spd_solve.hpp"

#include <cmath>
#include <limits>
#include <string>

#include "ekinet/errors.hpp"

namespace ekinet::detail {

namespace {

template <class T>
bool solution_is_finite(Backend<T>& backend, i64 n, i64 nrhs, const T* x, i64 ldx) {
  return backend.count_nonfinite(nrhs, n, x, ldx) == 0;
}

// A factor with a tiny positive pivot passes potrf yet overflows the solve (and some LAPACKs let NaN through
// potrf): a Cholesky solve counts only when its solution is finite, otherwise the next rescue is tried.
template <class T>
bool cholesky_solves(Backend<T>& backend, i64 n, T* a, i64 lda, i64 nrhs, const T* b, i64 ldb, T* x, i64 ldx) {
  if (backend.potrf_lower(n, a, lda) != 0) return false;
  backend.axpby(nrhs, n, T{1}, b, ldb, T{0}, b, ldb, x, ldx);
  backend.potrs_lower(n, nrhs, a, lda, x, ldx);
  return solution_is_finite(backend, n, nrhs, x, ldx);
}

}  // namespace

template <class T>
void robust_spd_solve(Backend<T>& backend, i64 n, T* a, i64 lda, i64 nrhs, T* b, i64 ldb, UpdateReport& report) {
  Workspace& workspace = backend.workspace();
  // An overflowed (Inf) matrix can pass Cholesky and yield a zero solution: reject it first. The diagonal bounds
  // the rest of a positive semi-definite matrix, so checking it suffices.
  const double mean_diagonal = backend.mean_diagonal(n, a, lda);
  if (!std::isfinite(mean_diagonal)) {
    throw NumericalError("the " + std::to_string(n) + " x " + std::to_string(n) +
                         " system of the Kalman gain overflowed (its diagonal is not finite): rescale the outputs, "
                         "data and noise covariance, or compute in float64");
  }
  T* original = workspace.take<T>(n * n);
  backend.axpby(n, n, T{1}, a, lda, T{0}, a, lda, original, n);
  T* right_hand_sides = workspace.take<T>(n * nrhs);
  backend.axpby(nrhs, n, T{1}, b, ldb, T{0}, b, ldb, right_hand_sides, n);
  if (cholesky_solves(backend, n, a, lda, nrhs, right_hand_sides, n, b, ldb)) return;

  const double eps = std::numeric_limits<T>::epsilon();
  const double jitter = std::sqrt(eps) * std::max(std::abs(mean_diagonal), double(std::numeric_limits<T>::min()));
  backend.axpby(n, n, T{1}, original, n, T{0}, original, n, a, lda);
  backend.add_diagonal(n, a, lda, static_cast<T>(jitter), nullptr);
  if (cholesky_solves(backend, n, a, lda, nrhs, right_hand_sides, n, b, ldb)) {
    ++report.cholesky_jitter_retries;
    return;
  }

  backend.axpby(n, n, T{1}, original, n, T{0}, original, n, a, lda);
  T* eigenvalues = workspace.take<T>(n);
  const i64 info = backend.syevd_lower(n, a, lda, eigenvalues);
  const double largest = info == 0 ? backend.read_scalar(eigenvalues + n - 1) : 0.0;
  if (info != 0 || !std::isfinite(largest)) {
    throw NumericalError("the " + std::to_string(n) + " x " + std::to_string(n) +
                         " system of the Kalman gain could not be solved (Cholesky, jittered Cholesky and the "
                         "eigen-decomposition all failed): the ensemble outputs or the noise covariance hold "
                         "values too large or not finite");
  }
  ++report.eigen_fallbacks;
  const T floor = static_cast<T>(std::max(largest, double(std::numeric_limits<T>::min())) * n * eps);
  // X = V diag(1 / max(w, floor)) V^T B
  T* projected = workspace.take<T>(n * nrhs);
  backend.gemm(Trans::yes, Trans::no, n, nrhs, n, T{1}, a, lda, right_hand_sides, n, T{0}, projected, n);
  backend.divide_rows_clamped(n, nrhs, eigenvalues, floor, projected, n);
  backend.gemm(Trans::no, Trans::no, n, nrhs, n, T{1}, a, lda, projected, n, T{0}, b, ldb);
  if (!solution_is_finite(backend, n, nrhs, b, ldb)) {
    throw NumericalError("the " + std::to_string(n) + " x " + std::to_string(n) +
                         " system of the Kalman gain gave a non-finite solution: the ensemble outputs or the noise "
                         "covariance hold values too large (overflow) or not finite");
  }
}

template void robust_spd_solve(Backend<float>&, i64, float*, i64, i64, float*, i64, UpdateReport&);
template void robust_spd_solve(Backend<double>&, i64, double*, i64, i64, double*, i64, UpdateReport&);

}  // namespace ekinet::detail
