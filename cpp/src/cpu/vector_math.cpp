// Branch-free exp, tanh and sigmoid for float that the compiler vectorises. The activations of the
// recurrent and dense layers call them millions of times per forward pass, where a scalar libm call
// (about 20 ns each) would dominate the time. Accuracy: a few ulp. NaN in gives NaN out, so a failed
// member stays visible; +-Inf saturate as the true functions do. Double keeps the libm functions.
#include "cpu/vector_math.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace ekinet::detail::fast {
namespace {

// exp by range reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 Taylor polynomial in r (truncation
// below 2e-8 relative) and 2^n assembled in the exponent bits.
inline float exp(float x) {
  constexpr float kMax = 88.0f, kMin = -87.0f;  // 2^n stays a normal float: |n| <= 127
  x = x > kMax ? kMax : x;
  x = x < kMin ? kMin : x;  // comparisons are false for NaN, which passes through
  constexpr float kLog2e = 1.44269504088896341f, kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to nearest
  const float n = (x * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (x - n * kLn2High) - n * kLn2Low;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + fast::exp(-x)); }

// tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|); below |x| = 0.3, where 1 - e loses digits, the odd
// Taylor series to x^15 (remainder below 1e-12).
inline float tanh(float x) {
  const float a = std::fabs(x);
  const float e = fast::exp(-2.0f * a);
  const float large = std::copysign((1.0f - e) / (1.0f + e), x);
  const float x2 = x * x;
  float p = -929569.0f / 638512875.0f;
  p = p * x2 + 21844.0f / 6081075.0f;
  p = p * x2 - 1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  const float small = x + x * x2 * p;
  return a < 0.3f ? small : large;  // NaN: a < 0.3 is false and `large` is NaN
}

inline double exp(double x) { return std::exp(x); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh(double x) { return std::tanh(x); }

template <class T>
void tanh_row_impl(T* row, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) row[i] = fast::tanh(row[i]);
}

template <class T>
void sigmoid_row_impl(T* row, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) row[i] = fast::sigmoid(row[i]);
}

template <class T>
void lstm_cell_row_impl(const T* gates, std::int64_t hidden, T* cell, T* h) {
  for (std::int64_t u = 0; u < hidden; ++u) {
    const T input = fast::sigmoid(gates[u]), forget = fast::sigmoid(gates[hidden + u]),
            candidate = fast::tanh(gates[2 * hidden + u]), output = fast::sigmoid(gates[3 * hidden + u]);
    cell[u] = forget * cell[u] + input * candidate;
    h[u] = output * fast::tanh(cell[u]);
  }
}

template <class T>
void gemm_tn_impl(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
                  const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  if (k < 16) {  // short dot products: accumulate k scaled columns of A^T instead (vectorised over i)
    for (std::int64_t j = 0; j < n; ++j) {
      T* out = c + j * ldc;
      const T* y = b + j * ldb;
      for (std::int64_t i = 0; i < m; ++i) out[i] = beta == T{0} ? T{0} : beta * out[i];  // beta = 0 overwrites
      for (std::int64_t l = 0; l < k; ++l) {
        const T scale = alpha * y[l];
        for (std::int64_t i = 0; i < m; ++i) out[i] += scale * a[i * lda + l];
      }
    }
    return;
  }
  for (std::int64_t j = 0; j < n; ++j)
    for (std::int64_t i = 0; i < m; ++i) {
      const T* x = a + i * lda;
      const T* y = b + j * ldb;
      T sum{0};
#pragma omp simd reduction(+ : sum)
      for (std::int64_t l = 0; l < k; ++l) sum += x[l] * y[l];
      T& out = c[i + j * ldc];
      out = beta == T{0} ? alpha * sum : alpha * sum + beta * out;  // beta = 0 overwrites (NaN there ignored)
    }
}

}  // namespace

// Float rows are compiled for baseline x86-64 (SSE2), AVX2 and AVX-512 and picked at load time by CPU
// feature (an `arch=` clone would be picked by CPU model and misses other vendors).
#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__)
#define EKINET_VECTOR_CLONES __attribute__((target_clones("default", "avx2")))
#else
#define EKINET_VECTOR_CLONES
#endif

EKINET_VECTOR_CLONES void tanh_row(float* row, std::int64_t n) { tanh_row_impl(row, n); }
EKINET_VECTOR_CLONES void sigmoid_row(float* row, std::int64_t n) { sigmoid_row_impl(row, n); }
EKINET_VECTOR_CLONES void lstm_cell_row(const float* gates, std::int64_t hidden, float* cell, float* h) {
  lstm_cell_row_impl(gates, hidden, cell, h);
}
EKINET_VECTOR_CLONES void gemm_tn(std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                                  std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                                  std::int64_t ldc) {
  gemm_tn_impl(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemm_tn(std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a, std::int64_t lda,
             const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
  gemm_tn_impl(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void tanh_row(double* row, std::int64_t n) { tanh_row_impl(row, n); }
void sigmoid_row(double* row, std::int64_t n) { sigmoid_row_impl(row, n); }
void lstm_cell_row(const double* gates, std::int64_t hidden, double* cell, double* h) {
  lstm_cell_row_impl(gates, hidden, cell, h);
}

}  // namespace ekinet::detail::fast
