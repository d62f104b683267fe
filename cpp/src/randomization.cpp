#include "ekinet/randomization.hpp"

#include <cmath>
#include <string>

#include "dispatch.hpp"
#include "ekinet/random.hpp"
#include "validation.hpp"

namespace ekinet {
namespace detail {
namespace {

void check_scale(const ArgumentChecker& check, double scale) {
  if (!(scale >= 0) || !std::isfinite(scale)) {
    check.fail("scale = " + std::to_string(scale) + " must be a non-negative finite number");
  }
}

template <class T>
T* checked_mean(Backend<T>& backend, const ArgumentChecker& check, const ConstMatrixView& U, double scale,
                const MatrixView& U_out) {
  check.array(U, "U");
  check.shape(U_out, "U_out", U.rows, U.cols, "the shape of U");
  if (U.rows < 1) check.fail("U has no members (rows)");
  check_scale(check, scale);
  check.finite(backend, U, "U");
  T* mean = backend.workspace().template take<T>(U.cols);
  backend.column_mean(U.rows, U.cols, U.as<T>(), U.row_stride, mean);
  return mean;
}

// U_out = mean + scale * prior_std * z, z from the randomisation stream of seed.
template <class T>
void draw_around(Backend<T>& backend, const ArgumentChecker& check, const T* mean, double scale,
                 const ConstMatrixView& prior_std, std::uint64_t seed, const MatrixView& U_out) {
  check.array(prior_std, "prior_std");
  if (prior_std.rows != 1 || (prior_std.cols != 1 && prior_std.cols != U_out.cols)) {
    check.fail("prior_std has shape " + shape_string(prior_std.rows, prior_std.cols) +
               " but one value or one per parameter, (1, " + std::to_string(U_out.cols) + "), was expected");
  }
  check.finite(backend, prior_std, "prior_std");
  const std::uint64_t key = stream_key(seed, RandomStream::randomization);
  const bool per_parameter = prior_std.cols == U_out.cols && U_out.cols != 1;
  const double common = per_parameter ? scale : scale * backend.read_scalar(prior_std.as<T>());
  backend.fill_normal(U_out.rows, U_out.cols, key, 0, common, per_parameter ? prior_std.as<T>() : nullptr, mean,
                      U_out.as<T>(), U_out.row_stride);
}

}  // namespace
}  // namespace detail

void randomize(Context& ctx, ConstMatrixView U, double scale, ConstMatrixView prior_std, std::uint64_t seed,
               MatrixView U_out) {
  detail::dispatch_dtype(U.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto& backend = detail::backend_of<T>(ctx);
    backend.workspace().reset();
    const detail::ArgumentChecker check("randomize", ctx, U.dtype);
    const T* mean = detail::checked_mean(backend, check, U, scale, U_out);
    detail::draw_around(backend, check, mean, scale, prior_std, seed, U_out);
  });
}

void randomize_around(Context& ctx, ConstMatrixView mean, double scale, ConstMatrixView prior_std, std::uint64_t seed,
                      MatrixView U_out) {
  detail::dispatch_dtype(mean.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto& backend = detail::backend_of<T>(ctx);
    backend.workspace().reset();
    const detail::ArgumentChecker check("randomize_around", ctx, mean.dtype);
    check.array(U_out, "U_out");
    if (U_out.rows < 1) check.fail("U_out has no members (rows)");
    check.shape(mean, "mean", 1, U_out.cols, "one value per parameter, like a row of U_out");
    check.separate(U_out, "U_out", mean, "mean", false);  // the draw reads the mean while it writes U_out
    detail::check_scale(check, scale);
    check.finite(backend, mean, "mean");
    detail::draw_around(backend, check, mean.as<T>(), scale, prior_std, seed, U_out);
  });
}

void randomize_with(Context& ctx, ConstMatrixView U, double scale, ConstMatrixView xi, MatrixView U_out) {
  detail::dispatch_dtype(U.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto& backend = detail::backend_of<T>(ctx);
    backend.workspace().reset();
    const detail::ArgumentChecker check("randomize", ctx, U.dtype);
    check.shape(xi, "xi", U.rows, U.cols, "one prior sample per member, like U");
    check.finite(backend, xi, "xi");
    const T* mean = detail::checked_mean(backend, check, U, scale, U_out);
    check.separate(U_out, "U_out", xi, "xi", true);
    backend.axpby(U.rows, U.cols, static_cast<T>(scale), xi.as<T>(), xi.row_stride, T{0}, xi.as<T>(), xi.row_stride,
                  U_out.as<T>(), U_out.row_stride);
    backend.add_row_vector(U.rows, U.cols, U_out.as<T>(), U_out.row_stride, T{1}, mean, U_out.as<T>(),
                           U_out.row_stride);
  });
}

}  // namespace ekinet
