#pragma once

#include "backend.hpp"
#include "ekinet/report.hpp"

namespace ekinet::detail {

// Solves A X = B for a symmetric positive (semi-)definite A given in its lower triangle (column-major n x n,
// destroyed) and B (column-major n x nrhs, overwritten by X). Cholesky first; if it fails, once more with a
// diagonal jitter of sqrt(eps) times the mean diagonal; if that fails too, the eigen-decomposition with the
// eigenvalues clamped below at n eps lambda_max. Rescues are counted in the report. Throws NumericalError when
// nothing works (a matrix with NaN/Inf).
template <class T>
void robust_spd_solve(Backend<T>& backend, i64 n, T* a, i64 lda, i64 nrhs, T* b, i64 ldb, UpdateReport& report);

}  // namespace ekinet::detail
