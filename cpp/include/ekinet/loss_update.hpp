// The general-loss scheme of Kovachki & Stuart (eki-math section 2):
//   D^{jk} = (1/J) <G(u_k) - Gbar, g_j>,   u_{n+1} = u_n - h_n D(u_n) u_n,
//   h_n = h / (||D||_F + eps) when adaptive, else h (and h where D = 0 with eps = 0: nothing moves).
#pragma once

#include <cstdint>

#include "ekinet/context.hpp"
#include "ekinet/report.hpp"

namespace ekinet {

struct LossUpdateOptions {
  double step = 1.0;  // h
  bool adaptive = true;
  double eps = 1e-8;
  FailurePolicy on_failure = FailurePolicy::redraw;
  std::uint64_t redraw_seed = 0;
  UpdateOutput output = UpdateOutput::ensemble;
};

// U: J x P, G: J x M, grad: J x M (row j = gradient of the loss with respect to member j's outputs).
// U_out: J x P (may be U), or 1 x P (not U) for UpdateOutput::mean.
// report.step is the h_n used.
UpdateReport loss_update(Context& ctx, ConstMatrixView U, ConstMatrixView G, ConstMatrixView grad,
                         const LossUpdateOptions& options, MatrixView U_out);

// Nesterov extrapolation V = U_new + c (U_new - U_old); the paper's MEKI uses c = n / (n + 3).
void nesterov_extrapolate(Context& ctx, ConstMatrixView U_new, ConstMatrixView U_old, double coefficient,
                          MatrixView V_out);
inline double nesterov_coefficient(std::int64_t n) { return static_cast<double>(n) / (static_cast<double>(n) + 3.0); }

}  // namespace ekinet
