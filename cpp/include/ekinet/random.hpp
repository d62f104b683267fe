// Counter-based standard normals: draw i of (seed, stream) is a pure function of its inputs, so the CPU, the
// CUDA kernels and the NumPy/CuPy reference produce the same numbers in any order and in parallel.
// bits = splitmix64(key + i * golden), key = splitmix64(seed ^ stream * 0xD1B54A32D192ED03);
// Box-Muller on the two 32-bit halves of bits: u1 = (hi + 1) / 2^32 in (0, 1], u2 = lo / 2^32.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EKINET_HOST_DEVICE __host__ __device__
#else
#define EKINET_HOST_DEVICE
#endif

namespace ekinet {

// Streams keep the draws of different purposes independent for one seed.
enum class RandomStream : std::uint64_t { perturbation = 1, redraw = 2, randomization = 3 };

EKINET_HOST_DEVICE inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

EKINET_HOST_DEVICE inline std::uint64_t stream_key(std::uint64_t seed, RandomStream stream) {
  return splitmix64(seed ^ (static_cast<std::uint64_t>(stream) * 0xD1B54A32D192ED03ULL));
}

EKINET_HOST_DEVICE inline double standard_normal(std::uint64_t key, std::uint64_t index) {
  const std::uint64_t bits = splitmix64(key + index * 0x9E3779B97F4A7C15ULL);
  const double two_pow_minus_32 = 2.3283064365386963e-10;
  const double u1 = (static_cast<double>(bits >> 32) + 1.0) * two_pow_minus_32;
  const double u2 = static_cast<double>(bits & 0xFFFFFFFFULL) * two_pow_minus_32;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

}  // namespace ekinet
