// The EKI (Kalman) update of eki-math section 1:
//   u_j <- u_j + C^uw (C^ww + Gamma/h)^{-1} (y + eta_j - G(u_j)),   covariances with 1/J.
#pragma once

#include <cstdint>

#include "ekinet/context.hpp"
#include "ekinet/noise.hpp"
#include "ekinet/report.hpp"

namespace ekinet {

struct Perturbation {
  enum class Kind { none, given, seeded };
  Kind kind = Kind::none;
  ConstMatrixView eta{};    // given: J x M, added to y as is
  std::uint64_t seed = 0;  // seeded: eta_j ~ N(0, Gamma/h) from the counter-based generator (random.hpp)

  static Perturbation none() { return {}; }
  static Perturbation given(ConstMatrixView eta) { return {Kind::given, eta, 0}; }
  static Perturbation seeded(std::uint64_t seed) { return {Kind::seeded, {}, seed}; }
};

struct KalmanOptions {
  double step = 1.0;  // h > 0; 1 is the classical EKI
  Formulation formulation = Formulation::automatic;
  FailurePolicy on_failure = FailurePolicy::redraw;
  std::uint64_t redraw_seed = 0;  // draws that re-place failed members
  UpdateOutput output = UpdateOutput::ensemble;
};

// U: J x P, G: J x M, y: 1 x M, U_out: J x P (may be U itself), or 1 x P (not U) for UpdateOutput::mean.
// All on the context's device, one dtype.
UpdateReport kalman_update(Context& ctx, ConstMatrixView U, ConstMatrixView G, ConstMatrixView y,
                           const NoiseCovariance& noise, const Perturbation& perturbation,
                           const KalmanOptions& options, MatrixView U_out);

// The cheaper formulation by the flop model of eki-math section 1 (observation space needs a P x M buffer of
// element_bytes each; it is not chosen when that buffer would exceed max_gain_bytes).
// For UpdateOutput::mean neither forms a P-sized product, so only J and M decide.
Formulation choose_formulation(std::int64_t J, std::int64_t P, std::int64_t M, NoiseCovariance::Kind noise,
                               std::size_t element_bytes, std::size_t max_gain_bytes,
                               UpdateOutput output = UpdateOutput::ensemble);

// Estimated floating-point operations of one update in the given formulation (for benchmarks).
double kalman_update_flops(Formulation formulation, std::int64_t J, std::int64_t P, std::int64_t M,
                           NoiseCovariance::Kind noise, UpdateOutput output = UpdateOutput::ensemble);

}  // namespace ekinet
