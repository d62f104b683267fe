#include "member_transform.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "ekinet/errors.hpp"
#include "ekinet/random.hpp"

namespace ekinet::detail {

namespace {

std::string member_list(const std::vector<std::int64_t>& members) {
  std::string text;
  const std::size_t shown = std::min<std::size_t>(members.size(), 5);
  for (std::size_t i = 0; i < shown; ++i) text += (i ? ", " : "") + std::to_string(members[i]);
  if (members.size() > shown) text += ", ...";
  return text;
}

// Row-major full J x J transform from the survivors' T_s and the failed members' re-draw coefficients.
template <class T>
const T* embed_with_redraws(Backend<T>& backend, const T* t_s, const Survivors& survivors,
                            std::uint64_t redraw_seed) {
  const i64 J = survivors.total, Js = survivors.count(), nf = static_cast<i64>(survivors.failed.size());
  Workspace& workspace = backend.workspace();
  // Failed member f becomes sum_i c_fi u_i' over the updated survivors u_i' = (T_s U_s)_i with
  // c_fi = 1/J_s + (z_fi - mean_i z_fi) / sqrt(J_s): mean plus anomalies times standard normals.
  const std::uint64_t key = stream_key(redraw_seed, RandomStream::redraw);
  std::vector<T> coefficients(static_cast<std::size_t>(nf * Js));
  for (i64 f = 0; f < nf; ++f) {
    double mean = 0;
    std::vector<double> z(static_cast<std::size_t>(Js));
    for (i64 i = 0; i < Js; ++i) {
      z[i] = standard_normal(key, static_cast<std::uint64_t>(survivors.failed[f] * J + survivors.members[i]));
      mean += z[i] / static_cast<double>(Js);
    }
    for (i64 i = 0; i < Js; ++i)
      coefficients[f * Js + i] = static_cast<T>(1.0 / Js + (z[i] - mean) / std::sqrt(static_cast<double>(Js)));
  }
  T* device_coefficients = workspace.take<T>(nf * Js);
  backend.copy_from_host(device_coefficients, coefficients.data(), coefficients.size() * sizeof(T));
  T* redrawn = workspace.take<T>(nf * Js);  // row-major nf x Js = coefficients (nf x Js) * T_s (Js x Js)
  backend.gemm(Trans::no, Trans::no, Js, nf, Js, T{1}, t_s, Js, device_coefficients, Js, T{0}, redrawn, Js);

  // Failure path only: assemble the J x J transform on the host (small next to U) and send it back.
  std::vector<T> host_t_s(static_cast<std::size_t>(Js * Js)), host_redrawn(static_cast<std::size_t>(nf * Js));
  backend.copy_to_host(host_t_s.data(), t_s, host_t_s.size() * sizeof(T));
  backend.copy_to_host(host_redrawn.data(), redrawn, host_redrawn.size() * sizeof(T));
  std::vector<T> full(static_cast<std::size_t>(J * J), T{0});
  for (i64 i = 0; i < Js; ++i)
    for (i64 k = 0; k < Js; ++k) full[survivors.members[i] * J + survivors.members[k]] = host_t_s[i * Js + k];
  for (i64 f = 0; f < nf; ++f)
    for (i64 k = 0; k < Js; ++k) full[survivors.failed[f] * J + survivors.members[k]] = host_redrawn[f * Js + k];
  T* device_full = workspace.take<T>(J * J);
  backend.copy_from_host(device_full, full.data(), full.size() * sizeof(T));
  return device_full;
}

}  // namespace

template <class T>
Survivors find_survivors(Backend<T>& backend, const ArgumentChecker& check, i64 J, i64 M, const T* g, i64 ldg,
                         const T* grad, i64 ld_grad, FailurePolicy policy) {
  Survivors survivors;
  survivors.total = J;
  std::vector<std::int32_t> flags(static_cast<std::size_t>(J), 0);
  auto* device_flags = backend.workspace().template take<std::int32_t>(J);
  backend.copy_from_host(device_flags, flags.data(), flags.size() * sizeof(std::int32_t));
  backend.flag_nonfinite_rows(J, M, g, ldg, device_flags);
  if (grad != nullptr) backend.flag_nonfinite_rows(J, M, grad, ld_grad, device_flags);
  backend.copy_to_host(flags.data(), device_flags, flags.size() * sizeof(std::int32_t));
  for (i64 j = 0; j < J; ++j) (flags[j] ? survivors.failed : survivors.members).push_back(j);
  if (survivors.all()) return survivors;

  const std::string what = grad != nullptr ? "G or grad" : "G";
  if (policy == FailurePolicy::raise) {
    check.fail("the rows of " + what + " of member(s) " + member_list(survivors.failed) + " contain NaN/Inf (" +
               std::to_string(survivors.failed.size()) + " of " + std::to_string(J) +
               " members failed); pass on_failure=redraw to drop and re-draw failed members");
  }
  if (survivors.count() < 2) {
    throw NumericalError(std::string(check.operation()) + ": only " + std::to_string(survivors.count()) + " of " +
                         std::to_string(J) + " members have finite " + what +
                         " (NaN/Inf in the rest); at least 2 are needed to form ensemble statistics");
  }
  auto* device_members = backend.workspace().template take<std::int64_t>(survivors.count());
  backend.copy_from_host(device_members, survivors.members.data(), survivors.members.size() * sizeof(std::int64_t));
  survivors.device_members = device_members;
  return survivors;
}

template <class T>
const T* survivor_rows(Backend<T>& backend, const Survivors& survivors, i64 cols, const T* a, i64 lda,
                       i64& ld_out) {
  if (survivors.all()) {
    ld_out = lda;
    return a;
  }
  T* rows = backend.workspace().template take<T>(survivors.count() * cols);
  backend.gather_rows(survivors.count(), cols, survivors.device_members, a, lda, rows, cols);
  ld_out = cols;
  return rows;
}

namespace {

template <class T>
const T* full_transform(Backend<T>& backend, T* a, const Survivors& survivors, std::uint64_t redraw_seed) {
  backend.fold_centering(survivors.count(), a, survivors.count(), a, survivors.count());
  return survivors.all() ? a : embed_with_redraws(backend, a, survivors, redraw_seed);
}

template <class T>
[[noreturn]] void report_nonfinite_update(Backend<T>& backend, const ArgumentChecker& check, const T* u, i64 J,
                                          i64 ldu, i64 P) {
  check.finite(backend, ConstMatrixView{u, dtype_of<T>(), backend.device(), J, P, ldu}, "U");
  throw_overflow(check, false);
}

}  // namespace

void throw_overflow(const ArgumentChecker& check, bool in_place) {
  throw NumericalError(std::string(check.operation()) +
                       ": the updated ensemble overflowed to Inf/NaN; reduce the step or rescale the problem" +
                       (in_place ? " (the update was in place: U now holds the overflowed values; restore it from a "
                                   "copy, or pass a separate output to keep U when this happens)"
                                 : ""));
}

template <class T>
void apply_member_transform(Backend<T>& backend, const ArgumentChecker& check, T* a, const Survivors& survivors,
                            const T* u, i64 ldu, i64 P, T* u_out, i64 ld_out, std::uint64_t redraw_seed) {
  const i64 J = survivors.total;
  const T* transform = full_transform(backend, a, survivors, redraw_seed);

  // Row-major U_out (J x P) = T U is column-major U_out^T = U^T T^T: gemm(N, N, P, J, J) on the same buffers.
  if (u_out != u) {
    backend.gemm(Trans::no, Trans::no, P, J, J, T{1}, u, ldu, transform, J, T{0}, u_out, ld_out);
    if (backend.count_nonfinite(J, P, u_out, ld_out) > 0) report_nonfinite_update(backend, check, u, J, ldu, P);
    return;
  }
  // In place: a column block of U at a time through a bounded copy, never a second J x P buffer.
  const i64 block = std::max<i64>(1, std::min<i64>(P, (i64{64} << 20) / static_cast<i64>(sizeof(T) * J)));
  T* copy = backend.workspace().template take<T>(J * block);
  for (i64 first = 0; first < P; first += block) {
    const i64 width = std::min(block, P - first);
    backend.axpby(J, width, T{1}, u + first, ldu, T{0}, u + first, ldu, copy, width);
    backend.gemm(Trans::no, Trans::no, width, J, J, T{1}, copy, width, transform, J, T{0}, u_out + first, ld_out);
  }
  if (backend.count_nonfinite(J, P, u_out, ld_out) > 0) throw_overflow(check, true);
}

template <class T>
void weighted_member_sum(Backend<T>& backend, const ArgumentChecker& check, const T* weights, const T* u, i64 J,
                         i64 ldu, i64 P, T* mean_out, T beta) {
  // Row-major U (J x P) is column-major U^T (P x J): mean_out = U^T weights + beta mean_out.
  backend.gemm(Trans::no, Trans::no, P, 1, J, T{1}, u, ldu, weights, J, beta, mean_out, P);
  if (backend.count_nonfinite(1, P, mean_out, P) > 0) report_nonfinite_update(backend, check, u, J, ldu, P);
}

template <class T>
void apply_member_transform_mean(Backend<T>& backend, const ArgumentChecker& check, T* a, const Survivors& survivors,
                                 const T* u, i64 ldu, i64 P, T* mean_out, std::uint64_t redraw_seed) {
  const i64 J = survivors.total;
  const T* transform = full_transform(backend, a, survivors, redraw_seed);
  // The mean of the rows of T U is t^T U with t_k = (1/J) sum_i T_ik.
  T* weights = backend.workspace().template take<T>(J);
  backend.column_mean(J, J, transform, J, weights);
  weighted_member_sum(backend, check, weights, u, J, ldu, P, mean_out, T{0});
}

#define EKINET_INSTANTIATE(T)                                                                                     \
  template Survivors find_survivors(Backend<T>&, const ArgumentChecker&, i64, i64, const T*, i64, const T*, i64,  \
                                    FailurePolicy);                                                               \
  template const T* survivor_rows(Backend<T>&, const Survivors&, i64, const T*, i64, i64&);                       \
  template void apply_member_transform(Backend<T>&, const ArgumentChecker&, T*, const Survivors&, const T*, i64,  \
                                       i64, T*, i64, std::uint64_t);                                              \
  template void apply_member_transform_mean(Backend<T>&, const ArgumentChecker&, T*, const Survivors&, const T*,  \
                                            i64, i64, T*, std::uint64_t);                                         \
  template void weighted_member_sum(Backend<T>&, const ArgumentChecker&, const T*, const T*, i64, i64, i64, T*, T);
EKINET_INSTANTIATE(float)
EKINET_INSTANTIATE(double)
#undef EKINET_INSTANTIATE

}  // namespace ekinet::detail
