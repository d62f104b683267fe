#include "prepared_noise.hpp"

#include <cmath>
#include <limits>

#include "ekinet/random.hpp"

namespace ekinet::detail {

template <class T>
PreparedNoise<T> prepare_noise(Backend<T>& backend, const ArgumentChecker& check, const NoiseCovariance& noise,
                               i64 M) {
  PreparedNoise<T> prepared;
  prepared.kind = noise.kind;
  prepared.size = M;
  switch (noise.kind) {
    case NoiseCovariance::Kind::scalar:
      if (!(noise.scalar > 0) || !std::isfinite(noise.scalar)) {
        check.fail("noise_cov = " + std::to_string(noise.scalar) +
                   " is not a positive finite variance; pass gamma > 0 (Gamma = gamma I)");
      }
      prepared.scalar = noise.scalar;
      break;
    case NoiseCovariance::Kind::diagonal: {
      check.shape(noise.matrix, "noise_cov", 1, M, "the M variances of a diagonal Gamma");
      const i64 bad = backend.count_nonpositive(1, M, noise.matrix.as<T>(), M);
      if (bad > 0) {
        check.fail("noise_cov (diagonal) has " + std::to_string(bad) +
                   " entries that are not positive finite variances; every variance must be > 0");
      }
      check.finite(backend, noise.matrix, "noise_cov");
      prepared.variances = noise.matrix.as<T>();
      prepared.inverse_std = backend.workspace().template take<T>(M);
      backend.inverse_sqrt(M, prepared.variances, prepared.inverse_std);
      break;
    }
    case NoiseCovariance::Kind::full: {
      check.shape(noise.matrix, "noise_cov", M, M, "a full M x M covariance");
      check.finite(backend, noise.matrix, "noise_cov");
      prepared.matrix = noise.matrix.as<T>();
      prepared.matrix_stride = noise.matrix.row_stride;
      // The factorisation reads one triangle, so a half-filled or asymmetric Gamma would be misread silently.
      const double tolerance = std::sqrt(static_cast<double>(std::numeric_limits<T>::epsilon()));
      const i64 asymmetric = backend.count_asymmetric(M, prepared.matrix, prepared.matrix_stride, tolerance);
      if (asymmetric > 0) {
        check.fail("noise_cov is not symmetric: " + std::to_string(asymmetric) +
                   " pairs (i, j) differ by more than sqrt(eps) sqrt(Gamma_ii Gamma_jj); pass the full symmetric "
                   "matrix (both triangles), e.g. (A + A^T) / 2 if the asymmetry is rounding");
      }
      prepared.cholesky = backend.workspace().template take<T>(M * M);
      backend.axpby(M, M, T{1}, prepared.matrix, prepared.matrix_stride, T{0}, prepared.matrix,
                    prepared.matrix_stride, prepared.cholesky, M);
      const i64 info = backend.potrf_lower(M, prepared.cholesky, M);
      if (info != 0) {
        check.fail("noise_cov is not symmetric positive definite (Cholesky failed: the leading minor of order " +
                   std::to_string(info) + " is not positive); pass an SPD covariance");
      }
      break;
    }
  }
  return prepared;
}

template <class T>
void whiten_rows(Backend<T>& backend, const PreparedNoise<T>& noise, i64 rows, T* a, i64 lda) {
  const i64 M = noise.size;
  switch (noise.kind) {
    case NoiseCovariance::Kind::scalar: {
      const T scale = static_cast<T>(1.0 / std::sqrt(noise.scalar));
      backend.axpby(rows, M, scale, a, lda, T{0}, a, lda, a, lda);
      break;
    }
    case NoiseCovariance::Kind::diagonal: backend.scale_columns(rows, M, a, lda, noise.inverse_std); break;
    case NoiseCovariance::Kind::full:
      // Row-major rows x M is column-major M x rows: one triangular solve whitens every row.
      backend.trsm_left_lower(Trans::no, M, rows, noise.cholesky, M, a, lda);
      break;
  }
}

template <class T>
void draw_perturbations(Backend<T>& backend, const PreparedNoise<T>& noise, std::uint64_t seed, i64 rows,
                        double step, T* eta) {
  const i64 M = noise.size;
  const std::uint64_t key = stream_key(seed, RandomStream::perturbation);
  const double inverse_sqrt_step = 1.0 / std::sqrt(step);
  switch (noise.kind) {
    case NoiseCovariance::Kind::scalar:
      backend.fill_normal(rows, M, key, 0, std::sqrt(noise.scalar) * inverse_sqrt_step, nullptr, nullptr, eta, M);
      break;
    case NoiseCovariance::Kind::diagonal: {
      // sqrt(d) = d / sqrt(d): the standard deviations from the prepared inverse square roots.
      T* std_dev = backend.workspace().template take<T>(M);
      backend.axpby(1, M, T{1}, noise.variances, M, T{0}, noise.variances, M, std_dev, M);
      backend.scale_columns(1, M, std_dev, M, noise.inverse_std);
      backend.fill_normal(rows, M, key, 0, inverse_sqrt_step, std_dev, nullptr, eta, M);
      break;
    }
    case NoiseCovariance::Kind::full:
      backend.fill_normal(rows, M, key, 0, inverse_sqrt_step, nullptr, nullptr, eta, M);
      backend.trmm_left_lower(M, rows, noise.cholesky, M, eta, M);  // eta_j = L z_j / sqrt(h)
      break;
  }
}

#define EKINET_INSTANTIATE(T)                                                                                    \
  template PreparedNoise<T> prepare_noise(Backend<T>&, const ArgumentChecker&, const NoiseCovariance&, i64);  \
  template void whiten_rows(Backend<T>&, const PreparedNoise<T>&, i64, T*, i64);                               \
  template void draw_perturbations(Backend<T>&, const PreparedNoise<T>&, std::uint64_t, i64, double, T*);
EKINET_INSTANTIATE(float)
EKINET_INSTANTIATE(double)
#undef EKINET_INSTANTIATE

}  // namespace ekinet::detail
