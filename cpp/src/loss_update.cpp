// eki-math section 2: u_{n+1} = u_n - h_n D(u_n) u_n with D^{jk} = (1/J) <G_k - Gbar, g_j>.
#include "ekinet/loss_update.hpp"

#include <cmath>
#include <string>

#include "dispatch.hpp"
#include "member_transform.hpp"
#include "validation.hpp"

namespace ekinet {
namespace detail {
namespace {

template <class T>
UpdateReport loss_update_typed(Context& ctx, const ConstMatrixView& U, const ConstMatrixView& G,
                               const ConstMatrixView& grad, const LossUpdateOptions& options, MatrixView U_out) {
  Backend<T>& backend = backend_of<T>(ctx);
  Workspace& workspace = backend.workspace();
  workspace.reset();
  const ArgumentChecker check("loss_update", ctx, U.dtype);
  check_ensemble_update(check, U, G, U_out, options.step, options.output);
  const i64 J = U.rows, P = U.cols, M = G.cols;
  check.shape(grad, "grad", J, M, "the loss gradient with respect to each member's outputs, like G");
  if (!(options.eps >= 0) || !std::isfinite(options.eps)) {
    check.fail("eps = " + std::to_string(options.eps) + " must be a non-negative finite number");
  }
  if (check_ensemble_first(U.data, U_out.data)) check.finite(backend, U, "U");
  const Survivors survivors = find_survivors(backend, check, J, M, G.as<T>(), G.row_stride, grad.as<T>(),
                                             grad.row_stride, options.on_failure);
  i64 ld_g = 0, ld_grad = 0;
  const T* g_s = survivor_rows(backend, survivors, M, G.as<T>(), G.row_stride, ld_g);
  const T* grad_s = survivor_rows(backend, survivors, M, grad.as<T>(), grad.row_stride, ld_grad);

  const i64 Js = survivors.count();
  T* mean = workspace.take<T>(M);
  T* anomalies = workspace.take<T>(Js * M);
  backend.column_mean(Js, M, g_s, ld_g, mean);
  backend.add_row_vector(Js, M, g_s, ld_g, T{-1}, mean, anomalies, M);
  // Column-major d(k, j) = <dG_k, g_j> / J_s is row-major D (J_s x J_s).
  T* d = workspace.take<T>(Js * Js);
  backend.gemm(Trans::yes, Trans::no, Js, Js, M, static_cast<T>(1.0 / Js), anomalies, M, grad_s, ld_grad, T{0}, d,
               Js);
  T* step = workspace.take<T>(1);
  backend.scale_by_negative_step(Js, Js, d, Js, options.step, options.eps, options.adaptive, step);
  if (options.output == UpdateOutput::mean) {
    apply_member_transform_mean(backend, check, d, survivors, U.as<T>(), U.row_stride, P, U_out.as<T>(),
                                options.redraw_seed);
  } else {
    apply_member_transform(backend, check, d, survivors, U.as<T>(), U.row_stride, P, U_out.as<T>(),
                           U_out.row_stride, options.redraw_seed);
  }

  UpdateReport report;
  report.formulation = Formulation::ensemble;
  report.failed_members = static_cast<i64>(survivors.failed.size());
  report.step = backend.read_scalar(step);
  return report;
}

template <class T>
void nesterov_typed(Context& ctx, const ConstMatrixView& U_new, const ConstMatrixView& U_old, double coefficient,
                    MatrixView V_out) {
  Backend<T>& backend = backend_of<T>(ctx);
  const ArgumentChecker check("nesterov_extrapolate", ctx, U_new.dtype);
  check.array(U_new, "U_new");
  check.shape(U_old, "U_old", U_new.rows, U_new.cols, "the shape of U_new");
  check.shape(V_out, "V_out", U_new.rows, U_new.cols, "the shape of U_new");
  if (!std::isfinite(coefficient)) check.fail("coefficient must be finite");
  backend.axpby(U_new.rows, U_new.cols, static_cast<T>(1 + coefficient), U_new.as<T>(), U_new.row_stride,
                static_cast<T>(-coefficient), U_old.as<T>(), U_old.row_stride, V_out.as<T>(), V_out.row_stride);
}

}  // namespace
}  // namespace detail

UpdateReport loss_update(Context& ctx, ConstMatrixView U, ConstMatrixView G, ConstMatrixView grad,
                         const LossUpdateOptions& options, MatrixView U_out) {
  return detail::dispatch_dtype(U.dtype, [&](auto tag) {
    return detail::loss_update_typed<decltype(tag)>(ctx, U, G, grad, options, U_out);
  });
}

void nesterov_extrapolate(Context& ctx, ConstMatrixView U_new, ConstMatrixView U_old, double coefficient,
                          MatrixView V_out) {
  detail::dispatch_dtype(U_new.dtype, [&](auto tag) {
    detail::nesterov_typed<decltype(tag)>(ctx, U_new, U_old, coefficient, V_out);
  });
}

}  // namespace ekinet
