// Gamma checked once per call and put in the forms the updates use: Gamma^{-1/2} applied by whitening, the
// Cholesky factor for full matrices, square roots for drawing perturbations.
#pragma once

#include "backend.hpp"
#include "ekinet/noise.hpp"
#include "validation.hpp"

namespace ekinet::detail {

template <class T>
struct PreparedNoise {
  NoiseCovariance::Kind kind = NoiseCovariance::Kind::scalar;
  i64 size = 0;                       // M
  double scalar = 1.0;                // scalar variance
  const T* variances = nullptr;       // diagonal: 1 x M (caller's memory)
  T* inverse_std = nullptr;           // diagonal: 1 / sqrt(variances)
  T* cholesky = nullptr;              // full: lower factor L (column-major M x M), Gamma = L L^T
  const T* matrix = nullptr;          // full: the caller's Gamma
  i64 matrix_stride = 0;
};

// Validates (positive, finite, SPD; throws InvalidArgument naming noise_cov) and prepares Gamma.
template <class T>
PreparedNoise<T> prepare_noise(Backend<T>& backend, const ArgumentChecker& check, const NoiseCovariance& noise,
                               i64 M);

// Rows of A (rows x M, row-major) <- Gamma^{-1/2} rows, i.e. L^{-1} a.
template <class T>
void whiten_rows(Backend<T>& backend, const PreparedNoise<T>& noise, i64 rows, T* a, i64 lda);

// eta (rows x M) ~ N(0, Gamma / step): row j is member j, drawn from the perturbation stream of `seed`.
template <class T>
void draw_perturbations(Backend<T>& backend, const PreparedNoise<T>& noise, std::uint64_t seed, i64 rows,
                        double step, T* eta);

}  // namespace ekinet::detail
