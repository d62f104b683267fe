// EKI(R) randomisation (eki-math section 3): u_j <- ubar + scale * xi_j, with xi_j drawn from the centred prior.
#pragma once

#include <cstdint>

#include "ekinet/context.hpp"

namespace ekinet {

// xi_j = prior_std (1 x P, or 1 x 1 for one value) * z_j, z standard normal from the counter-based generator
// (stream randomization, index j * P + p). U_out may be U.
void randomize(Context& ctx, ConstMatrixView U, double scale, ConstMatrixView prior_std, std::uint64_t seed,
               MatrixView U_out);
// u_j = mean + scale * xi_j for the J rows of U_out, with the draws of randomize(): randomize(U) equals
// randomize_around(mean of U). For EKI(R) after an update that gave only the new mean (UpdateOutput::mean).
void randomize_around(Context& ctx, ConstMatrixView mean, double scale, ConstMatrixView prior_std, std::uint64_t seed,
                      MatrixView U_out);
// The same with caller-drawn prior samples xi (J x P).
void randomize_with(Context& ctx, ConstMatrixView U, double scale, ConstMatrixView xi, MatrixView U_out);

}  // namespace ekinet
