// Branch-free exp, tanh and sigmoid for float that the compiler vectorises. The activations of the
// recurrent and dense layers call them millions of times per forward pass, where a scalar libm call
// (about 20 ns each) would dominate the time. Accuracy: a few ulp. NaN in gives NaN out, so a failed
// member stays visible; +-Inf saturate as the true functions do. Double keeps the libm functions.
#include "cpu/vector_math.hpp"

#include <algorithm>
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
__attribute__((always_inline)) inline void tanh_row_impl(T* row, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) row[i] = fast::tanh(row[i]);
}

template <class T>
__attribute__((always_inline)) inline void sigmoid_row_impl(T* row, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) row[i] = fast::sigmoid(row[i]);
}

template <class T>
__attribute__((always_inline)) inline void lstm_cell_row_impl(const T* gates, std::int64_t hidden, T* cell, T* h) {
  for (std::int64_t u = 0; u < hidden; ++u) {
    const T input = fast::sigmoid(gates[u]), forget = fast::sigmoid(gates[hidden + u]),
            candidate = fast::tanh(gates[2 * hidden + u]), output = fast::sigmoid(gates[3 * hidden + u]);
    cell[u] = forget * cell[u] + input * candidate;
    h[u] = output * fast::tanh(cell[u]);
  }
}

template <class T>
struct Vector32;  // 32-byte vectors of GCC's vector extension (two SSE registers on the baseline build)
template <>
struct Vector32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vector32<double> {
  typedef double type __attribute__((vector_size(32)));
};

// sums[r] = the sum of the lanes of acc[r], r < 4. For float, a transposing reduction by shuffles (eight
// vector operations instead of 28 lane extractions and adds).
template <class T>
__attribute__((always_inline)) inline void horizontal_sums(const typename Vector32<T>::type (&acc)[4], T (&sums)[4]) {
  if constexpr (sizeof(T) == 4) {
    typedef std::int32_t Mask __attribute__((vector_size(32)));
    // pairs of rows interleaved, each lane summing two of a row's lanes
    const auto s01 = __builtin_shuffle(acc[0], acc[1], Mask{0, 8, 1, 9, 2, 10, 3, 11}) +
                     __builtin_shuffle(acc[0], acc[1], Mask{4, 12, 5, 13, 6, 14, 7, 15});
    const auto s23 = __builtin_shuffle(acc[2], acc[3], Mask{0, 8, 1, 9, 2, 10, 3, 11}) +
                     __builtin_shuffle(acc[2], acc[3], Mask{4, 12, 5, 13, 6, 14, 7, 15});
    // lanes r and r + 4 hold halves of row r's sum
    const auto t = __builtin_shuffle(s01, s23, Mask{0, 1, 8, 9, 4, 5, 12, 13}) +
                   __builtin_shuffle(s01, s23, Mask{2, 3, 10, 11, 6, 7, 14, 15});
    for (int r = 0; r < 4; ++r) sums[r] = t[r] + t[r + 4];
  } else {
    for (int r = 0; r < 4; ++r)
      for (std::size_t lane = 0; lane < 32 / sizeof(T); ++lane) sums[r] += acc[r][lane];
  }
}

template <class T>
__attribute__((always_inline)) inline void gemm_tn_impl(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
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
  // Dot products, four rows of A^T at a time: four independent vector accumulators over l, then one
  // horizontal sum each.
  using Vector = typename Vector32<T>::type;
  constexpr std::int64_t kLanes = 32 / sizeof(T), kRows = 4;
  const std::int64_t k_vectors = k / kLanes * kLanes;
  for (std::int64_t j = 0; j < n; ++j) {
    const T* y = b + j * ldb;
    for (std::int64_t i = 0; i < m; i += kRows) {
      const std::int64_t block = std::min(kRows, m - i);
      T sums[kRows] = {};
      if (block == kRows) {
        Vector acc[kRows] = {};
        for (std::int64_t l = 0; l < k_vectors; l += kLanes) {
          Vector yv;
          std::memcpy(&yv, y + l, sizeof yv);
          for (std::int64_t r = 0; r < kRows; ++r) {
            Vector xv;
            std::memcpy(&xv, a + (i + r) * lda + l, sizeof xv);
            acc[r] += xv * yv;
          }
        }
        horizontal_sums(acc, sums);
      }
      for (std::int64_t r = 0; r < block; ++r)
        for (std::int64_t l = block == kRows ? k_vectors : 0; l < k; ++l) sums[r] += a[(i + r) * lda + l] * y[l];
      for (std::int64_t r = 0; r < block; ++r) {
        T& out = c[i + r + j * ldc];
        out = beta == T{0} ? alpha * sums[r] : alpha * sums[r] + beta * out;  // beta = 0 overwrites (NaN ignored)
      }
    }
  }
}

// C (rows x n, ld ldc) += A (rows x k, ld lda) Wt (k x n, contiguous): blocks of 4 rows by 2 vectors of columns
// held in registers over the whole k loop, so each loaded vector of Wt feeds four rows' multiply-adds.
// Inlined into each target clone, so that the vectors are the clone's registers.
template <class T>
__attribute__((always_inline)) inline void accumulate_product_impl(std::int64_t rows, std::int64_t n,
                                                                   std::int64_t k, const T* a, std::int64_t lda,
                                                                   const T* wt, T* c, std::int64_t ldc) {
  using Vector = typename Vector32<T>::type;
  constexpr std::int64_t kLanes = 32 / sizeof(T), kRows = 4, kVectors = 2, kCols = kLanes * kVectors;
  std::int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    std::int64_t j = 0;
    for (; j + kCols <= n; j += kCols) {
      Vector acc[kRows][kVectors];
      for (std::int64_t i = 0; i < kRows; ++i)
        for (std::int64_t v = 0; v < kVectors; ++v)
          std::memcpy(&acc[i][v], c + (r + i) * ldc + j + v * kLanes, sizeof(Vector));
      for (std::int64_t l = 0; l < k; ++l) {
        Vector w[kVectors];
        for (std::int64_t v = 0; v < kVectors; ++v) std::memcpy(&w[v], wt + l * n + j + v * kLanes, sizeof(Vector));
        for (std::int64_t i = 0; i < kRows; ++i) {
          const T s = a[(r + i) * lda + l];
          for (std::int64_t v = 0; v < kVectors; ++v) acc[i][v] += s * w[v];
        }
      }
      for (std::int64_t i = 0; i < kRows; ++i)
        for (std::int64_t v = 0; v < kVectors; ++v)
          std::memcpy(c + (r + i) * ldc + j + v * kLanes, &acc[i][v], sizeof(Vector));
    }
    for (std::int64_t i = 0; i < kRows && j < n; ++i)  // the columns past the last full block
      for (std::int64_t l = 0; l < k; ++l) {
        const T s = a[(r + i) * lda + l];
        for (std::int64_t q = j; q < n; ++q) c[(r + i) * ldc + q] += s * wt[l * n + q];
      }
  }
  for (; r < rows; ++r)  // the rows past the last block
    for (std::int64_t l = 0; l < k; ++l) {
      const T s = a[r * lda + l];
      for (std::int64_t q = 0; q < n; ++q) c[r * ldc + q] += s * wt[l * n + q];
    }
}

}  // namespace

// Float rows are compiled for baseline x86-64 (SSE2) and the x86-64-v3 ISA level (AVX2 + FMA: the products
// need the FMA) and picked at load time by CPU features, whatever the vendor (perf shows the v3 clone running
// on the Intel Xeon of bench/results); a named CPU (arch=haswell) would be picked by model instead.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__)
#define EKINET_VECTOR_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
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
EKINET_VECTOR_CLONES void accumulate_product(std::int64_t rows, std::int64_t n, std::int64_t k, const float* a,
                                             std::int64_t lda, const float* wt, float* c, std::int64_t ldc) {
  accumulate_product_impl(rows, n, k, a, lda, wt, c, ldc);
}
void accumulate_product(std::int64_t rows, std::int64_t n, std::int64_t k, const double* a, std::int64_t lda,
                        const double* wt, double* c, std::int64_t ldc) {
  accumulate_product_impl(rows, n, k, a, lda, wt, c, ldc);
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
