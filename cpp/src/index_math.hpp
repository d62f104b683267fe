// Integer division for the CUDA kernels' index arithmetic, host-callable so that it is tested on the CPU.
// A GPU has no 64-bit integer divider: int64 a / b is a software routine of some 70 instructions, and the
// network kernels split each element's flat index into (member, row, column, ...) with several of them. Their
// indices nearly always fit in 31 bits, where an unsigned 32-bit division costs a fraction of that.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define EKINET_HOST_DEVICE __host__ __device__
#else
#define EKINET_HOST_DEVICE
#endif

namespace ekinet::detail {

struct QuotientRemainder {
  std::int64_t quotient, remainder;
};

// {a / b, a % b} as C++ computes them, for b > 0; 32-bit when a and b are both in [0, 2^31).
EKINET_HOST_DEVICE inline QuotientRemainder divide(std::int64_t a, std::int64_t b) {
  if ((static_cast<std::uint64_t>(a | b) >> 31) == 0) {
    const std::uint32_t quotient = static_cast<std::uint32_t>(a) / static_cast<std::uint32_t>(b);
    return {quotient, a - static_cast<std::int64_t>(quotient) * b};
  }
  return {a / b, a % b};
}

}  // namespace ekinet::detail
