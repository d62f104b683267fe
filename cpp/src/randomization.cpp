#include "ekinet/randomization.hpp"

#include <cmath>
#include <string>

#include "dispatch.hpp"
#include "ekinet/random.hpp"
#include "validation.hpp"

namespace ekinet {
namespace detail {
namespace {

template <class T>
T* checked_start(Backend<T>& backend, const ArgumentChecker& check, const ConstMatrixView& U, double scale,
                 const MatrixView& U_out) {
  check.array(U, "U");
  check.shape(U_out, "U_out", U.rows, U.cols, "the shape of U");
  if (U.rows < 1) check.fail("U has no members (rows)");
  if (!(scale >= 0) || !std::isfinite(scale)) {
    check.fail("scale = " + std::to_string(scale) + " must be a non-negative finite number");
  }
  check.finite(backend, U, "U");
  T* mean = backend.workspace().template take<T>(U.cols);
  backend.column_mean(U.rows, U.cols, U.as<T>(), U.row_stride, mean);
  return mean;
}

}  // namespace
}  // namespace detail

void randomize(Context& ctx, ConstMatrixView U, double scale, ConstMatrixView prior_std, std::uint64_t seed,
               MatrixView U_out) {
  detail::dispatch_dtype(U.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto& backend = ctx.backend(T{});
    backend.workspace().reset();
    const detail::ArgumentChecker check("randomize", ctx, U.dtype);
    check.array(prior_std, "prior_std");
    if (prior_std.rows != 1 || (prior_std.cols != 1 && prior_std.cols != U.cols)) {
      check.fail("prior_std has shape " + detail::shape_string(prior_std.rows, prior_std.cols) +
                 " but one value or one per parameter, (1, " + std::to_string(U.cols) + "), was expected");
    }
    check.finite(backend, prior_std, "prior_std");
    const T* mean = detail::checked_start(backend, check, U, scale, U_out);
    const std::uint64_t key = stream_key(seed, RandomStream::randomization);
    const bool per_parameter = prior_std.cols == U.cols && U.cols != 1;
    const double common = per_parameter ? scale : scale * backend.read_scalar(prior_std.as<T>());
    backend.fill_normal(U.rows, U.cols, key, 0, common, per_parameter ? prior_std.as<T>() : nullptr, mean,
                        U_out.as<T>(), U_out.row_stride);
  });
}

void randomize_with(Context& ctx, ConstMatrixView U, double scale, ConstMatrixView xi, MatrixView U_out) {
  detail::dispatch_dtype(U.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto& backend = ctx.backend(T{});
    backend.workspace().reset();
    const detail::ArgumentChecker check("randomize", ctx, U.dtype);
    check.shape(xi, "xi", U.rows, U.cols, "one prior sample per member, like U");
    check.finite(backend, xi, "xi");
    const T* mean = detail::checked_start(backend, check, U, scale, U_out);
    backend.axpby(U.rows, U.cols, static_cast<T>(scale), xi.as<T>(), xi.row_stride, T{0}, xi.as<T>(), xi.row_stride,
                  U_out.as<T>(), U_out.row_stride);
    backend.add_row_vector(U.rows, U.cols, U_out.as<T>(), U_out.row_stride, T{1}, mean, U_out.as<T>(),
                           U_out.row_stride);
  });
}

}  // namespace ekinet
