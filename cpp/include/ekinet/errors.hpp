// Typed exceptions: every check names the argument, what was expected and what was got.
// The Python binding maps them to ValueError, TypeError, FloatingPointError, MemoryError and RuntimeError.
#pragma once

#include <stdexcept>
#include <string>

namespace ekinet {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Wrong shape, non-finite value, non-positive-definite covariance, out-of-range option.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// Unsupported or mismatched element type.
class DTypeError : public Error {
 public:
  using Error::Error;
};

// A factorisation that cannot be rescued, fewer than two surviving members.
class NumericalError : public Error {
 public:
  using Error::Error;
};

// Host or device allocation failed.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

// A backend that was not compiled in (CUDA) or a device that is not present.
class BackendUnavailable : public Error {
 public:
  using Error::Error;
};

}  // namespace ekinet
