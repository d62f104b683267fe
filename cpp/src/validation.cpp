#include "validation.hpp"

#include <cmath>
#include <cstdint>
#include <utility>

#include "ekinet/errors.hpp"

namespace ekinet::detail {

std::string shape_string(i64 rows, i64 cols) { return "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")"; }

void ArgumentChecker::fail(const std::string& message) const {
  throw InvalidArgument(std::string(operation_) + ": " + message);
}

void ArgumentChecker::array(const ConstMatrixView& view, const char* name) const {
  if (view.dtype != dtype_ && view.data == nullptr) {  // an unset view carries the default dtype: say it is unset
    fail(std::string(name) + " is an unset (null) view; pass the array");
  }
  if (view.dtype != dtype_) {
    throw DTypeError(std::string(operation_) + ": " + name + " has dtype " + to_string(view.dtype) +
                     " but the ensemble is " + to_string(dtype_) + "; pass every array in one dtype");
  }
  if (view.device.kind != device_.kind || view.device.index != device_.index) {
    fail(std::string(name) + " is on " + to_string(view.device) + " but the context runs on " +
         to_string(device_) + "; move the array or use a context for its device");
  }
  if (view.rows < 0 || view.cols < 0 || (view.rows > 1 && view.row_stride < view.cols)) {
    fail(std::string(name) + " has an invalid layout: shape " + shape_string(view.rows, view.cols) +
         " with row stride " + std::to_string(view.row_stride));
  }
  if (view.data == nullptr && view.size() > 0) fail(std::string(name) + " is a null pointer");
}

namespace {

// [first, last) byte addresses of a view, as integers (comparing pointers into different arrays is unspecified).
std::pair<std::uintptr_t, std::uintptr_t> byte_range(const ConstMatrixView& view) {
  const auto first = reinterpret_cast<std::uintptr_t>(view.data);
  if (view.rows == 0 || view.cols == 0) return {first, first};
  const auto elements = static_cast<std::uintptr_t>((view.rows - 1) * view.row_stride + view.cols);
  return {first, first + elements * size_of(view.dtype)};
}

// Whether two views share an element. Exact for views of one dtype and row stride (column blocks of one buffer
// interleave without touching: rows r of a and s of b meet iff d - cols_a < (r - s) ld < d + cols_b, d the
// offset of b from a in elements); otherwise whether their address ranges meet.
bool overlap(const ConstMatrixView& a, const ConstMatrixView& b) {
  const auto [a_first, a_last] = byte_range(a);
  const auto [b_first, b_last] = byte_range(b);
  if (a_first >= b_last || b_first >= a_last) return false;
  const auto size = static_cast<std::intptr_t>(size_of(a.dtype));
  const std::intptr_t bytes = static_cast<std::intptr_t>(b_first) - static_cast<std::intptr_t>(a_first);
  if (a.dtype != b.dtype || a.row_stride != b.row_stride || a.rows < 2 || b.rows < 2 || bytes % size != 0) {
    return true;
  }
  const i64 d = bytes / size, ld = a.row_stride;
  for (i64 k = -(b.rows - 1); k <= a.rows - 1; ++k) {
    if (d - a.cols < k * ld && k * ld < d + b.cols) return true;
  }
  return false;
}

}  // namespace

void ArgumentChecker::separate(const ConstMatrixView& out, const char* out_name, const ConstMatrixView& in,
                               const char* in_name, bool in_place) const {
  if (!overlap(out, in)) return;
  const bool same = out.data == in.data && out.rows == in.rows && out.cols == in.cols &&
                    (out.rows <= 1 || out.row_stride == in.row_stride);
  if (in_place && same) return;
  fail(std::string(out_name) + " shares memory with " + in_name +
       (in_place ? " without being the same array (an offset or another row stride); pass " + std::string(in_name) +
                       " itself to work in place, or separate memory"
                 : "; pass separate memory for " + std::string(out_name)));
}

void ArgumentChecker::shape(const ConstMatrixView& view, const char* name, i64 rows, i64 cols,
                            const char* meaning) const {
  array(view, name);
  if (view.rows != rows || view.cols != cols) {
    fail(std::string(name) + " has shape " + shape_string(view.rows, view.cols) + " but " +
         shape_string(rows, cols) + " was expected (" + meaning + ")");
  }
}

void check_ensemble_update(const ArgumentChecker& check, const ConstMatrixView& U, const ConstMatrixView& G,
                           const ConstMatrixView& U_out, double step, UpdateOutput output) {
  check.array(U, "U");
  const i64 J = U.rows;
  if (J < 2) check.fail("U has " + std::to_string(J) + " member(s) (rows); an ensemble needs at least 2");
  if (U.cols < 1) check.fail("U has no columns; each member needs at least one parameter");
  check.shape(G, "G", J, G.cols, "one row of forward-model outputs per member of U");
  if (G.cols < 1) check.fail("G has no columns; the forward model must give at least one output");
  if (output == UpdateOutput::mean) {
    check.shape(U_out, "U_out", 1, U.cols, "one row for the mean of the updated ensemble");
    check.separate(U_out, "U_out (the updated mean)", U, "U", false);
  } else {
    check.shape(U_out, "U_out", J, U.cols, "the shape of U");
    check.separate(U_out, "U_out", U, "U", true);
  }
  if (!(step > 0) || !std::isfinite(step)) {
    check.fail("step = " + std::to_string(step) + " must be a positive finite number");
  }
}

}  // namespace ekinet::detail
