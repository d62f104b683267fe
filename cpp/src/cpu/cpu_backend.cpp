// CPU backend: BLAS/LAPACK for the dense algebra, plain loops for the element-wise work.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "cpu/blas_lapack.hpp"
#include "cpu/vector_math.hpp"
#include "ekinet/context.hpp"
#include "ekinet/errors.hpp"

namespace ekinet::detail {
namespace {

int to_int(i64 value, const char* what) {
  if (value < 0 || value > INT_MAX) {
    throw InvalidArgument(std::string("dimension ") + what + " = " + std::to_string(value) +
                          " exceeds the 32-bit BLAS/LAPACK limit of " + std::to_string(INT_MAX));
  }
  return static_cast<int>(value);
}

const char* flag(Trans trans) { return trans == Trans::yes ? "T" : "N"; }

// The cores to split work over, read once: std::thread::hardware_concurrency() reads /sys on every call in
// glibc, which cost more than a whole online step of a small ensemble.
i64 worker_slots() {
  static const i64 cores = std::max<i64>(1, static_cast<i64>(std::thread::hardware_concurrency()));
  return cores;
}

// Runs body(first, last) over [0, count) split across the cores when there are at least `grain` elements
// of work per thread: the memory-bound passes over J x P ensembles are otherwise single-threaded next to a
// multithreaded BLAS. Chunks are contiguous and ordered, so reductions combined in order are deterministic.
template <class Body>
void parallel_ranges(i64 count, i64 work_per_item, Body body) {
  constexpr i64 kGrain = i64{1} << 20;  // about a millisecond of memory traffic, well above a thread start
  const i64 hardware = worker_slots();
  const i64 threads = std::clamp<i64>(count * work_per_item / kGrain, 1, std::min(hardware, count));
  if (threads <= 1) {
    body(i64{0}, count, i64{0});
    return;
  }
  // An exception escaping a thread would call std::terminate: each range keeps the first one, and it is
  // rethrown here once every worker has joined. A thread that cannot start leaves its range to this thread.
  std::exception_ptr error;
  std::mutex error_mutex;
  auto guarded = [&](i64 first, i64 last, i64 slot) {
    try {
      body(first, last, slot);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  const i64 chunk = (count + threads - 1) / threads;
  auto range = [&](i64 t) { return std::pair<i64, i64>{t * chunk, std::min(count, (t + 1) * chunk)}; };
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(threads - 1));  // no reallocation once a thread runs
  i64 started = 1;
  for (; started < threads; ++started) {
    const auto [first, last] = range(started);
    if (first >= last) break;
    try {
      workers.emplace_back(guarded, first, last, started);
    } catch (const std::system_error&) {
      break;
    }
  }
  guarded(i64{0}, std::min(count, chunk), i64{0});
  for (i64 t = started; t < threads; ++t) {
    const auto [first, last] = range(t);
    if (first < last) guarded(first, last, t);
  }
  for (std::thread& worker : workers) worker.join();
  if (error) std::rethrow_exception(error);
}

// sum_c (a[c] - mean[c])^2 in double, over eight independent partial sums so that the loop vectorises (one
// running sum is a chain of dependent additions, and the compiler may not reorder it).
template <class T>
double centred_row_sum_of_squares(const T* a, const T* mean, i64 n) {
  constexpr i64 kLanes = 8;
  double partial[kLanes] = {};
  i64 c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (i64 l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(a[c + l]) - static_cast<double>(mean[c + l]);
      partial[l] += d * d;
    }
  double sum = 0;
  for (; c < n; ++c) {
    const double d = static_cast<double>(a[c]) - static_cast<double>(mean[c]);
    sum += d * d;
  }
  for (double value : partial) sum += value;
  return sum;
}

constexpr i64 kSmallGemm = i64{1} << 18;  // m n k at or below which OpenBLAS runs a GEMM on one thread
constexpr i64 kTinyGemm = 4096;           // m n k at or below which direct loops beat the BLAS call overhead

// NaN or Inf: all exponent bits set. An integer test the compiler vectorises, unlike std::isfinite.
inline bool nonfinite(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits & 0x7F800000u) == 0x7F800000u;
}
inline bool nonfinite(double x) {
  std::uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits & 0x7FF0000000000000ull) == 0x7FF0000000000000ull;
}

class CpuAllocator final : public Allocator {
 public:
  void* allocate(std::size_t bytes) override {
    void* pointer = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (pointer == nullptr) {
      throw OutOfMemory("could not allocate " + std::to_string(bytes) + " bytes of host memory for the workspace");
    }
    return pointer;
  }
  void deallocate(void* pointer) override { std::free(pointer); }
};

template <class T>
class CpuBackend final : public Backend<T> {
 public:
  explicit CpuBackend(Workspace& workspace) : workspace_(workspace) {}

  Device device() const override { return {}; }
  Workspace& workspace() override { return workspace_; }

  void copy_to_host(void* host, const void* source, std::size_t bytes) override { std::memcpy(host, source, bytes); }
  void copy_from_host(void* target, const void* host, std::size_t bytes) override {
    std::memcpy(target, host, bytes);
  }
  double read_scalar(const T* value) override { return static_cast<double>(*value); }

  void gemm(Trans trans_a, Trans trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda, const T* b, i64 ldb,
            T beta, T* c, i64 ldc) override {
    if (m == 0 || n == 0) return;
    const int im = to_int(m, "m"), in = to_int(n, "n"), ik = to_int(k, "k");
    const int ilda = to_int(std::max<i64>(lda, 1), "lda"), ildb = to_int(std::max<i64>(ldb, 1), "ldb"),
              ildc = to_int(std::max<i64>(ldc, 1), "ldc");
    blas::gemm(T{}, flag(trans_a), flag(trans_b), &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc,
               std::size_t{1}, std::size_t{1});
  }

  void syrk_lower(Trans trans, i64 n, i64 k, T alpha, const T* a, i64 lda, T beta, T* c, i64 ldc) override {
    if (n == 0) return;
    const int in = to_int(n, "n"), ik = to_int(k, "k"), ilda = to_int(std::max<i64>(lda, 1), "lda"),
              ildc = to_int(ldc, "ldc");
    blas::syrk(T{}, "L", flag(trans), &in, &ik, &alpha, a, &ilda, &beta, c, &ildc, std::size_t{1}, std::size_t{1});
  }

  void trsm_left_lower(Trans trans, i64 m, i64 n, const T* l, i64 ldl, T* b, i64 ldb) override {
    if (m == 0 || n == 0) return;
    const int im = to_int(m, "m"), in = to_int(n, "n"), ildl = to_int(ldl, "ldl"), ildb = to_int(ldb, "ldb");
    const T one = 1;
    blas::trsm(T{}, "L", "L", flag(trans), "N", &im, &in, &one, l, &ildl, b, &ildb, std::size_t{1}, std::size_t{1},
               std::size_t{1}, std::size_t{1});
  }

  void trmm_left_lower(i64 m, i64 n, const T* l, i64 ldl, T* b, i64 ldb) override {
    if (m == 0 || n == 0) return;
    const int im = to_int(m, "m"), in = to_int(n, "n"), ildl = to_int(ldl, "ldl"), ildb = to_int(ldb, "ldb");
    const T one = 1;
    blas::trmm(T{}, "L", "L", "N", "N", &im, &in, &one, l, &ildl, b, &ildb, std::size_t{1}, std::size_t{1},
               std::size_t{1}, std::size_t{1});
  }

  i64 potrf_lower(i64 n, T* a, i64 lda) override {
    const int in = to_int(n, "n"), ilda = to_int(lda, "lda");
    int info = 0;
    blas::potrf(T{}, "L", &in, a, &ilda, &info, std::size_t{1});
    return info;
  }

  void potrs_lower(i64 n, i64 nrhs, const T* l, i64 ldl, T* b, i64 ldb) override {
    const int in = to_int(n, "n"), inrhs = to_int(nrhs, "nrhs"), ildl = to_int(ldl, "ldl"),
              ildb = to_int(ldb, "ldb");
    int info = 0;
    blas::potrs(T{}, "L", &in, &inrhs, l, &ildl, b, &ildb, &info, std::size_t{1});
    if (info != 0) throw Error("potrs failed with info " + std::to_string(info));
  }

  i64 syevd_lower(i64 n, T* a, i64 lda, T* w) override {
    const int in = to_int(n, "n"), ilda = to_int(lda, "lda");
    int info = 0, lwork = -1, liwork = -1, iwork_size = 0;
    T work_size = 0;
    blas::syevd(T{}, "V", "L", &in, a, &ilda, w, &work_size, &lwork, &iwork_size, &liwork, &info, std::size_t{1},
                std::size_t{1});
    if (info != 0) return info;
    // The query returns the size as a T, which a float rounds down past 2^24 (and not every LAPACK rounds it
    // up first): take at least the documented minimum for eigenvectors, 1 + 6n + 2n^2, counted in doubles.
    const double needed = std::max(std::ceil(static_cast<double>(work_size)), 1.0 + 6.0 * n + 2.0 * n * n);
    if (needed > INT_MAX) {
      throw InvalidArgument("the eigen-decomposition of an n = " + std::to_string(n) + " matrix needs " +
                            std::to_string(needed) + " workspace entries, over LAPACK's 32-bit limit");
    }
    lwork = static_cast<int>(needed);
    liwork = iwork_size;
    T* work = workspace_.take<T>(lwork);
    int* iwork = workspace_.take<int>(liwork);
    blas::syevd(T{}, "V", "L", &in, a, &ilda, w, work, &lwork, iwork, &liwork, &info, std::size_t{1},
                std::size_t{1});
    return info;
  }

  void gemm_strided_batched(Trans trans_a, Trans trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda,
                            i64 stride_a, const T* b, i64 ldb, i64 stride_b, T beta, T* c, i64 ldc, i64 stride_c,
                            i64 batch) override {
    if (m == 0 || n == 0 || batch == 0) return;
    // Tiny products (one online step: a few thousand multiply-adds per member) cost less than a BLAS call.
    // The forward pass multiplies A^T B (weights stored row-major as PyTorch does) with unit-stride columns.
    if (m * n * k <= kTinyGemm && trans_a == Trans::yes && trans_b == Trans::no) {
      parallel_ranges(batch, m * n * k, [&](i64 first, i64 last, i64) {
        for (i64 i = first; i < last; ++i)
          fast::gemm_tn(m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta, c + i * stride_c,
                        ldc);
      });
      return;
    }
    // Small products (the per-step recurrent GEMMs, late dense layers) run single-threaded inside BLAS
    // (OpenBLAS's own threshold), so split the batch over the cores here; a threaded BLAS batch loses
    // more to waking its threads than the products take.
    if (m * n * k <= kSmallGemm) {
      parallel_ranges(batch, m * n * k / 4, [&](i64 first, i64 last, i64) {
        for (i64 i = first; i < last; ++i)
          gemm(trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta, c + i * stride_c,
               ldc);
      });
      return;
    }
#ifdef EKINET_HAVE_GEMM_BATCH_STRIDED
    constexpr int kColumnMajor = 102, kNoTrans = 111, kTrans = 112;
    blas::gemm_batch_strided(T{}, kColumnMajor, trans_a == Trans::yes ? kTrans : kNoTrans,
                             trans_b == Trans::yes ? kTrans : kNoTrans, to_int(m, "m"), to_int(n, "n"),
                             to_int(k, "k"), alpha, a, to_int(std::max<i64>(lda, 1), "lda"),
                             to_int(stride_a, "stride_a"), b, to_int(std::max<i64>(ldb, 1), "ldb"),
                             to_int(stride_b, "stride_b"), beta, c, to_int(std::max<i64>(ldc, 1), "ldc"),
                             to_int(stride_c, "stride_c"), to_int(batch, "batch"));
#else
    for (i64 i = 0; i < batch; ++i)
      gemm(trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta, c + i * stride_c, ldc);
#endif
  }

  void bias_activation(i64 batch, i64 rows, i64 cols, T* x, i64 ld, i64 member_stride, const T* bias,
                       i64 bias_stride, bool bias_per_row, Activation activation) override {
    const i64 cost = activation == Activation::tanh || activation == Activation::sigmoid ? 16 : 4;  // exp is ~4x a pass
    parallel_ranges(batch * rows, cols * cost, [&](i64 first, i64 last, i64) {
      for (i64 index = first; index < last; ++index) {
        const i64 i = index / rows, r = index % rows;
        T* row = x + i * member_stride + r * ld;
        if (bias != nullptr) {
          const T* b = bias + i * bias_stride;
          for (i64 col = 0; col < cols; ++col) row[col] += bias_per_row ? b[r] : b[col];
        }
        activate(row, cols, activation);
      }
    });
  }

  void copy_strided(i64 batch, i64 rows, i64 cols, const T* in, i64 in_ld, i64 in_member_stride, T* out, i64 out_ld,
                    i64 out_member_stride) override {
    parallel_ranges(batch * rows, cols, [&](i64 first, i64 last, i64) {
      for (i64 index = first; index < last; ++index) {
        const i64 i = index / rows, r = index % rows;
        const T* source = in + i * in_member_stride + r * in_ld;
        std::copy(source, source + cols, out + i * out_member_stride + r * out_ld);
      }
    });
  }

  void fill_strided(i64 batch, i64 rows, i64 cols, T value, T* out, i64 ld, i64 member_stride) override {
    for (i64 i = 0; i < batch; ++i)
      for (i64 r = 0; r < rows; ++r) std::fill_n(out + i * member_stride + r * ld, cols, value);
  }

  // Each member's images convolved directly, members split over the cores: a thread lays out a member's weights
  // in channel blocks once (they stay in cache) and computes each output pixel as one vector of output channels per
  // patch entry, into an image-sized buffer where pooling and activation act on whole vectors before the
  // result is written out. im2col + GEMM wrote and packed every patch, 9 x the activations, through memory.
  void conv2d(const ConvolutionLayer<T>& layer) override {
    constexpr i64 kLanes = fast::kConvolutionLanes<T>;
    const i64 q = layer.patch_size(), pixels = layer.out_h * layer.out_w, images = layer.images;
    const i64 blocks = (layer.out_channels + kLanes - 1) / kLanes;
    const bool pooled = layer.pool_kernel > 0;
    // ReLU and Heaviside commute exactly with the maxima (they are monotone, NaN stays NaN, -0 and +0 both give
    // +0), so they act on the smaller pooled result; tanh and sigmoid are approximations, monotone only nearly.
    const bool activate_after_pooling = pooled && (layer.activation == Activation::relu ||
                                                   layer.activation == Activation::heaviside);
    // A padded layer reads a zero-bordered copy of each image, so that no patch entry needs a bounds test.
    const bool pad = layer.padding > 0;
    const i64 plane_w = layer.width + 2 * layer.padding, plane_h = layer.height + 2 * layer.padding;
    const i64 row_width = pad ? plane_w : layer.width, channel_stride = pad ? plane_h * plane_w : layer.channel_stride;
    i64* offsets = workspace_.take<i64>(q + pixels);
    i64* base = offsets + q;
    for (i64 ch = 0; ch < layer.channels; ++ch)
      for (i64 ky = 0; ky < layer.kernel; ++ky)
        for (i64 kx = 0; kx < layer.kernel; ++kx)
          offsets[(ch * layer.kernel + ky) * layer.kernel + kx] = ch * channel_stride + ky * row_width + kx;
    for (i64 oy = 0; oy < layer.out_h; ++oy)
      for (i64 ox = 0; ox < layer.out_w; ++ox)
        base[oy * layer.out_w + ox] = oy * layer.stride * row_width + ox * layer.stride;

    const i64 weights_size = blocks * (q + 1) * kLanes, conv_size = blocks * pixels * kLanes;
    const i64 result_pixels = layer.result_pixels(), scratch = layer.thread_scratch(kLanes);
    T* buffers = workspace_.take<T>(std::min(worker_slots(), layer.members) * scratch);
    parallel_ranges(layer.members, images * q * pixels * layer.out_channels, [&](i64 first, i64 last, i64 slot) {
      T* wt = buffers + slot * scratch;
      T* conv = wt + weights_size;
      T* result = pooled ? conv + conv_size : conv;
      T* plane = result + (pooled ? blocks * result_pixels * kLanes : conv_size);
      for (i64 i = first; i < last; ++i) {
        block_convolution_weights(layer.params + i * layer.params_stride, layer.out_channels, q, wt);
        for (i64 n = 0; n < images; ++n) {
          const T* image = layer.in + i * layer.in_member_stride + n * layer.image_stride;
          if (pad) image = pad_image(layer, image, plane);
          fast::convolve_image(image, base, pixels, offsets, q, wt, blocks, conv);
          if (!activate_after_pooling) activate(conv, conv_size, layer.activation);
          for (i64 block = 0; pooled && block < blocks; ++block) {
            fast::maxpool_vectors(conv + block * pixels * kLanes, layer.out_w, layer.pool_kernel, layer.pool_stride,
                                  layer.result_h(), layer.result_w(), result + block * result_pixels * kLanes);
          }
          if (activate_after_pooling) activate(result, blocks * result_pixels * kLanes, layer.activation);
          fast::unblock_channels(result, result_pixels, layer.out_channels,
                                 layer.out + i * layer.out_member_stride() + n * result_pixels, images * result_pixels);
        }
      }
    });
  }

  void maxpool2d(i64 batch, i64 channels, i64 images, i64 height, i64 width, const T* in, i64 in_member_stride,
                 i64 kernel, i64 stride, i64 out_h, i64 out_w, T* out, i64 out_member_stride) override {
    T* rows = workspace_.take<T>(std::min(worker_slots(), batch * channels * images) * width);
    parallel_ranges(batch * channels * images, out_h * out_w * kernel * kernel, [&](i64 first, i64 last, i64 slot) {
      for (i64 index = first; index < last; ++index) {
        const i64 i = index / (channels * images), plane = index % (channels * images);
        fast::maxpool_plane(in + i * in_member_stride + plane * height * width, width, kernel, stride, out_h, out_w,
                            out + i * out_member_stride + plane * out_h * out_w, rows + slot * width);
      }
    });
  }

  void channels_to_rows(i64 batch, i64 channels, i64 images, i64 pixels, const T* in, i64 in_member_stride, T* out,
                        i64 out_member_stride) override {
    for (i64 i = 0; i < batch; ++i)
      for (i64 n = 0; n < images; ++n)
        for (i64 c = 0; c < channels; ++c) {
          const T* source = in + i * in_member_stride + c * images * pixels + n * pixels;
          std::copy(source, source + pixels, out + i * out_member_stride + n * channels * pixels + c * pixels);
        }
  }

  void lstm_cell(i64 batch, i64 rows, i64 hidden, const T* gates, i64 gates_ld, i64 gates_member_stride, T* c,
                 i64 c_member_stride, T* h, i64 h_ld, i64 h_member_stride) override {
    parallel_ranges(batch * rows, hidden * 16, [&](i64 first, i64 last, i64) {
      for (i64 index = first; index < last; ++index) {
        const i64 i = index / rows, r = index % rows;
        const T* g = gates + i * gates_member_stride + r * gates_ld;
        T* cell = c + i * c_member_stride + r * hidden;
        fast::lstm_cell_row(g, hidden, cell, h + i * h_member_stride + r * h_ld);
      }
    });
  }

  // Members split over the cores, each run through every step on one core: its weights (transposed once, so
  // that the per-step products are register-blocked row updates) and its gates stay in cache, and there is no
  // synchronisation per step. Rows = examples; with fewer rows than kTransposeRows per step (online steps) the
  // transposition would cost as much as the products, which then run as dot products on the weights as stored.
  void recurrent(const RecurrentLayer<T>& layer) override {
    constexpr i64 kTransposeRows = 4;
    const i64 gates = layer.gates(), weights = (layer.features + layer.hidden) * gates;
    const bool transpose = layer.examples >= kTransposeRows;
    const i64 cell = layer.lstm ? layer.hidden : 0;
    const i64 scratch = (transpose ? weights : 0) + gates + layer.examples * (gates + cell);
    // one scratch per thread; parallel_ranges runs at most one thread per member
    T* buffers = workspace_.take<T>(std::min(worker_slots(), layer.members) * scratch);
    parallel_ranges(layer.members, layer.steps * layer.examples * weights, [&](i64 first, i64 last, i64 slot) {
      for (i64 i = first; i < last; ++i) recurrent_member(layer, i, transpose, buffers + slot * scratch);
    });
  }

  // The CPU keeps the per-layer GEMMs: its BLAS runs the convolutions' patch products faster than the fused
  // per-example loops (docs/design.md), and a one-step recurrent layer is already one pass per member here.
  bool fused_forward(const FusedPlan&, i64, i64, const T*, i64, const T*, i64, T*, i64, const T*, i64, T*,
                     i64) override {
    return false;
  }

  void column_mean(i64 rows, i64 cols, const T* a, i64 lda, T* mean) override {
    std::vector<double> sum(static_cast<std::size_t>(cols), 0.0);
    parallel_ranges(cols, rows, [&](i64 first, i64 last, i64) {
      for (i64 r = 0; r < rows; ++r) {
        const T* row = a + r * lda;
        for (i64 c = first; c < last; ++c) sum[c] += row[c];
      }
      for (i64 c = first; c < last; ++c) mean[c] = static_cast<T>(sum[c] / static_cast<double>(rows));
    });
  }

  void axpby(i64 rows, i64 cols, T alpha, const T* a, i64 lda, T beta, const T* b, i64 ldb, T* out,
             i64 ldo) override {
    parallel_ranges(rows, cols, [&](i64 first, i64 last, i64) {
      for (i64 r = first; r < last; ++r) {
      const T* ar = a + r * lda;
      const T* br = b + r * ldb;
      T* o = out + r * ldo;
      for (i64 c = 0; c < cols; ++c) o[c] = alpha * ar[c] + beta * br[c];
      }
    });
  }

  void add_row_vector(i64 rows, i64 cols, const T* a, i64 lda, T alpha, const T* v, T* out, i64 ldo) override {
    parallel_ranges(rows, cols, [&](i64 first, i64 last, i64) {
      for (i64 r = first; r < last; ++r) {
        const T* ar = a + r * lda;
        T* o = out + r * ldo;
        for (i64 c = 0; c < cols; ++c) o[c] = ar[c] + alpha * v[c];
      }
    });
  }

  void scale_columns(i64 rows, i64 cols, T* a, i64 lda, const T* v) override {
    for (i64 r = 0; r < rows; ++r) {
      T* ar = a + r * lda;
      for (i64 c = 0; c < cols; ++c) ar[c] *= v[c];
    }
  }

  void residual(i64 rows, i64 cols, const T* y, const T* eta, i64 ld_eta, const T* g, i64 ldg, T* out,
                i64 ldo) override {
    for (i64 r = 0; r < rows; ++r) {
      const T* gr = g + r * ldg;
      T* o = out + r * ldo;
      if (eta != nullptr) {
        const T* er = eta + r * ld_eta;
        for (i64 c = 0; c < cols; ++c) o[c] = y[c] + er[c] - gr[c];
      } else {
        for (i64 c = 0; c < cols; ++c) o[c] = y[c] - gr[c];
      }
    }
  }

  void gather_rows(i64 count, i64 cols, const std::int64_t* index, const T* a, i64 lda, T* out,
                   i64 ldo) override {
    for (i64 i = 0; i < count; ++i) std::copy(a + index[i] * lda, a + index[i] * lda + cols, out + i * ldo);
  }

  void fill_normal(i64 rows, i64 cols, std::uint64_t key, i64 first_row, double scale, const T* column_scale,
                   const T* offset, T* out, i64 ldo) override {
    parallel_ranges(rows, cols * 16, [&](i64 first, i64 last, i64) {
      for (i64 r = first; r < last; ++r) {
        const std::uint64_t base = static_cast<std::uint64_t>(first_row + r) * static_cast<std::uint64_t>(cols);
        fast::standard_normal_row(key, base, cols, scale, column_scale, offset, out + r * ldo);
      }
    });
  }

  void add_diagonal(i64 n, T* a, i64 lda, T alpha, const T* v) override {
    for (i64 i = 0; i < n; ++i) a[i * lda + i] += alpha * (v != nullptr ? v[i] : T{1});
  }

  void fold_centering(i64 n, const T* a, i64 lda, T* out, i64 ldo) override {
    for (i64 i = 0; i < n; ++i) {
      double row_sum = 0;
      for (i64 k = 0; k < n; ++k) row_sum += a[i * lda + k];
      const T shift = static_cast<T>(row_sum / static_cast<double>(n));
      for (i64 k = 0; k < n; ++k) out[i * ldo + k] = a[i * lda + k] - shift + (i == k ? T{1} : T{0});
    }
  }

  void scale_by_negative_step(i64 rows, i64 cols, T* a, i64 lda, double h, double eps, bool adaptive,
                              T* step) override {
    double sum_of_squares = 0;
    for (i64 r = 0; r < rows; ++r)
      for (i64 c = 0; c < cols; ++c) sum_of_squares += static_cast<double>(a[r * lda + c]) * a[r * lda + c];
    const double norm = std::sqrt(sum_of_squares) + eps;  // 0 only where D = 0 and eps = 0: no update at any step
    const T h_n = static_cast<T>(adaptive && norm > 0 ? h / norm : h);
    *step = h_n;
    for (i64 r = 0; r < rows; ++r)
      for (i64 c = 0; c < cols; ++c) a[r * lda + c] *= -h_n;
  }

  void flag_nonfinite_rows(i64 rows, i64 cols, const T* a, i64 lda, std::int32_t* flags) override {
    for (i64 r = 0; r < rows; ++r) {
      if (count_row_nonfinite(a + r * lda, cols) > 0) flags[r] = 1;
    }
  }

  i64 count_nonfinite(i64 rows, i64 cols, const T* a, i64 lda) override {
    std::vector<i64> counts(static_cast<std::size_t>(worker_slots()), 0);
    parallel_ranges(rows, cols, [&](i64 first, i64 last, i64 slot) {
      for (i64 r = first; r < last; ++r) counts[slot] += count_row_nonfinite(a + r * lda, cols);
    });
    i64 total = 0;
    for (i64 count : counts) total += count;
    return total;
  }

  i64 count_nonpositive(i64 rows, i64 cols, const T* a, i64 lda) override {
    i64 count = 0;
    for (i64 r = 0; r < rows; ++r)
      for (i64 c = 0; c < cols; ++c) count += !(a[r * lda + c] > 0);
    return count;
  }

  i64 count_asymmetric(i64 n, const T* a, i64 lda, double tolerance) override {
    i64 count = 0;
    for (i64 r = 0; r < n; ++r)
      for (i64 c = 0; c < r; ++c) {
        const double bound = tolerance * std::sqrt(std::abs(double(a[r * lda + r]) * double(a[c * lda + c])));
        count += !(std::abs(double(a[r * lda + c]) - double(a[c * lda + r])) <= bound);
      }
    return count;
  }

  double mean_diagonal(i64 n, const T* a, i64 lda) override {
    double sum = 0;
    for (i64 i = 0; i < n; ++i) sum += a[i * lda + i];
    return sum / static_cast<double>(n);
  }

  double centred_sum_of_squares(i64 rows, i64 cols, const T* a, i64 lda, const T* mean) override {
    std::vector<double> sums(static_cast<std::size_t>(worker_slots()), 0.0);
    parallel_ranges(rows, cols, [&](i64 first, i64 last, i64 slot) {
      for (i64 r = first; r < last; ++r) sums[slot] += centred_row_sum_of_squares(a + r * lda, mean, cols);
    });
    double total = 0;
    for (double sum : sums) total += sum;
    return total;
  }

  void divide_rows_clamped(i64 n, i64 nrhs, const T* w, T floor, T* b, i64 ldb) override {
    for (i64 c = 0; c < nrhs; ++c)
      for (i64 i = 0; i < n; ++i) b[i + c * ldb] /= std::max(w[i], floor);
  }

  void row_dots(i64 rows, i64 cols, const T* a, i64 lda, const T* b, i64 ldb, T* out) override {
    for (i64 r = 0; r < rows; ++r) {
      double sum = 0;
      for (i64 c = 0; c < cols; ++c) sum += static_cast<double>(a[r * lda + c]) * b[r * ldb + c];
      out[r] = static_cast<T>(sum);
    }
  }

  void inverse_sqrt(i64 n, const T* v, T* out) override {
    for (i64 i = 0; i < n; ++i) out[i] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(v[i])));
  }

  i64 loss_gradient(Loss loss, i64 rows, i64 cols, i64 width, const T* z, i64 ldz, const T* y,
                    const T* inverse_variance, double scalar_inverse_variance, T* values, T* grad,
                    i64 ldg) override {
    i64 invalid = 0;
    for (i64 r = 0; r < rows; ++r) {
      const T* zr = z + r * ldz;
      T* gr = grad != nullptr ? grad + r * ldg : nullptr;
      double value = 0;
      switch (loss) {
        case Loss::squared:
          for (i64 c = 0; c < cols; ++c) {
            const double iv = inverse_variance != nullptr ? inverse_variance[c] : scalar_inverse_variance;
            const double d = static_cast<double>(zr[c]) - y[c];
            value += 0.5 * d * d * iv;
            if (gr) gr[c] = static_cast<T>(d * iv);
          }
          break;
        case Loss::cross_entropy:
          for (i64 c = 0; c < cols; ++c) {
            if (y[c] == 0) {
              if (gr) gr[c] = 0;
              continue;
            }
            invalid += !(zr[c] > 0);
            value -= static_cast<double>(y[c]) * std::log(static_cast<double>(zr[c]));
            if (gr) gr[c] = static_cast<T>(-static_cast<double>(y[c]) / zr[c]);
          }
          break;
        case Loss::cross_entropy_logits:
          for (i64 e = 0; e < cols / width; ++e) value += softmax_cross_entropy(zr + e * width, y + e * width, width,
                                                                               gr ? gr + e * width : nullptr);
          break;
        case Loss::gaussian_nll:
          for (i64 e = 0; e < cols / width; ++e)
            value += gaussian_nll(zr + e * width, y + e * (width / 2), width / 2, gr ? gr + e * width : nullptr,
                                  invalid);
          break;
      }
      values[r] = static_cast<T>(value);
    }
    return invalid;
  }

 private:
  // Member i's whole sequence (see recurrent); scratch holds the transposed weights, the bias, one step's gates
  // and the LSTM cell state.
  static void recurrent_member(const RecurrentLayer<T>& layer, i64 i, bool transpose, T* scratch) {
    const i64 B = layer.examples, steps = layer.steps, F = layer.features, H = layer.hidden, G = layer.gates();
    const T* w_ih = layer.params + i * layer.params_stride;
    const T* w_hh = w_ih + G * F;
    const T* b_ih = w_hh + G * H;
    const T* b_hh = b_ih + G;
    T* wt_ih = scratch;
    T* wt_hh = wt_ih + (transpose ? F * G : 0);
    T* bias = wt_hh + (transpose ? H * G : 0);
    T* pre = bias + G;
    T* c = pre + B * G;
    if (transpose) {
      for (i64 g = 0; g < G; ++g) {
        for (i64 l = 0; l < F; ++l) wt_ih[l * G + g] = w_ih[g * F + l];
        for (i64 l = 0; l < H; ++l) wt_hh[l * G + g] = w_hh[g * H + l];
      }
    }
    for (i64 g = 0; g < G; ++g) bias[g] = b_ih[g] + b_hh[g];
    if (layer.lstm) {
      if (layer.c0 != nullptr) {
        std::copy(layer.c0 + i * layer.state_in_stride, layer.c0 + i * layer.state_in_stride + B * H, c);
      } else {
        std::fill(c, c + B * H, T{0});
      }
    }
    // C (B x G, ld G) += A (B x k at lda) W^T, W (G x k) as stored or transposed
    const auto accumulate = [&](i64 k, const T* a, i64 lda, const T* w, const T* wt) {
      if (transpose) {
        fast::accumulate_product(B, G, k, a, lda, wt, pre, G);
      } else {
        fast::gemm_tn(G, B, k, T{1}, w, k, a, lda, T{1}, pre, G);
      }
    };
    const T* x = layer.x + i * layer.x_member_stride;
    T* h = layer.h + i * layer.h_member_stride();
    const i64 h_ld = steps * H;
    const T* previous = layer.h0 == nullptr ? nullptr : layer.h0 + i * layer.state_in_stride;
    i64 previous_ld = H;
    for (i64 t = 0; t < steps; ++t) {
      for (i64 b = 0; b < B; ++b) std::copy(bias, bias + G, pre + b * G);
      accumulate(F, x + t * layer.x_ld, layer.x_ld * steps, w_ih, wt_ih);
      if (previous != nullptr) accumulate(H, previous, previous_ld, w_hh, wt_hh);
      T* h_t = h + t * H;
      for (i64 b = 0; b < B; ++b) {
        if (layer.lstm) {
          fast::lstm_cell_row(pre + b * G, H, c + b * H, h_t + b * h_ld);
        } else {
          fast::tanh_row(pre + b * G, H);
          std::copy(pre + b * G, pre + b * G + H, h_t + b * h_ld);
        }
      }
      previous = h_t;
      previous_ld = h_ld;
    }
    if (layer.c_out != nullptr) std::copy(c, c + B * H, layer.c_out + i * layer.c_out_stride);
  }

  // The blocks of fast::convolve_image: for channels [b L, (b + 1) L), their L biases, then W[c, e] at
  // e * L + c % L; zero past the last channel.
  static void block_convolution_weights(const T* w, i64 out_channels, i64 q, T* wt) {
    constexpr i64 kLanes = fast::kConvolutionLanes<T>;
    const i64 blocks = (out_channels + kLanes - 1) / kLanes;
    std::fill_n(wt, blocks * (q + 1) * kLanes, T{0});
    const T* bias = w + out_channels * q;
    for (i64 c = 0; c < out_channels; ++c) {
      T* block = wt + (c / kLanes) * (q + 1) * kLanes + c % kLanes;
      block[0] = bias[c];
      for (i64 e = 0; e < q; ++e) block[(e + 1) * kLanes] = w[c * q + e];
    }
  }

  // The image with a border of `padding` zeros, channel planes one after another.
  static const T* pad_image(const ConvolutionLayer<T>& layer, const T* image, T* plane) {
    const i64 p = layer.padding, plane_w = layer.width + 2 * p, plane_h = layer.height + 2 * p;
    std::fill_n(plane, layer.channels * plane_h * plane_w, T{0});
    for (i64 ch = 0; ch < layer.channels; ++ch)
      for (i64 y = 0; y < layer.height; ++y) {
        const T* source = image + ch * layer.channel_stride + y * layer.width;
        std::copy(source, source + layer.width, plane + (ch * plane_h + y + p) * plane_w + p);
      }
    return plane;
  }

  static void activate(T* row, i64 cols, Activation activation) {
    switch (activation) {
      case Activation::identity: break;
      case Activation::relu:
        fast::relu_row(row, cols);
        break;
      case Activation::tanh:
        fast::tanh_row(row, cols);
        break;
      case Activation::sigmoid:
        fast::sigmoid_row(row, cols);
        break;
      case Activation::heaviside:
        for (i64 c = 0; c < cols; ++c) row[c] = row[c] > T{0} ? T{1} : (row[c] != row[c] ? row[c] : T{0});
        break;
      case Activation::softmax: {
        T largest = -std::numeric_limits<T>::infinity();
        for (i64 c = 0; c < cols; ++c) largest = std::max(largest, row[c]);
        double sum = 0;
        for (i64 c = 0; c < cols; ++c) sum += std::exp(static_cast<double>(row[c] - largest));
        for (i64 c = 0; c < cols; ++c) row[c] = static_cast<T>(std::exp(static_cast<double>(row[c] - largest)) / sum);
        break;
      }
    }
  }

  static i64 count_row_nonfinite(const T* row, i64 cols) {
    i64 count = 0;
    for (i64 c = 0; c < cols; ++c) count += nonfinite(row[c]);
    return count;
  }

  static double softmax_cross_entropy(const T* z, const T* y, i64 width, T* g) {
    double max_z = -std::numeric_limits<double>::infinity(), sum_exp = 0, sum_y = 0;
    for (i64 k = 0; k < width; ++k) max_z = std::max(max_z, static_cast<double>(z[k]));
    for (i64 k = 0; k < width; ++k) sum_exp += std::exp(z[k] - max_z);
    const double log_sum = std::log(sum_exp);
    double value = 0;
    for (i64 k = 0; k < width; ++k) {
      value -= static_cast<double>(y[k]) * (z[k] - max_z - log_sum);
      sum_y += y[k];
    }
    if (g != nullptr)
      for (i64 k = 0; k < width; ++k) g[k] = static_cast<T>(sum_y * std::exp(z[k] - max_z) / sum_exp - y[k]);
    return value;
  }

  static double gaussian_nll(const T* z, const T* y, i64 k, T* g, i64& invalid) {
    constexpr double kTwoPi = 6.283185307179586;
    double value = 0;
    for (i64 i = 0; i < k; ++i) {
      const double mu = z[i], sigma = z[k + i];
      const double w = (static_cast<double>(y[i]) - mu) / sigma;  // sigma^2, sigma^3 would underflow for tiny sigma
      invalid += !(sigma > 0);
      value += 0.5 * std::log(kTwoPi) + std::log(sigma) + 0.5 * w * w;
      if (g != nullptr) {
        g[i] = static_cast<T>(-w / sigma);
        g[k + i] = static_cast<T>((1 - w * w) / sigma);
      }
    }
    return value;
  }

  Workspace& workspace_;
};

class CpuContext final : public BackendContext {
 public:
  CpuContext() : workspace_(allocator_), float_backend_(workspace_), double_backend_(workspace_) {}

  Device device() const override { return {}; }
  void set_stream(void*) override {}
  void* stream() const override { return nullptr; }
  void synchronize() override {}
  std::size_t workspace_bytes() const override { return workspace_.bytes(); }
  void release_workspace() override { workspace_.release(); }
  Backend<float>& backend(float) override { return float_backend_; }
  Backend<double>& backend(double) override { return double_backend_; }

 private:
  CpuAllocator allocator_;
  Workspace workspace_;
  CpuBackend<float> float_backend_;
  CpuBackend<double> double_backend_;
};

}  // namespace

i64 cpu_threads() { return worker_slots(); }

}  // namespace ekinet::detail

namespace ekinet {
std::unique_ptr<Context> make_cpu_context() { return std::make_unique<detail::CpuContext>(); }
}  // namespace ekinet
