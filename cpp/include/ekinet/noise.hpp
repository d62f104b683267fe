// The observation-noise covariance Gamma (M x M) in the three forms the updates accept.
#pragma once

#include "ekinet/array.hpp"

namespace ekinet {

struct NoiseCovariance {
  enum class Kind { scalar, diagonal, full };
  Kind kind = Kind::scalar;
  double scalar = 1.0;       // Gamma = scalar * I
  ConstMatrixView matrix{};  // diagonal: 1 x M variances; full: M x M symmetric (both triangles) positive definite

  static NoiseCovariance isotropic(double variance) { return {Kind::scalar, variance, {}}; }
  static NoiseCovariance diagonal(ConstMatrixView variances) { return {Kind::diagonal, 0.0, variances}; }
  static NoiseCovariance full(ConstMatrixView covariance) { return {Kind::full, 0.0, covariance}; }
};

}  // namespace ekinet
