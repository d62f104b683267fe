#pragma once

#include "ekinet/array.hpp"

namespace ekinet::detail {

// Calls f(float{}) or f(double{}) for the dtype of an operation.
template <class F>
decltype(auto) dispatch_dtype(DType dtype, F&& f) {
  if (dtype == DType::float64) return f(double{});
  return f(float{});
}

}  // namespace ekinet::detail
