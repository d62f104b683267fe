// eki-math section 1. Both formulations end in U_new = U + (J x J or P x M factor) applied to U; see
// member_transform.hpp for the ensemble one.
#include "ekinet/kalman_update.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "dispatch.hpp"
#include "member_transform.hpp"
#include "prepared_noise.hpp"
#include "spd_solve.hpp"
#include "validation.hpp"

namespace ekinet {

namespace {
constexpr std::size_t kMaxGainBytes = std::size_t{2} << 30;  // largest P x M gain "auto" will form
// One memory-bound pass over a J x P matrix costs about this many flops of a GEMM (measured order of magnitude).
constexpr double kFlopsPerElementPass = 30.0;
}  // namespace

double kalman_update_flops(Formulation formulation, std::int64_t J, std::int64_t P, std::int64_t M,
                           NoiseCovariance::Kind noise, UpdateOutput output) {
  const double j = static_cast<double>(J), p = static_cast<double>(P), m = static_cast<double>(M);
  const bool full = noise == NoiseCovariance::Kind::full;
  const bool mean = output == UpdateOutput::mean;
  if (formulation == Formulation::observation) {
    // C^ww (syrk), Cholesky, solve for J residuals, then either the gain C^uw = dU^T dG / J, gain times
    // solutions and the anomaly and mean passes over U, or for the mean one weighted sum of the members.
    const double apply = mean ? 2 * j * p : 4 * j * p * m + 3 * j * p * kFlopsPerElementPass;
    return j * m * m + m * m * m / 3 + 2 * m * m * j + apply;
  }
  // whitening (full Gamma), K (syrk), Q (gemm), Cholesky and solve of J x J, then the J x J by J x P transform,
  // or for the mean a weighted sum of the members.
  return (full ? 2 * j * m * m : 0.0) + j * j * m + 2 * j * j * m + j * j * j / 3 + 2 * j * j * j +
         (mean ? 2 * j * p : 2 * j * j * p);
}

Formulation choose_formulation(std::int64_t J, std::int64_t P, std::int64_t M, NoiseCovariance::Kind noise,
                               std::size_t element_bytes, std::size_t max_gain_bytes, UpdateOutput output) {
  const double gain_bytes = static_cast<double>(P) * static_cast<double>(M) * static_cast<double>(element_bytes);
  if (output == UpdateOutput::ensemble && gain_bytes > static_cast<double>(max_gain_bytes)) {
    return Formulation::ensemble;
  }
  return kalman_update_flops(Formulation::observation, J, P, M, noise, output) <
                 kalman_update_flops(Formulation::ensemble, J, P, M, noise, output)
             ? Formulation::observation
             : Formulation::ensemble;
}

namespace detail {
namespace {

// The anomalies dG and residuals R = y + eta - G of the surviving members (J_s x M, in the workspace).
template <class T>
struct Innovations {
  T* anomalies = nullptr;
  T* residuals = nullptr;
};

template <class T>
void ensemble_space(Backend<T>& backend, const ArgumentChecker& check, const PreparedNoise<T>& noise, const Innovations<T>& in,
                    const Survivors& survivors, i64 M, double step, const ConstMatrixView& U, MatrixView& U_out,
                    UpdateOutput output, std::uint64_t redraw_seed, UpdateReport& report) {
  const i64 Js = survivors.count();
  whiten_rows(backend, noise, Js, in.anomalies, M);
  whiten_rows(backend, noise, Js, in.residuals, M);
  Workspace& workspace = backend.workspace();
  // K = dG Gamma^{-1} dG^T + (J/h) I and Q^T = dG Gamma^{-1} R^T (J_s x J_s); W = K^{-1} Q^T.
  T* k = workspace.take<T>(Js * Js);
  backend.syrk_lower(Trans::yes, Js, M, T{1}, in.anomalies, M, T{0}, k, Js);
  backend.add_diagonal(Js, k, Js, static_cast<T>(static_cast<double>(Js) / step), nullptr);
  T* w = workspace.take<T>(Js * Js);
  backend.gemm(Trans::yes, Trans::no, Js, Js, M, T{1}, in.anomalies, M, in.residuals, M, T{0}, w, Js);
  robust_spd_solve(backend, Js, k, Js, Js, w, Js, report);
  // Column-major W read row-major is W^T: U_new = U + W^T dU.
  if (output == UpdateOutput::mean) {
    apply_member_transform_mean(backend, check, w, survivors, U.as<T>(), U.row_stride, U.cols, U_out.as<T>(),
                                redraw_seed);
  } else {
    apply_member_transform(backend, check, w, survivors, U.as<T>(), U.row_stride, U.cols, U_out.as<T>(),
                           U_out.row_stride, redraw_seed);
  }
}

// The mean of the updated ensemble: ubar + C^uw xbar with xbar the mean of the solutions X_j, which is
// ubar + dU^T v = U^T (v + 1/J) with v = dG xbar / J (the rows of dG sum to zero).
template <class T>
void observation_space_mean(Backend<T>& backend, const ArgumentChecker& check, const Innovations<T>& in, i64 J,
                            i64 M, const ConstMatrixView& U, MatrixView& U_out) {
  Workspace& workspace = backend.workspace();
  T* solution_mean = workspace.take<T>(M);
  backend.column_mean(J, M, in.residuals, M, solution_mean);
  const std::vector<T> uniform(static_cast<std::size_t>(J), static_cast<T>(1.0 / J));
  T* weights = workspace.take<T>(J);
  backend.copy_from_host(weights, uniform.data(), uniform.size() * sizeof(T));
  backend.gemm(Trans::yes, Trans::no, J, 1, M, static_cast<T>(1.0 / J), in.anomalies, M, solution_mean, M, T{1},
               weights, J);
  weighted_member_sum(backend, check, weights, U.as<T>(), J, U.row_stride, U.cols, U_out.as<T>(), T{0});
}

template <class T>
void observation_space(Backend<T>& backend, const ArgumentChecker& check, const PreparedNoise<T>& noise,
                       const Innovations<T>& in, i64 J, i64 M, double step, const ConstMatrixView& U,
                       MatrixView& U_out, UpdateOutput output, UpdateReport& report) {
  const i64 P = U.cols;
  Workspace& workspace = backend.workspace();
  // C = C^ww + Gamma/h (M x M); X = C^{-1} R^T (row-major R is column-major M x J).
  T* c = workspace.take<T>(M * M);
  backend.syrk_lower(Trans::no, M, J, static_cast<T>(1.0 / J), in.anomalies, M, T{0}, c, M);
  switch (noise.kind) {
    case NoiseCovariance::Kind::scalar:
      backend.add_diagonal(M, c, M, static_cast<T>(noise.scalar / step), nullptr);
      break;
    case NoiseCovariance::Kind::diagonal:
      backend.add_diagonal(M, c, M, static_cast<T>(1.0 / step), noise.variances);
      break;
    case NoiseCovariance::Kind::full:
      backend.axpby(M, M, T{1}, c, M, static_cast<T>(1.0 / step), noise.matrix, noise.matrix_stride, c, M);
      break;
  }
  robust_spd_solve(backend, M, c, M, J, in.residuals, M, report);
  if (output == UpdateOutput::mean) {
    observation_space_mean(backend, check, in, J, M, U, U_out);
    return;
  }

  // U_new = ubar + dU + C^uw X with C^uw = dU^T dG / J (P x M), dU held in U_out.
  T* mean = workspace.take<T>(P);
  T* u_out = U_out.as<T>();
  const i64 ld_out = U_out.row_stride;
  backend.column_mean(J, P, U.as<T>(), U.row_stride, mean);
  backend.add_row_vector(J, P, U.as<T>(), U.row_stride, T{-1}, mean, u_out, ld_out);
  T* gain = workspace.take<T>(P * M);
  backend.gemm(Trans::no, Trans::yes, P, M, J, static_cast<T>(1.0 / J), u_out, ld_out, in.anomalies, M, T{0}, gain, P);
  backend.gemm(Trans::no, Trans::no, P, J, M, T{1}, gain, P, in.residuals, M, T{1}, u_out, ld_out);
  backend.add_row_vector(J, P, u_out, ld_out, T{1}, mean, u_out, ld_out);
  // U was checked finite before, so a non-finite output is an overflow of the update.
  if (backend.count_nonfinite(J, P, u_out, ld_out) > 0) throw_overflow(check, U.data == U_out.data);
}

template <class T>
UpdateReport kalman_update_typed(Context& ctx, const ConstMatrixView& U, const ConstMatrixView& G,
                                 const ConstMatrixView& y, const NoiseCovariance& noise_cov,
                                 const Perturbation& perturbation, const KalmanOptions& options, MatrixView U_out) {
  Backend<T>& backend = backend_of<T>(ctx);
  Workspace& workspace = backend.workspace();
  workspace.reset();
  const ArgumentChecker check("kalman_update", ctx, U.dtype);
  check_ensemble_update(check, U, G, U_out, options.step, options.output);
  const i64 J = U.rows, P = U.cols, M = G.cols;
  check.shape(y, "y", 1, M, "the data, one value per column of G");
  if (perturbation.kind == Perturbation::Kind::given) {
    check.shape(perturbation.eta, "perturbation", J, M, "one perturbation of the data per member, like G");
    check.finite(backend, perturbation.eta, "perturbation");
  }
  check.finite(backend, y, "y");
  const PreparedNoise<T> noise = prepare_noise(backend, check, noise_cov, M);
  const Survivors survivors =
      find_survivors(backend, check, J, M, G.as<T>(), G.row_stride, static_cast<const T*>(nullptr), 0,
                     options.on_failure);

  UpdateReport report;
  report.step = options.step;
  report.failed_members = static_cast<i64>(survivors.failed.size());
  report.formulation = options.formulation != Formulation::automatic
                           ? options.formulation
                           : choose_formulation(J, P, M, noise_cov.kind, sizeof(T), kMaxGainBytes, options.output);
  if (!survivors.all()) report.formulation = Formulation::ensemble;  // failed members are re-drawn in J x J
  // The ensemble form checks its output instead (in cache); the observation form writes U_out in passes.
  if (report.formulation == Formulation::observation || check_ensemble_first(U.data, U_out.data)) {
    check.finite(backend, U, "U");
  }

  const T* eta = nullptr;
  i64 ld_eta = 0;
  if (perturbation.kind == Perturbation::Kind::given) {
    eta = perturbation.eta.as<T>();
    ld_eta = perturbation.eta.row_stride;
  } else if (perturbation.kind == Perturbation::Kind::seeded) {
    T* drawn = workspace.take<T>(J * M);
    draw_perturbations(backend, noise, perturbation.seed, J, options.step, drawn);
    eta = drawn;
    ld_eta = M;
  }
  i64 ld_g = 0, ld_eta_s = 0;
  const T* g_s = survivor_rows(backend, survivors, M, G.as<T>(), G.row_stride, ld_g);
  const T* eta_s = eta != nullptr ? survivor_rows(backend, survivors, M, eta, ld_eta, ld_eta_s) : nullptr;

  const i64 Js = survivors.count();
  Innovations<T> innovations{workspace.take<T>(Js * M), workspace.take<T>(Js * M)};
  T* mean = workspace.take<T>(M);
  backend.column_mean(Js, M, g_s, ld_g, mean);
  backend.add_row_vector(Js, M, g_s, ld_g, T{-1}, mean, innovations.anomalies, M);
  backend.residual(Js, M, y.as<T>(), eta_s, ld_eta_s, g_s, ld_g, innovations.residuals, M);

  if (report.formulation == Formulation::observation) {
    observation_space(backend, check, noise, innovations, J, M, options.step, U, U_out, options.output, report);
  } else {
    ensemble_space(backend, check, noise, innovations, survivors, M, options.step, U, U_out, options.output,
                   options.redraw_seed, report);
  }
  return report;
}

}  // namespace
}  // namespace detail

UpdateReport kalman_update(Context& ctx, ConstMatrixView U, ConstMatrixView G, ConstMatrixView y,
                           const NoiseCovariance& noise, const Perturbation& perturbation,
                           const KalmanOptions& options, MatrixView U_out) {
  return detail::dispatch_dtype(U.dtype, [&](auto tag) {
    return detail::kalman_update_typed<decltype(tag)>(ctx, U, G, y, noise, perturbation, options, U_out);
  });
}

}  // namespace ekinet
