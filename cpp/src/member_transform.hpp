// Every update of this library has the form U_new = U + A (U - ubar) with a small J x J matrix A. It is
// applied as one GEMM U_new = T U, T = I + A (I - 1 1^T / J): the mean subtraction and the identity are
// folded into T, so the J x P anomalies are never formed. Failed members (NaN/Inf outputs) take no part:
// A is computed on the survivors only, and each failed member is re-drawn around the updated survivors,
// ubar_s' + dU_s'^T z / sqrt(J_s), which is again a row of T (eki-math section 5).
#pragma once

#include <cstdint>
#include <vector>

#include "backend.hpp"
#include "ekinet/report.hpp"
#include "validation.hpp"

namespace ekinet::detail {

struct Survivors {
  i64 total = 0;                      // J
  std::vector<std::int64_t> members;  // surviving member indices, ascending
  std::vector<std::int64_t> failed;   // failed member indices, ascending
  const std::int64_t* device_members = nullptr;  // `members` on the device (only when some failed)

  i64 count() const { return static_cast<i64>(members.size()); }
  bool all() const { return failed.empty(); }
};

// Finds the rows of G (and of grad, if given) that hold NaN/Inf. Throws InvalidArgument under
// FailurePolicy::raise, NumericalError when fewer than two members survive.
template <class T>
Survivors find_survivors(Backend<T>& backend, const ArgumentChecker& check, i64 J, i64 M, const T* g, i64 ldg,
                         const T* grad, i64 ld_grad, FailurePolicy policy);

// Rows of the survivors (count x cols) of A, gathered into the workspace, or A itself when all survived.
template <class T>
const T* survivor_rows(Backend<T>& backend, const Survivors& survivors, i64 cols, const T* a, i64 lda, i64& ld_out);

// Whether U must be checked for NaN/Inf before the update: an in-place update would overwrite it before its
// output is checked. Otherwise apply_member_transform checks the output (which also catches overflow), and U
// only if that fails, so a finite ensemble is read once.
inline bool check_ensemble_first(const void* u, const void* u_out) { return u == u_out; }

// Throws NumericalError: the update overflowed (in_place: and U, overwritten, holds the overflow).
[[noreturn]] void throw_overflow(const ArgumentChecker& check, bool in_place);

// U_out = T U with T built from A (J_s x J_s, row-major, overwritten); see the file comment. U_out may be U
// (then U must have been checked finite). Throws InvalidArgument naming U if U holds NaN/Inf, NumericalError if
// the update overflowed (in place too: U then holds the overflow, which the error says).
template <class T>
void apply_member_transform(Backend<T>& backend, const ArgumentChecker& check, T* a, const Survivors& survivors,
                            const T* u, i64 ldu, i64 P, T* u_out, i64 ld_out, std::uint64_t redraw_seed);

// mean_out (1 x P) = the mean of T U, the updated ensemble, as U^T t with t the column means of T: one pass
// over U instead of the J x J by J x P product. Same checks and errors as apply_member_transform.
template <class T>
void apply_member_transform_mean(Backend<T>& backend, const ArgumentChecker& check, T* a, const Survivors& survivors,
                                 const T* u, i64 ldu, i64 P, T* mean_out, std::uint64_t redraw_seed);

// mean_out (1 x P) = U^T weights (weights: J values): a weighted sum of the members, checked like the updates.
template <class T>
void weighted_member_sum(Backend<T>& backend, const ArgumentChecker& check, const T* weights, const T* u, i64 J,
                         i64 ldu, i64 P, T* mean_out, T beta);

}  // namespace ekinet::detail
