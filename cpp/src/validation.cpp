#include "validation.hpp"

#include <cmath>

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
    if (U_out.data == U.data) check.fail("U_out must not be U when the output is the mean of the updated ensemble");
  } else {
    check.shape(U_out, "U_out", J, U.cols, "the shape of U");
  }
  if (!(step > 0) || !std::isfinite(step)) {
    check.fail("step = " + std::to_string(step) + " must be a positive finite number");
  }
}

}  // namespace ekinet::detail
