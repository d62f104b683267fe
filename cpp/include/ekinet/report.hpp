#pragma once

#include <cstdint>
#include <string>

namespace ekinet {

enum class Formulation { automatic, ensemble, observation };
std::string to_string(Formulation formulation);

// What an update writes to U_out: the updated ensemble (J x P), or only its mean (1 x P). EKI(R) redraws every
// member around the mean right after the update, so the mean is all it needs, and it costs O(J P) where the
// ensemble costs a J x J by J x P product (or a P x M gain).
enum class UpdateOutput { ensemble, mean };

// What to do with members whose outputs (or loss gradients) contain NaN or Inf (eki-math section 5).
enum class FailurePolicy {
  redraw,  // drop them from the statistics and the update, then re-draw them around the updated survivors
  raise,   // throw InvalidArgument naming the first failed member
};

// What an update did; counters are never silent about a numerical rescue.
struct UpdateReport {
  Formulation formulation = Formulation::ensemble;  // the one actually used
  std::int64_t failed_members = 0;                   // re-drawn members
  std::int64_t cholesky_jitter_retries = 0;          // factorisations that needed a diagonal jitter
  std::int64_t eigen_fallbacks = 0;                  // factorisations solved by the eigen-decomposition instead
  double step = 0.0;                                 // the step h actually used
};

}  // namespace ekinet
