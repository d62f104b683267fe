#include "ekinet/losses.hpp"

#include <string>

#include "dispatch.hpp"
#include "prepared_noise.hpp"
#include "validation.hpp"

namespace ekinet {
namespace detail {
namespace {

const char* name_of(Loss loss) {
  switch (loss) {
    case Loss::squared: return "squared";
    case Loss::cross_entropy: return "cross_entropy";
    case Loss::cross_entropy_logits: return "cross_entropy_logits";
    case Loss::gaussian_nll: return "gaussian_nll";
  }
  return "loss";
}

// Squared loss with a full Gamma: g = Gamma^{-1} (z - y) through the Cholesky factor, value = <r, g> / 2.
template <class T>
void squared_full(Backend<T>& backend, const PreparedNoise<T>& noise, const ConstMatrixView& Z, const T* y,
                  T* values, T* grad, i64 ld_grad) {
  const i64 J = Z.rows, M = Z.cols;
  Workspace& workspace = backend.workspace();
  T* difference = workspace.take<T>(J * M);
  backend.residual(J, M, y, nullptr, 0, Z.as<T>(), Z.row_stride, difference, M);  // y - z
  backend.axpby(J, M, T{-1}, difference, M, T{0}, difference, M, difference, M);  // z - y
  T* solved = grad != nullptr ? grad : workspace.take<T>(J * M);
  const i64 ld_solved = grad != nullptr ? ld_grad : M;
  backend.axpby(J, M, T{1}, difference, M, T{0}, difference, M, solved, ld_solved);
  backend.potrs_lower(M, J, noise.cholesky, M, solved, ld_solved);
  backend.row_dots(J, M, difference, M, solved, ld_solved, values);
  backend.axpby(1, J, T{0.5}, values, J, T{0}, values, J, values, J);
}

template <class T>
void loss_typed(Context& ctx, Loss loss, const ConstMatrixView& Z, const ConstMatrixView& y, i64 width,
                const NoiseCovariance& noise_cov, MatrixView values, MatrixView grad) {
  Backend<T>& backend = backend_of<T>(ctx);
  backend.workspace().reset();
  const std::string operation = std::string("loss ") + name_of(loss);
  const ArgumentChecker check(operation.c_str(), ctx, Z.dtype);
  check.array(Z, "outputs");
  const i64 J = Z.rows, M = Z.cols;
  if (width < 1 || M % width != 0) {
    check.fail("width = " + std::to_string(width) + " must divide the " + std::to_string(M) +
               " outputs per member (outputs per example)");
  }
  if (loss == Loss::gaussian_nll && width % 2 != 0) {
    check.fail("width = " + std::to_string(width) + " must be even: each example has k means then k std devs");
  }
  const i64 target_size = loss == Loss::gaussian_nll ? M / 2 : M;
  check.shape(y, "targets", 1, target_size,
              loss == Loss::gaussian_nll ? "one target per predicted mean" : "one target per output");
  check.shape(values, "values", 1, J, "one loss value per member");
  const bool with_grad = grad.data != nullptr;
  if (with_grad) check.shape(grad, "grad", J, M, "the shape of the outputs");
  check.finite(backend, y, "targets");
  check.finite(backend, Z, "outputs");

  T* grad_data = with_grad ? grad.as<T>() : nullptr;
  if (loss == Loss::squared) {
    const PreparedNoise<T> noise = prepare_noise(backend, check, noise_cov, M);
    if (noise.kind == NoiseCovariance::Kind::full) {
      squared_full(backend, noise, Z, y.as<T>(), values.as<T>(), grad_data, grad.row_stride);
      return;
    }
    T* inverse_variance = nullptr;
    if (noise.kind == NoiseCovariance::Kind::diagonal) {  // (1/sqrt(d))^2
      inverse_variance = backend.workspace().template take<T>(M);
      backend.axpby(1, M, T{1}, noise.inverse_std, M, T{0}, noise.inverse_std, M, inverse_variance, M);
      backend.scale_columns(1, M, inverse_variance, M, noise.inverse_std);
    }
    backend.loss_gradient(loss, J, M, width, Z.as<T>(), Z.row_stride, y.as<T>(), inverse_variance,
                          1.0 / noise.scalar, values.as<T>(), grad_data, grad.row_stride);
    return;
  }
  const i64 invalid = backend.loss_gradient(loss, J, M, width, Z.as<T>(), Z.row_stride, y.as<T>(), nullptr, 1.0,
                                            values.as<T>(), grad_data, grad.row_stride);
  if (invalid > 0) {
    check.fail(loss == Loss::cross_entropy
                   ? std::to_string(invalid) +
                         " probabilities are <= 0 where the target is non-zero; pass probabilities (softmax "
                         "outputs) or use cross_entropy_logits on logits"
                   : std::to_string(invalid) +
                         " standard deviations are <= 0; the network's sigma outputs must be positive (e.g. a "
                         "softplus output)");
  }
}

}  // namespace
}  // namespace detail

void loss_and_gradient(Context& ctx, Loss loss, ConstMatrixView Z, ConstMatrixView y, std::int64_t width,
                       const NoiseCovariance& noise, MatrixView values, MatrixView grad) {
  detail::dispatch_dtype(Z.dtype, [&](auto tag) {
    detail::loss_typed<decltype(tag)>(ctx, loss, Z, y, width, noise, values, grad);
  });
}

}  // namespace ekinet
