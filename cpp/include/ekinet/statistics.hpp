// Ensemble statistics, never forming the P x P covariance.
#pragma once

#include "ekinet/context.hpp"

namespace ekinet {

// mean: 1 x P, ubar = (1/J) sum_j u_j.
void ensemble_mean(Context& ctx, ConstMatrixView U, MatrixView mean);
// anomalies: J x P, U - ubar (may be U itself).
void ensemble_anomalies(Context& ctx, ConstMatrixView U, MatrixView anomalies);
// trace of the parameter covariance (1/J) sum_j |u_j - ubar|^2.
double ensemble_spread(Context& ctx, ConstMatrixView U);

}  // namespace ekinet
