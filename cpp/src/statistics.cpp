#include "ekinet/statistics.hpp"

#include "dispatch.hpp"
#include "validation.hpp"

namespace ekinet {
namespace detail {
namespace {

// The mean member of U, into `mean` or (null) the workspace.
template <class T>
T* checked_mean(Backend<T>& backend, const ArgumentChecker& check, const ConstMatrixView& U, T* mean = nullptr) {
  check.array(U, "U");
  if (U.rows < 1) check.fail("U has no members (rows)");
  if (mean == nullptr) mean = backend.workspace().template take<T>(U.cols);
  backend.column_mean(U.rows, U.cols, U.as<T>(), U.row_stride, mean);
  // Any NaN/Inf in U reaches the mean: checking its P values is the cheap test of U's J x P.
  if (backend.count_nonfinite(1, U.cols, mean, U.cols) > 0) {
    check.finite(backend, U, "U");
    check.fail("the mean of U overflowed; rescale the ensemble");
  }
  return mean;
}

}  // namespace
}  // namespace detail

void ensemble_mean(Context& ctx, ConstMatrixView U, MatrixView mean) {
  detail::dispatch_dtype(U.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto& backend = detail::backend_of<T>(ctx);
    backend.workspace().reset();
    const detail::ArgumentChecker check("ensemble_mean", ctx, U.dtype);
    check.shape(mean, "mean", 1, U.cols, "one value per parameter");
    detail::checked_mean(backend, check, U, mean.as<T>());
  });
}

void ensemble_anomalies(Context& ctx, ConstMatrixView U, MatrixView anomalies) {
  detail::dispatch_dtype(U.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto& backend = detail::backend_of<T>(ctx);
    backend.workspace().reset();
    const detail::ArgumentChecker check("ensemble_anomalies", ctx, U.dtype);
    check.shape(anomalies, "anomalies", U.rows, U.cols, "the shape of U");
    const T* mean = detail::checked_mean(backend, check, U);
    backend.add_row_vector(U.rows, U.cols, U.as<T>(), U.row_stride, T{-1}, mean, anomalies.as<T>(),
                           anomalies.row_stride);
  });
}

double ensemble_spread(Context& ctx, ConstMatrixView U) {
  return detail::dispatch_dtype(U.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto& backend = detail::backend_of<T>(ctx);
    backend.workspace().reset();
    const detail::ArgumentChecker check("ensemble_spread", ctx, U.dtype);
    const T* mean = detail::checked_mean(backend, check, U);
    return backend.centred_sum_of_squares(U.rows, U.cols, U.as<T>(), U.row_stride, mean) /
           static_cast<double>(U.rows);
  });
}

}  // namespace ekinet
