// Argument checks shared by every operation. Messages name the operation and the argument, and say what was
// expected, what was got and, where it helps, what to do.
#pragma once

#include <string>

#include "backend.hpp"
#include "ekinet/context.hpp"
#include "ekinet/report.hpp"

namespace ekinet::detail {

class ArgumentChecker {
 public:
  ArgumentChecker(const char* operation, const Context& context, DType dtype)
      : operation_(operation), device_(context.device()), dtype_(dtype) {}

  // Non-null, on the context's device, of the operation's dtype, with a valid row stride.
  void array(const ConstMatrixView& view, const char* name) const;
  // array() plus the exact shape; `meaning` explains the expectation ("one row per ensemble member").
  void shape(const ConstMatrixView& view, const char* name, i64 rows, i64 cols, const char* meaning) const;
  [[noreturn]] void fail(const std::string& message) const;
  // Fails when `out` shares memory with `in`, unless `in_place` allows it and both are the same view: a
  // partial overlap (an offset or another row stride) would be read after it was written. Views that interleave
  // without touching (column blocks of one buffer) are separate.
  void separate(const ConstMatrixView& out, const char* out_name, const ConstMatrixView& in, const char* in_name,
                bool in_place) const;

  // Throws InvalidArgument when the view holds NaN or Inf.
  template <class T>
  void finite(Backend<T>& backend, const ConstMatrixView& view, const char* name) const {
    const i64 bad = backend.count_nonfinite(view.rows, view.cols, view.as<T>(), view.row_stride);
    if (bad > 0) {
      fail(std::string(name) + " contains " + std::to_string(bad) + " NaN/Inf value" + (bad > 1 ? "s" : "") +
           "; pass finite values");
    }
  }

  const char* operation() const { return operation_; }

 private:
  const char* operation_;
  Device device_;
  DType dtype_;
};

std::string shape_string(i64 rows, i64 cols);

// The checks every ensemble update shares: U holds J >= 2 members, G one row of M >= 1 outputs per member,
// U_out the shape of U (or 1 x P, apart from U, for the mean output), and the step is positive and finite.
void check_ensemble_update(const ArgumentChecker& check, const ConstMatrixView& U, const ConstMatrixView& G,
                           const ConstMatrixView& U_out, double step, UpdateOutput output);

}  // namespace ekinet::detail
