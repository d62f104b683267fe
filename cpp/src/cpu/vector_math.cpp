// Branch-free exp, tanh and sigmoid for float that the compiler vectorises. The activations of the
// recurrent and dense layers call them millions of times per forward pass, where a scalar libm call
// (about 20 ns each) would dominate the time. Accuracy: a few ulp. NaN in gives NaN out, so a failed
// member stays visible; +-Inf saturate as the true functions do. Double keeps the libm functions.
#include "cpu/vector_math.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

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

// Vectors of GCC's vector extension, kBytes long: a 64-byte one is one AVX-512 register, two AVX2 or four SSE
// registers; the baseline build splits them.
template <class T, std::size_t kBytes>
struct Vector {
  typedef T type __attribute__((vector_size(kBytes)));
};

// Unaligned loads and stores of one vector, each a single instruction (a memcpy of several vectors at once went
// through the stack, and the wider loads that followed stalled on store forwarding).
template <class T, std::size_t kBytes>
struct UnalignedVector {
  typedef T type __attribute__((vector_size(kBytes), aligned(alignof(T)), may_alias));
};
// (By reference: a vector passed or returned by value draws ABI warnings for the clones without AVX.)
template <class T, std::size_t kBytes>
__attribute__((always_inline)) inline void load_vector(const T* p, typename Vector<T, kBytes>::type& v) {
  v = *reinterpret_cast<const typename UnalignedVector<T, kBytes>::type*>(p);
}
template <class T, std::size_t kBytes>
__attribute__((always_inline)) inline void store_vector(T* p, const typename Vector<T, kBytes>::type& v) {
  *reinterpret_cast<typename UnalignedVector<T, kBytes>::type*>(p) = v;
}

// sums[r] = the sum of the lanes of acc[r], r < 4. For float, a transposing reduction by shuffles (eight
// vector operations instead of 28 lane extractions and adds).
template <class T>
__attribute__((always_inline)) inline void horizontal_sums(const typename Vector<T, 32>::type (&acc)[4], T (&sums)[4]) {
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
  using V = typename Vector<T, 32>::type;
  constexpr std::int64_t kLanes = 32 / sizeof(T), kRows = 4;
  const std::int64_t k_vectors = k / kLanes * kLanes;
  for (std::int64_t j = 0; j < n; ++j) {
    const T* y = b + j * ldb;
    for (std::int64_t i = 0; i < m; i += kRows) {
      const std::int64_t block = std::min(kRows, m - i);
      T sums[kRows] = {};
      if (block == kRows) {
        V acc[kRows] = {};
        for (std::int64_t l = 0; l < k_vectors; l += kLanes) {
          V yv;
          std::memcpy(&yv, y + l, sizeof yv);
          for (std::int64_t r = 0; r < kRows; ++r) {
            V xv;
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
  using V = typename Vector<T, 32>::type;
  constexpr std::int64_t kLanes = 32 / sizeof(T), kRows = 4, kVectors = 2, kCols = kLanes * kVectors;
  std::int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    std::int64_t j = 0;
    for (; j + kCols <= n; j += kCols) {
      V acc[kRows][kVectors];
      for (std::int64_t i = 0; i < kRows; ++i)
        for (std::int64_t v = 0; v < kVectors; ++v)
          std::memcpy(&acc[i][v], c + (r + i) * ldc + j + v * kLanes, sizeof(V));
      for (std::int64_t l = 0; l < k; ++l) {
        V w[kVectors];
        for (std::int64_t v = 0; v < kVectors; ++v) std::memcpy(&w[v], wt + l * n + j + v * kLanes, sizeof(V));
        for (std::int64_t i = 0; i < kRows; ++i) {
          const T s = a[(r + i) * lda + l];
          for (std::int64_t v = 0; v < kVectors; ++v) acc[i][v] += s * w[v];
        }
      }
      for (std::int64_t i = 0; i < kRows; ++i)
        for (std::int64_t v = 0; v < kVectors; ++v)
          std::memcpy(c + (r + i) * ldc + j + v * kLanes, &acc[i][v], sizeof(V));
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

// Standard normal number `index` of the counter-based generator of ekinet/random.hpp, in branch-free double
// arithmetic that vectorises: the libm log and cos there cost about 25 ns a draw, and EKI(R) draws J x P normals
// per update (16 million for J = 200 members of 784-100-10). The result differs from the scalar one by an ulp
// or two of a double (the reductions below are exact).
inline double bits_to_double(std::uint64_t bits) {
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline std::uint64_t double_to_bits(double value) {
  std::uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

// An integer below 2^32 as a double, exactly: its bits under the exponent of 2^52, minus 2^52.
inline double small_integer_to_double(std::uint64_t v) {
  constexpr std::uint64_t kTwoPow52Bits = 0x4330000000000000ULL;
  return bits_to_double(kTwoPow52Bits | v) - 4503599627370496.0;
}

// sum_i coefficients[i] x^(n-1-i): the highest power first.
template <std::size_t n>
inline double horner(double x, const double (&coefficients)[n]) {
  double p = coefficients[0];
  for (std::size_t i = 1; i < n; ++i) p = p * x + coefficients[i];
  return p;
}

// -2 log(u) for u in (0, 1], normal: u = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| <= 0.1716, by its series to s^23 (remainder below 1e-18 relative).
inline double minus_two_log(double u) {
  const std::uint64_t bits = double_to_bits(u);
  const std::uint64_t exponent_field = bits >> 52;  // u > 0: no sign bit
  double m = bits_to_double((bits & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL);  // [1, 2)
  double e = small_integer_to_double(exponent_field) - 1023.0;
  const bool high = m > 1.4142135623730951;
  m = high ? 0.5 * m : m;
  e = high ? e + 1.0 : e;
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  // 1/3 + s2/5 + s2^2/7 + ... + s2^10/23
  constexpr double kSeries[] = {1.0 / 23, 1.0 / 21, 1.0 / 19, 1.0 / 17, 1.0 / 15, 1.0 / 13,
                                1.0 / 11, 1.0 / 9,  1.0 / 7,  1.0 / 5,  1.0 / 3};
  const double p = horner(s2, kSeries);
  const double log_m = 2.0 * s + 2.0 * s * s2 * p;
  constexpr double kLn2High = 6.93147180369123816490e-01, kLn2Low = 1.90821492927058770002e-10;  // fdlibm's split
  return -2.0 * ((e * kLn2High + log_m) + e * kLn2Low);
}

// cos(2 pi t) for t = k 2^-32 in [0, 1): t = q/4 + r with q = round(4t) and |r| <= 1/8 exactly, then the
// Taylor series of cos or sin of x = 2 pi r, |x| <= pi/4, to x^16 / x^17 (remainders below 3e-18).
inline double cos_two_pi(double t) {
  constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52: adding and subtracting rounds to nearest
  const double q = (4.0 * t + kRoundMagic) - kRoundMagic;
  const double r = t - 0.25 * q;
  constexpr double kTwoPiHigh = 6.283185307179586, kTwoPiLow = 2.4492935982947064e-16;
  const double x = r * kTwoPiHigh + r * kTwoPiLow, x2 = x * x;
  // (cos x - 1) / x^2 and (sin x - x) / x^3 as polynomials in x^2, highest power first
  constexpr double kCos[] = {1.0 / 20922789888000.0, -1.0 / 87178291200.0, 1.0 / 479001600.0, -1.0 / 3628800.0,
                             1.0 / 40320.0,          -1.0 / 720.0,         1.0 / 24.0,        -0.5};
  constexpr double kSin[] = {1.0 / 355687428096000.0, -1.0 / 1307674368000.0, 1.0 / 6227020800.0, -1.0 / 39916800.0,
                             1.0 / 362880.0,          -1.0 / 5040.0,          1.0 / 120.0,        -1.0 / 6.0};
  const double c = 1.0 + x2 * horner(x2, kCos);
  const double s = x + x * x2 * horner(x2, kSin);
  // cos(q pi/2 + x): q = 0 or 4: cos x; 1: -sin x; 2: -cos x; 3: sin x.
  const double value = (q == 1.0 || q == 3.0) ? s : c;
  return (q == 1.0 || q == 2.0) ? -value : value;
}

inline double standard_normal(std::uint64_t key, std::uint64_t index) {
  std::uint64_t bits = key + index * 0x9E3779B97F4A7C15ULL + 0x9E3779B97F4A7C15ULL;  // splitmix64
  bits = (bits ^ (bits >> 30)) * 0xBF58476D1CE4E5B9ULL;
  bits = (bits ^ (bits >> 27)) * 0x94D049BB133111EBULL;
  bits ^= bits >> 31;
  constexpr double kTwoPowMinus32 = 2.3283064365386963e-10;
  const double u1 = (small_integer_to_double(bits >> 32) + 1.0) * kTwoPowMinus32;
  const double u2 = small_integer_to_double(bits & 0xFFFFFFFFULL) * kTwoPowMinus32;
  return std::sqrt(minus_two_log(u1)) * cos_two_pi(u2);
}

// One loop per case rather than tests per draw: if-converted, a test becomes a masked load, which faults into
// a slow microcode assist on every vector when the pointer is null.
template <bool kScaled, bool kOffset, class T>
__attribute__((always_inline)) inline void standard_normal_loop(std::uint64_t key, std::uint64_t first_index,
                                                                std::int64_t n, double scale, const T* column_scale,
                                                                const T* offset, T* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    double z = scale * fast::standard_normal(key, first_index + static_cast<std::uint64_t>(i));
    if constexpr (kScaled) z *= static_cast<double>(column_scale[i]);
    if constexpr (kOffset) z += static_cast<double>(offset[i]);
    out[i] = static_cast<T>(z);
  }
}

template <class T>
__attribute__((always_inline)) inline void standard_normal_row_impl(std::uint64_t key, std::uint64_t first_index,
                                                                    std::int64_t n, double scale,
                                                                    const T* column_scale, const T* offset, T* out) {
  if (column_scale == nullptr && offset == nullptr) {
    standard_normal_loop<false, false>(key, first_index, n, scale, column_scale, offset, out);
  } else if (offset == nullptr) {
    standard_normal_loop<true, false>(key, first_index, n, scale, column_scale, offset, out);
  } else if (column_scale == nullptr) {
    standard_normal_loop<false, true>(key, first_index, n, scale, column_scale, offset, out);
  } else {
    standard_normal_loop<true, true>(key, first_index, n, scale, column_scale, offset, out);
  }
}

// kPixels output pixels of one block of L channels: a broadcast input value times a vector of L weights per
// pixel and patch entry, kPixels independent accumulators to hide the FMA latency. The L lanes are held as
// 64 / kBytes vectors of the ISA's native width kBytes: GCC lowers a 64-byte vector on AVX2 or SSE2 through
// the stack and the integer registers, an order of magnitude slower.
template <class T, int kPixels, int kBytes>
__attribute__((always_inline)) inline void convolve_pixels(const T* in, const std::int64_t (&base)[kPixels],
                                                           const std::int64_t* offsets, std::int64_t q, const T* wt,
                                                           T* out) {
  using V = typename Vector<T, kBytes>::type;
  constexpr int kParts = 64 / kBytes;
  constexpr std::int64_t kWidth = kBytes / sizeof(T);
  V acc[kPixels][kParts];
  for (int part = 0; part < kParts; ++part) {
    V bias;
    load_vector<T, kBytes>(wt + part * kWidth, bias);
    for (int p = 0; p < kPixels; ++p) acc[p][part] = bias;
  }
  for (std::int64_t e = 0; e < q; ++e) {
    const T* weights = wt + (e + 1) * kConvolutionLanes<T>;
    V w[kParts];
    for (int part = 0; part < kParts; ++part) load_vector<T, kBytes>(weights + part * kWidth, w[part]);
    const T* x = in + offsets[e];
    for (int p = 0; p < kPixels; ++p) {
      const T v = x[base[p]];
      for (int part = 0; part < kParts; ++part) acc[p][part] += w[part] * v;
    }
  }
  for (int p = 0; p < kPixels; ++p)
    for (int part = 0; part < kParts; ++part)
      store_vector<T, kBytes>(out + (p * kParts + part) * kWidth, acc[p][part]);
}

template <class T, int kPixels, int kBytes>
__attribute__((always_inline)) inline void convolve_image_impl(const T* in, const std::int64_t* base,
                                                               std::int64_t pixels, const std::int64_t* offsets,
                                                               std::int64_t q, const T* wt, std::int64_t blocks,
                                                               T* out) {
  constexpr std::int64_t kLanes = kConvolutionLanes<T>;
  for (std::int64_t block = 0; block < blocks; ++block) {
    const T* block_weights = wt + block * (q + 1) * kLanes;
    T* block_out = out + block * pixels * kLanes;
    for (std::int64_t first = 0; first < pixels; first += kPixels) {
      const std::int64_t valid = std::min<std::int64_t>(kPixels, pixels - first);
      std::int64_t block_base[kPixels];  // a short last block repeats its last pixel
      for (int p = 0; p < kPixels; ++p) block_base[p] = base[first + std::min<std::int64_t>(p, valid - 1)];
      if (valid == kPixels) {  // written in place: constant-size vector stores
        convolve_pixels<T, kPixels, kBytes>(in, block_base, offsets, q, block_weights, block_out + first * kLanes);
      } else {
        T tail[kPixels * kLanes];
        convolve_pixels<T, kPixels, kBytes>(in, block_base, offsets, q, block_weights, tail);
        std::copy(tail, tail + valid * kLanes, block_out + first * kLanes);
      }
    }
  }
}

template <class T>
inline T nan_max(T best, T v) {
  return (v > best || v != v) ? v : best;  // NaN propagates: a failed member stays visible
}

// Separable: first each input row's maxima along the windows' columns, written in place (a window starts at or
// after its output column), then each output's maxima down its window's rows. Each output is a chain of kernel
// dependent maxima, not kernel^2, and consecutive outputs are independent. Vectors of kBytes, the native width.
template <class T, std::size_t kBytes>
__attribute__((always_inline)) inline void maxpool_vectors_impl(T* plane, std::int64_t width, std::int64_t kernel,
                                                                std::int64_t stride, std::int64_t out_h,
                                                                std::int64_t out_w, T* out) {
  constexpr std::int64_t kLanes = kConvolutionLanes<T>;
  const std::int64_t rows = (out_h - 1) * stride + kernel;
  for (std::int64_t y = 0; y < rows; ++y)
    for (std::int64_t ox = 0; ox < out_w; ++ox) {
      const T* window = plane + (y * width + ox * stride) * kLanes;
      T* target = plane + (y * width + ox) * kLanes;  // no later read of this window or another reads it
      for (std::int64_t part = 0; part < kLanes; part += kBytes / sizeof(T)) {
        typename Vector<T, kBytes>::type best, next;
        load_vector<T, kBytes>(window + part, best);
        for (std::int64_t kx = 1; kx < kernel; ++kx) {
          load_vector<T, kBytes>(window + kx * kLanes + part, next);
          best = ((next > best) | (next != next)) ? next : best;  // NaN propagates, as nan_max
        }
        store_vector<T, kBytes>(target + part, best);
      }
    }
  const std::int64_t n = out_w * kLanes;
  for (std::int64_t oy = 0; oy < out_h; ++oy) {
    T* target = out + oy * n;
    const T* top = plane + oy * stride * width * kLanes;
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) target[i] = top[i];
    for (std::int64_t ky = 1; ky < kernel; ++ky) {
      const T* v = top + ky * width * kLanes;
#pragma omp simd
      for (std::int64_t i = 0; i < n; ++i) target[i] = nan_max(target[i], v[i]);
    }
  }
}

// Lane j of one butterfly shuffle of two n-lane vectors a, b (index n + k is b's lane k): within each group of
// 2h lanes, the low result takes the low h lanes of a and then of b, the high result their high h lanes.
constexpr int butterfly_lane(int j, int n, int h, bool high) {
  const int group = j / (2 * h) * (2 * h), o = j % (2 * h), from = group + (high ? h : 0);
  return o < h ? from + o : n + from + o - h;
}

template <class M, int n, int h, class Lanes = std::make_integer_sequence<int, n>>
struct ButterflyMasks;
template <class M, int n, int h, int... j>
struct ButterflyMasks<M, n, h, std::integer_sequence<int, j...>> {
  static constexpr M low{butterfly_lane(j, n, h, false)...};
  static constexpr M high{butterfly_lane(j, n, h, true)...};
};

// Transposes an n x n block held as n vectors of n lanes (rows[p] lane l -> rows[l] lane p), n a power of two:
// stages h = n/2, ..., 1, each exchanging, between the rows h apart, their lanes in halves of 2h-lane groups.
template <class V, int n, int h = n / 2>
__attribute__((always_inline)) inline void transpose_block(V (&rows)[n]) {
  using Lane = std::conditional_t<sizeof(V) / n == 4, std::int32_t, std::int64_t>;
  using M = typename Vector<Lane, sizeof(V)>::type;
  using Masks = ButterflyMasks<M, n, h>;
#pragma GCC unroll 16
  for (int i = 0; i < n; ++i) {
    if (i & h) continue;
    const V a = rows[i], b = rows[i + h];
    rows[i] = __builtin_shuffle(a, b, Masks::low);
    rows[i + h] = __builtin_shuffle(a, b, Masks::high);
  }
  if constexpr (h > 1) transpose_block<V, n, h / 2>(rows);
}

// Blocks of n pixels x n channels (n = the lanes of a native kBytes vector) by in-register transposes, each
// butterfly stage one shuffle instruction; the pixels past the last whole block element by element.
template <class T, std::size_t kBytes>
__attribute__((always_inline)) inline void unblock_channels_impl(const T* in, std::int64_t pixels,
                                                                 std::int64_t channels, T* out,
                                                                 std::int64_t out_channel_stride) {
  using V = typename Vector<T, kBytes>::type;
  constexpr int kLanes = static_cast<int>(kConvolutionLanes<T>), n = static_cast<int>(kBytes / sizeof(T));
  const std::int64_t transposed = pixels / n * n;
  for (std::int64_t first = 0; first < channels; first += kLanes) {
    const std::int64_t lanes = std::min<std::int64_t>(kLanes, channels - first);
    const T* block = in + first * pixels;
    T* target = out + first * out_channel_stride;
    for (std::int64_t part = 0; part < lanes; part += n) {
      const std::int64_t part_lanes = std::min<std::int64_t>(n, lanes - part);
      for (std::int64_t p0 = 0; p0 < transposed; p0 += n) {
        V rows[n];
        for (int p = 0; p < n; ++p) load_vector<T, kBytes>(block + (p0 + p) * kLanes + part, rows[p]);
        transpose_block<V, n>(rows);
        for (std::int64_t l = 0; l < part_lanes; ++l)
          store_vector<T, kBytes>(target + (part + l) * out_channel_stride + p0, rows[l]);
      }
    }
    for (std::int64_t l = 0; l < lanes; ++l)
      for (std::int64_t p = transposed; p < pixels; ++p) target[l * out_channel_stride + p] = block[p * kLanes + l];
  }
}

template <class T>
__attribute__((always_inline)) inline void relu_row_impl(T* row, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) row[i] = row[i] <= T{0} ? T{0} : row[i];
}

// Each output row: the column maxima of its kernel input rows over the columns the windows read (contiguous,
// vectorised), then the maxima of those along each window.
template <class T>
__attribute__((always_inline)) inline void maxpool_plane_impl(const T* in, std::int64_t width, std::int64_t kernel,
                                                              std::int64_t stride, std::int64_t out_h,
                                                              std::int64_t out_w, T* out, T* row) {
  const std::int64_t span = (out_w - 1) * stride + kernel;
  for (std::int64_t oy = 0; oy < out_h; ++oy) {
    const T* top = in + oy * stride * width;
    std::copy(top, top + span, row);
    for (std::int64_t ky = 1; ky < kernel; ++ky) {
      const T* line = top + ky * width;
      for (std::int64_t x = 0; x < span; ++x) row[x] = nan_max(row[x], line[x]);
    }
    T* target = out + oy * out_w;
    for (std::int64_t ox = 0; ox < out_w; ++ox) target[ox] = row[ox * stride];
    for (std::int64_t kx = 1; kx < kernel; ++kx)
      for (std::int64_t ox = 0; ox < out_w; ++ox) target[ox] = nan_max(target[ox], row[ox * stride + kx]);
  }
}

}  // namespace

// Float rows are compiled for baseline x86-64 (SSE2) and the x86-64-v3 (AVX2 + FMA: the products need the FMA)
// and x86-64-v4 (AVX-512: native 64-bit multiplies for the generator's hash) ISA levels, and picked at load
// time by CPU features, whatever the vendor; a named CPU (arch=haswell) would be picked by model instead.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__)
#define EKINET_VECTOR_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define EKINET_VECTOR_CLONES
#endif

// The ISA level of the clone that runs (4: x86-64-v4, AVX-512, 32 registers; 3: x86-64-v3, AVX2 + FMA, 16;
// 1: baseline SSE2, 16). The convolution's vectors take its native width, and its accumulators fill the
// registers: 8 pixels of one 64-byte vector each on AVX-512, 6 of two 32-byte halves on AVX2 (12 accumulators
// keep both FMA units busy, with 3 registers left), 2 of four 16-byte quarters on SSE2.
namespace {
int cpu_isa_level() {
#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__)
  static const int level = __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("x86-64-v3") ? 3 : 1;
  return level;
#else
  return 1;
#endif
}

template <class T>
__attribute__((always_inline)) inline void convolve_image_dispatch(const T* in, const std::int64_t* base,
                                                                   std::int64_t pixels, const std::int64_t* offsets,
                                                                   std::int64_t q, const T* wt, std::int64_t blocks,
                                                                   T* out) {
  switch (cpu_isa_level()) {
    case 4: convolve_image_impl<T, 8, 64>(in, base, pixels, offsets, q, wt, blocks, out); break;
    case 3: convolve_image_impl<T, 6, 32>(in, base, pixels, offsets, q, wt, blocks, out); break;
    default: convolve_image_impl<T, 2, 16>(in, base, pixels, offsets, q, wt, blocks, out);
  }
}

template <class T>
__attribute__((always_inline)) inline void maxpool_vectors_dispatch(T* plane, std::int64_t width,
                                                                    std::int64_t kernel, std::int64_t stride,
                                                                    std::int64_t out_h, std::int64_t out_w, T* out) {
  switch (cpu_isa_level()) {
    case 4: maxpool_vectors_impl<T, 64>(plane, width, kernel, stride, out_h, out_w, out); break;
    case 3: maxpool_vectors_impl<T, 32>(plane, width, kernel, stride, out_h, out_w, out); break;
    default: maxpool_vectors_impl<T, 16>(plane, width, kernel, stride, out_h, out_w, out);
  }
}

template <class T>
__attribute__((always_inline)) inline void unblock_channels_dispatch(const T* in, std::int64_t pixels,
                                                                     std::int64_t channels, T* out,
                                                                     std::int64_t out_channel_stride) {
  switch (cpu_isa_level()) {
    case 4: unblock_channels_impl<T, 64>(in, pixels, channels, out, out_channel_stride); break;
    case 3: unblock_channels_impl<T, 32>(in, pixels, channels, out, out_channel_stride); break;
    default: unblock_channels_impl<T, 16>(in, pixels, channels, out, out_channel_stride);
  }
}
}  // namespace

EKINET_VECTOR_CLONES void relu_row(float* row, std::int64_t n) { relu_row_impl(row, n); }
EKINET_VECTOR_CLONES void relu_row(double* row, std::int64_t n) { relu_row_impl(row, n); }
EKINET_VECTOR_CLONES void unblock_channels(const float* in, std::int64_t pixels, std::int64_t channels, float* out,
                                           std::int64_t out_channel_stride) {
  unblock_channels_dispatch(in, pixels, channels, out, out_channel_stride);
}
EKINET_VECTOR_CLONES void unblock_channels(const double* in, std::int64_t pixels, std::int64_t channels,
                                           double* out, std::int64_t out_channel_stride) {
  unblock_channels_dispatch(in, pixels, channels, out, out_channel_stride);
}
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
EKINET_VECTOR_CLONES void standard_normal_row(std::uint64_t key, std::uint64_t first_index, std::int64_t n,
                                              double scale, const float* column_scale, const float* offset,
                                              float* out) {
  standard_normal_row_impl(key, first_index, n, scale, column_scale, offset, out);
}
EKINET_VECTOR_CLONES void standard_normal_row(std::uint64_t key, std::uint64_t first_index, std::int64_t n,
                                              double scale, const double* column_scale, const double* offset,
                                              double* out) {
  standard_normal_row_impl(key, first_index, n, scale, column_scale, offset, out);
}
EKINET_VECTOR_CLONES void convolve_image(const float* in, const std::int64_t* base, std::int64_t pixels,
                                         const std::int64_t* offsets, std::int64_t q, const float* wt,
                                         std::int64_t blocks, float* out) {
  convolve_image_dispatch(in, base, pixels, offsets, q, wt, blocks, out);
}
EKINET_VECTOR_CLONES void convolve_image(const double* in, const std::int64_t* base, std::int64_t pixels,
                                         const std::int64_t* offsets, std::int64_t q, const double* wt,
                                         std::int64_t blocks, double* out) {
  convolve_image_dispatch(in, base, pixels, offsets, q, wt, blocks, out);
}
EKINET_VECTOR_CLONES void maxpool_vectors(float* plane, std::int64_t width, std::int64_t kernel,
                                          std::int64_t stride, std::int64_t out_h, std::int64_t out_w, float* out) {
  maxpool_vectors_dispatch(plane, width, kernel, stride, out_h, out_w, out);
}
EKINET_VECTOR_CLONES void maxpool_vectors(double* plane, std::int64_t width, std::int64_t kernel,
                                          std::int64_t stride, std::int64_t out_h, std::int64_t out_w, double* out) {
  maxpool_vectors_dispatch(plane, width, kernel, stride, out_h, out_w, out);
}
EKINET_VECTOR_CLONES void maxpool_plane(const float* in, std::int64_t width, std::int64_t kernel,
                                        std::int64_t stride, std::int64_t out_h, std::int64_t out_w, float* out,
                                        float* row) {
  maxpool_plane_impl(in, width, kernel, stride, out_h, out_w, out, row);
}
EKINET_VECTOR_CLONES void maxpool_plane(const double* in, std::int64_t width, std::int64_t kernel,
                                        std::int64_t stride, std::int64_t out_h, std::int64_t out_w, double* out,
                                        double* row) {
  maxpool_plane_impl(in, width, kernel, stride, out_h, out_w, out, row);
}
void tanh_row(double* row, std::int64_t n) { tanh_row_impl(row, n); }
void sigmoid_row(double* row, std::int64_t n) { sigmoid_row_impl(row, n); }
void lstm_cell_row(const double* gates, std::int64_t hidden, double* cell, double* h) {
  lstm_cell_row_impl(gates, hidden, cell, h);
}

}  // namespace ekinet::detail::fast
