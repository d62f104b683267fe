// CUDA backend: cuBLAS/cuSOLVER for the dense algebra, small grid-stride kernels for the element-wise work.
// Everything is queued on the context's stream. Reductions accumulate in double and are deterministic: each
// block writes a partial sum and a second kernel adds the partials in a fixed order (no floating-point atomics).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <memory>
#include <new>
#include <string>

#include "backend.hpp"
#include "ekinet/build_info.hpp"
#include "ekinet/context.hpp"
#include "ekinet/errors.hpp"
#include "ekinet/random.hpp"
#include "fused_network.hpp"
#include "index_math.hpp"
#include "recurrent_steps.hpp"

namespace ekinet::detail {
namespace {

// ---- error checks -------------------------------------------------------------------------------------------

void check(cudaError_t status, const char* call) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that the next launch check does not report it again
  const std::string message =
      std::string(call) + " failed: " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
  if (status == cudaErrorMemoryAllocation) throw OutOfMemory(message);
  throw Error(message);
}

void check(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const std::string message = std::string(call) + " failed with cuBLAS status " +
                              std::to_string(static_cast<int>(status)) + " (" + cublasGetStatusName(status) + ")";
  if (status == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(message);
  throw Error(message);
}

void check(cusolverStatus_t status, const char* call) {
  if (status == CUSOLVER_STATUS_SUCCESS) return;
  const std::string message =
      std::string(call) + " failed with cuSOLVER status " + std::to_string(static_cast<int>(status));
  if (status == CUSOLVER_STATUS_ALLOC_FAILED) throw OutOfMemory(message);
  throw Error(message);
}

int to_int(i64 value, const char* what) {
  if (value < 0 || value > INT_MAX) {
    throw InvalidArgument(std::string("dimension ") + what + " = " + std::to_string(value) +
                          " exceeds the 32-bit cuBLAS/cuSOLVER limit of " + std::to_string(INT_MAX));
  }
  return static_cast<int>(value);
}

// ---- cuBLAS/cuSOLVER routines of one precision, with their names for the error messages -----------------------

template <class F>
struct Routine {
  F function;
  const char* name;
};

template <class F>
constexpr Routine<F> routine(F function, const char* name) {
  return {function, name};
}

#define EKINET_ROUTINE(function) routine(&function, #function)

template <class T>
struct Routines;

template <>
struct Routines<float> {
  static constexpr auto gemm = EKINET_ROUTINE(cublasSgemm);
  static constexpr auto gemm_strided_batched = EKINET_ROUTINE(cublasSgemmStridedBatched);
  static constexpr auto syrk = EKINET_ROUTINE(cublasSsyrk);
  static constexpr auto trsm = EKINET_ROUTINE(cublasStrsm);
  static constexpr auto trmm = EKINET_ROUTINE(cublasStrmm);
  static constexpr auto potrf_buffer_size = EKINET_ROUTINE(cusolverDnSpotrf_bufferSize);
  static constexpr auto potrf = EKINET_ROUTINE(cusolverDnSpotrf);
  static constexpr auto potrs = EKINET_ROUTINE(cusolverDnSpotrs);
  static constexpr auto syevd_buffer_size = EKINET_ROUTINE(cusolverDnSsyevd_bufferSize);
  static constexpr auto syevd = EKINET_ROUTINE(cusolverDnSsyevd);
};

template <>
struct Routines<double> {
  static constexpr auto gemm = EKINET_ROUTINE(cublasDgemm);
  static constexpr auto gemm_strided_batched = EKINET_ROUTINE(cublasDgemmStridedBatched);
  static constexpr auto syrk = EKINET_ROUTINE(cublasDsyrk);
  static constexpr auto trsm = EKINET_ROUTINE(cublasDtrsm);
  static constexpr auto trmm = EKINET_ROUTINE(cublasDtrmm);
  static constexpr auto potrf_buffer_size = EKINET_ROUTINE(cusolverDnDpotrf_bufferSize);
  static constexpr auto potrf = EKINET_ROUTINE(cusolverDnDpotrf);
  static constexpr auto potrs = EKINET_ROUTINE(cusolverDnDpotrs);
  static constexpr auto syevd_buffer_size = EKINET_ROUTINE(cusolverDnDsyevd_bufferSize);
  static constexpr auto syevd = EKINET_ROUTINE(cusolverDnDsyevd);
};

#undef EKINET_ROUTINE

template <class F, class... Args>
void call(const Routine<F>& routine, Args... args) {
  check(routine.function(args...), routine.name);
}

cublasOperation_t operation(Trans trans) { return trans == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N; }

// ---- device and library state ---------------------------------------------------------------------------------

// Makes `device` current for a scope and restores the previous one. Entry points throw when that fails;
// destructors pass std::nothrow and carry on as best they can.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    int current = 0;
    check(cudaGetDevice(&current), "cudaGetDevice");
    if (current != device) {
      check(cudaSetDevice(device), "cudaSetDevice");
      previous_ = current;
    }
  }
  DeviceGuard(int device, std::nothrow_t) noexcept {
    int current = 0;
    if (cudaGetDevice(&current) == cudaSuccess && current != device && cudaSetDevice(device) == cudaSuccess) {
      previous_ = current;
    }
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// The device, stream and library handles that the context's two backends share. The handles are created once
// per context (creating them costs milliseconds) and follow the stream.
class DeviceState {
 public:
  DeviceState(int device, cudaStream_t stream) : device_(device), stream_(stream) {
    const DeviceGuard guard(device);
    check(cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&shared_bytes_per_block_, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
          "cudaDeviceGetAttribute");
    check(cublasCreate(&blas_), "cublasCreate");
    try {
      check(cusolverDnCreate(&solver_), "cusolverDnCreate");
      bind(stream);
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~DeviceState() { destroy(); }
  DeviceState(const DeviceState&) = delete;
  DeviceState& operator=(const DeviceState&) = delete;

  int device() const { return device_; }
  int multiprocessors() const { return multiprocessors_; }
  // The most shared memory one block may have (after opting in above the default 48 KiB).
  int shared_bytes_per_block() const { return shared_bytes_per_block_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  cusolverDnHandle_t solver() const { return solver_; }

  void set_stream(cudaStream_t stream) {
    if (stream == stream_) return;  // Python sets the current stream before every call
    const DeviceGuard guard(device_);
    // Work queued on the old stream may still use the workspace that the new stream is about to reuse. The
    // whole device is synchronised because the old stream may have been destroyed since (a CuPy stream left
    // behind by a `with` block): its handle must not be used, but its queued work still runs.
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    bind(stream);
    stream_ = stream;
  }

 private:
  void bind(cudaStream_t stream) {
    check(cublasSetStream(blas_, stream), "cublasSetStream");
    check(cusolverDnSetStream(solver_, stream), "cusolverDnSetStream");
  }
  void destroy() noexcept {
    const DeviceGuard guard(device_, std::nothrow);
    if (solver_ != nullptr) cusolverDnDestroy(solver_);
    if (blas_ != nullptr) cublasDestroy(blas_);
  }

  int device_;
  int multiprocessors_ = 0, shared_bytes_per_block_ = 0;
  cudaStream_t stream_;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
};

class CudaAllocator final : public Allocator {
 public:
  explicit CudaAllocator(int device) : device_(device) {}

  void* allocate(std::size_t bytes) override {
    const DeviceGuard guard(device_);
    void* pointer = nullptr;
    const cudaError_t status = cudaMalloc(&pointer, bytes);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: clear it so that later calls do not report it
      throw OutOfMemory("could not allocate " + std::to_string(bytes) + " bytes on CUDA device " +
                        std::to_string(device_) + " for the workspace (" + cudaGetErrorString(status) +
                        "); free device memory or reduce the problem size");
    }
    check(status, "cudaMalloc");
    return pointer;
  }

  // Called from the workspace's destructor, so it must not throw. cudaFree synchronises the device first, so a
  // block that queued kernels still use is not freed under them.
  void deallocate(void* pointer) override {
    const DeviceGuard guard(device_, std::nothrow);
    cudaFree(pointer);
  }

 private:
  int device_;
};

// ---- kernels --------------------------------------------------------------------------------------------------

constexpr int kThreads = 256;     // every kernel runs blocks of this size (a multiple of the warp size)
constexpr i64 kMaxBlocks = 2048;  // grid-stride loops cover larger work; a few waves on an A100/H100
constexpr i64 kMaxGridY = 65535;  // CUDA's limit on gridDim.y
constexpr int kWarpSize = 32;

__device__ i64 first_index() { return static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ i64 grid_stride() { return static_cast<i64>(gridDim.x) * blockDim.x; }

__device__ double warp_sum(double value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_down_sync(0xFFFFFFFFu, value, offset);
  return value;
}

// Sum over the block, valid in thread 0. Every thread of the block must call it.
__device__ double block_sum(double value) {
  __shared__ double warp_sums[kThreads / kWarpSize];
  value = warp_sum(value);
  if (threadIdx.x % kWarpSize == 0) warp_sums[threadIdx.x / kWarpSize] = value;
  __syncthreads();
  value = threadIdx.x < kThreads / kWarpSize ? warp_sums[threadIdx.x] : 0.0;
  if (threadIdx.x < kWarpSize) value = warp_sum(value);
  __syncthreads();  // the caller may call again and overwrite warp_sums
  return value;
}

template <class T>
__global__ void column_mean_kernel(i64 rows, i64 cols, const T* a, i64 lda, T* mean) {
  // One thread per column: neighbouring threads read neighbouring entries of each row (coalesced).
  for (i64 c = first_index(); c < cols; c += grid_stride()) {
    double sum = 0;
    for (i64 r = 0; r < rows; ++r) sum += a[r * lda + c];
    mean[c] = static_cast<T>(sum / static_cast<double>(rows));
  }
}

template <class T>
__global__ void axpby_kernel(i64 rows, i64 cols, T alpha, const T* a, i64 lda, T beta, const T* b, i64 ldb, T* out,
                             i64 ldo) {
  for (i64 i = first_index(); i < rows * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    out[r * ldo + c] = alpha * a[r * lda + c] + beta * b[r * ldb + c];
  }
}

template <class T>
__global__ void add_row_vector_kernel(i64 rows, i64 cols, const T* a, i64 lda, T alpha, const T* v, T* out, i64 ldo) {
  for (i64 i = first_index(); i < rows * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    out[r * ldo + c] = a[r * lda + c] + alpha * v[c];
  }
}

template <class T>
__global__ void scale_columns_kernel(i64 rows, i64 cols, T* a, i64 lda, const T* v) {
  for (i64 i = first_index(); i < rows * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    a[r * lda + c] *= v[c];
  }
}

template <class T>
__global__ void residual_kernel(i64 rows, i64 cols, const T* y, const T* eta, i64 ld_eta, const T* g, i64 ldg, T* out,
                                i64 ldo) {
  for (i64 i = first_index(); i < rows * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    const T perturbed = eta != nullptr ? y[c] + eta[r * ld_eta + c] : y[c];
    out[r * ldo + c] = perturbed - g[r * ldg + c];
  }
}

template <class T>
__global__ void gather_rows_kernel(i64 count, i64 cols, const std::int64_t* index, const T* a, i64 lda, T* out,
                                   i64 ldo) {
  for (i64 i = first_index(); i < count * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    out[r * ldo + c] = a[index[r] * lda + c];
  }
}

template <class T>
__global__ void fill_normal_kernel(i64 rows, i64 cols, std::uint64_t key, i64 first_row, double scale,
                                   const T* column_scale, const T* offset, T* out, i64 ldo) {
  for (i64 i = first_index(); i < rows * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    // The same draw index as the CPU backend and the NumPy reference: (first_row + r) * cols + c.
    const std::uint64_t draw =
        static_cast<std::uint64_t>(first_row + r) * static_cast<std::uint64_t>(cols) + static_cast<std::uint64_t>(c);
    double z = scale * standard_normal(key, draw);
    if (column_scale != nullptr) z *= static_cast<double>(column_scale[c]);
    if (offset != nullptr) z += static_cast<double>(offset[c]);
    out[r * ldo + c] = static_cast<T>(z);
  }
}

template <class T>
__global__ void add_diagonal_kernel(i64 n, T* a, i64 lda, T alpha, const T* v) {
  for (i64 i = first_index(); i < n; i += grid_stride()) a[i * lda + i] += alpha * (v != nullptr ? v[i] : T{1});
}

// out = I + A - rowsum(A) 1^T / n from row sums computed beforehand, so out may alias A.
template <class T>
__global__ void fold_centering_kernel(i64 n, const double* row_sum, const T* a, i64 lda, T* out, i64 ldo) {
  for (i64 i = first_index(); i < n * n; i += grid_stride()) {
    const auto [r, c] = divide(i, n);
    const T shift = static_cast<T>(row_sum[r] / static_cast<double>(n));
    out[r * ldo + c] = a[r * lda + c] - shift + (r == c ? T{1} : T{0});
  }
}

// step = sum_of_squares ? h / (sqrt(*sum_of_squares) + eps) : h, read on the device (no host round trip).
template <class T>
__global__ void scale_by_negative_step_kernel(i64 rows, i64 cols, T* a, i64 lda, double h, double eps,
                                              const double* sum_of_squares, T* step) {
  const double norm = sum_of_squares != nullptr ? sqrt(*sum_of_squares) + eps : 0.0;
  const T h_n = static_cast<T>(norm > 0 ? h / norm : h);  // 0 where D = 0 and eps = 0: no update at any step
  if (first_index() == 0) *step = h_n;
  for (i64 i = first_index(); i < rows * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    a[r * lda + c] *= -h_n;
  }
}

template <class T>
__global__ void flag_nonfinite_rows_kernel(i64 rows, i64 cols, const T* a, i64 lda, std::int32_t* flags) {
  for (i64 i = first_index(); i < rows * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    if (!isfinite(a[r * lda + c])) flags[r] = 1;  // every writer stores the same value: no race to resolve
  }
}

struct NonFinite {
  template <class T>
  __device__ static bool test(T value) {
    return !isfinite(value);
  }
};

struct NonPositive {
  template <class T>
  __device__ static bool test(T value) {
    return !(value > 0);  // NaN counts
  }
};

template <class T, class Predicate>
__global__ void count_kernel(i64 rows, i64 cols, const T* a, i64 lda, unsigned long long* counter) {
  unsigned long long count = 0;
  for (i64 i = first_index(); i < rows * cols; i += grid_stride()) {
    const auto [r, c] = divide(i, cols);
    count += Predicate::test(a[r * lda + c]);
  }
  if (count != 0) atomicAdd(counter, count);
}

template <class T>
__global__ void count_asymmetric_kernel(i64 n, const T* a, i64 lda, double tolerance, unsigned long long* counter) {
  unsigned long long count = 0;
  for (i64 i = first_index(); i < n * n; i += grid_stride()) {
    const auto [r, c] = divide(i, n);
    if (r <= c) continue;
    const double bound = tolerance * sqrt(fabs(double(a[r * lda + r]) * double(a[c * lda + c])));
    count += !(fabs(double(a[r * lda + c]) - double(a[c * lda + r])) <= bound);
  }
  if (count != 0) atomicAdd(counter, count);
}

template <class T>
__global__ void divide_rows_clamped_kernel(i64 n, i64 nrhs, const T* w, T floor, T* b, i64 ldb) {
  for (i64 k = first_index(); k < n * nrhs; k += grid_stride()) {
    const auto [c, i] = divide(k, n);
    b[i + c * ldb] /= w[i] < floor ? floor : w[i];  // std::max(w[i], floor), NaN included
  }
}

template <class T>
__global__ void inverse_sqrt_kernel(i64 n, const T* v, T* out) {
  for (i64 i = first_index(); i < n; i += grid_stride()) out[i] = static_cast<T>(1.0 / sqrt(static_cast<double>(v[i])));
}

// ---- batched ensemble networks -------------------------------------------------------------------------------
// Member i's block starts at base + i * member_stride; a member stride of 0 shares one block (the input batch).

template <class T>
__global__ void bias_activation_kernel(i64 batch, i64 rows, i64 cols, T* x, i64 ld, i64 member_stride, const T* bias,
                                       i64 bias_stride, bool bias_per_row, Activation activation) {
  const i64 size = rows * cols;
  for (i64 k = first_index(); k < batch * size; k += grid_stride()) {
    const auto [i, within] = divide(k, size);
    const auto [r, c] = divide(within, cols);
    T& value = x[i * member_stride + r * ld + c];
    const T b = bias != nullptr ? bias[i * bias_stride + (bias_per_row ? r : c)] : T{0};
    value = activate(static_cast<T>(value + b), activation);
  }
}

// One thread per (member, row): rows are short (class scores), so a thread walks its row three times (add the
// bias and find the maximum, sum the exponentials, normalise), the exponentials in double as on the CPU.
template <class T>
__global__ void softmax_kernel(i64 batch, i64 rows, i64 cols, T* x, i64 ld, i64 member_stride, const T* bias,
                               i64 bias_stride, bool bias_per_row) {
  for (i64 k = first_index(); k < batch * rows; k += grid_stride()) {
    const auto [i, r] = divide(k, rows);
    T* row = x + i * member_stride + r * ld;
    const T* b = bias != nullptr ? bias + i * bias_stride : nullptr;
    T max_v = static_cast<T>(-INFINITY);
    for (i64 c = 0; c < cols; ++c) {
      if (b != nullptr) row[c] += b[bias_per_row ? r : c];
      max_v = max_v < row[c] ? row[c] : max_v;  // std::max: a NaN entry still makes the sum (and the row) NaN
    }
    double sum = 0;
    for (i64 c = 0; c < cols; ++c) sum += exp(static_cast<double>(row[c] - max_v));
    for (i64 c = 0; c < cols; ++c) row[c] = static_cast<T>(exp(static_cast<double>(row[c] - max_v)) / sum);
  }
}

template <class T>
__global__ void copy_strided_kernel(i64 batch, i64 rows, i64 cols, const T* in, i64 in_ld, i64 in_member_stride,
                                    T* out, i64 out_ld, i64 out_member_stride) {
  const i64 size = rows * cols;
  for (i64 k = first_index(); k < batch * size; k += grid_stride()) {
    const auto [i, within] = divide(k, size);
    const auto [r, c] = divide(within, cols);
    out[i * out_member_stride + r * out_ld + c] = in[i * in_member_stride + r * in_ld + c];
  }
}

template <class T>
__global__ void fill_strided_kernel(i64 batch, i64 rows, i64 cols, T value, T* out, i64 ld, i64 member_stride) {
  const i64 size = rows * cols;
  for (i64 k = first_index(); k < batch * size; k += grid_stride()) {
    const auto [i, within] = divide(k, size);
    const auto [r, c] = divide(within, cols);
    out[i * member_stride + r * ld + c] = value;
  }
}

// One thread per entry of the patch matrices, q fastest so that neighbouring threads write neighbouring entries.
template <class T>
__global__ void im2col_kernel(i64 batch, i64 images, i64 channels, i64 height, i64 width, const T* in,
                              i64 channel_stride, i64 image_stride, i64 member_stride, i64 kernel, i64 stride,
                              i64 padding, i64 out_h, i64 out_w, T* cols, i64 cols_member_stride) {
  const i64 q_size = channels * kernel * kernel, pixels = out_h * out_w, size = q_size * images * pixels;
  for (i64 k = first_index(); k < batch * size; k += grid_stride()) {
    const auto [i, within] = divide(k, size);
    const auto [column, q] = divide(within, q_size);  // column = n * pixels + oy * out_w + ox
    const auto [n, pixel] = divide(column, pixels);
    const auto [oy, ox] = divide(pixel, out_w);
    const auto [ch, tap] = divide(q, kernel * kernel);
    const auto [ky, kx] = divide(tap, kernel);
    const i64 iy = oy * stride - padding + ky, ix = ox * stride - padding + kx;
    const bool inside = iy >= 0 && iy < height && ix >= 0 && ix < width;
    cols[i * cols_member_stride + within] =
        inside ? in[i * member_stride + ch * channel_stride + n * image_stride + iy * width + ix] : T{0};
  }
}

// One thread per output entry (c, n, oy, ox) of each member, CNHW on both sides.
template <class T>
__global__ void maxpool2d_kernel(i64 batch, i64 channels, i64 images, i64 height, i64 width, const T* in,
                                 i64 in_member_stride, i64 kernel, i64 stride, i64 out_h, i64 out_w, T* out,
                                 i64 out_member_stride) {
  const i64 pixels = out_h * out_w, size = channels * images * pixels;
  for (i64 k = first_index(); k < batch * size; k += grid_stride()) {
    const auto [i, within] = divide(k, size);
    const auto [cn, pixel] = divide(within, pixels);  // cn = c * images + n
    const auto [oy, ox] = divide(pixel, out_w);
    const T* window = in + i * in_member_stride + cn * height * width + oy * stride * width + ox * stride;
    T max_v = static_cast<T>(-INFINITY);
    for (i64 ky = 0; ky < kernel; ++ky) {
      for (i64 kx = 0; kx < kernel; ++kx) {
        const T v = window[ky * width + kx];
        if (v != v || v > max_v) max_v = v;  // once NaN, nothing compares greater: a failed member stays NaN
      }
    }
    out[i * out_member_stride + within] = max_v;
  }
}

// One thread per output entry: out_i[n, (c, p)] = in_i[c, (n, p)].
template <class T>
__global__ void channels_to_rows_kernel(i64 batch, i64 channels, i64 images, i64 pixels, const T* in,
                                        i64 in_member_stride, T* out, i64 out_member_stride) {
  const i64 row = channels * pixels, size = images * row;
  for (i64 k = first_index(); k < batch * size; k += grid_stride()) {
    const auto [i, within] = divide(k, size);
    const auto [n, in_row] = divide(within, row);
    const auto [c, p] = divide(in_row, pixels);
    out[i * out_member_stride + within] = in[i * in_member_stride + c * images * pixels + n * pixels + p];
  }
}

// One thread per (member, row, unit); gates are pre-activations in PyTorch's order i, f, g, o.
template <class T>
__global__ void lstm_cell_kernel(i64 batch, i64 rows, i64 hidden, const T* gates, i64 gates_ld,
                                 i64 gates_member_stride, T* c, i64 c_member_stride, T* h, i64 h_ld,
                                 i64 h_member_stride) {
  const i64 size = rows * hidden;
  for (i64 k = first_index(); k < batch * size; k += grid_stride()) {
    const auto [i, within] = divide(k, size);
    const auto [r, u] = divide(within, hidden);
    const T* g = gates + i * gates_member_stride + r * gates_ld;
    const T input = sigmoid(g[u]), forget = sigmoid(g[hidden + u]), cell = tanh(g[2 * hidden + u]),
            output = sigmoid(g[3 * hidden + u]);
    T& state = c[i * c_member_stride + r * hidden + u];
    state = forget * state + input * cell;
    h[i * h_member_stride + r * h_ld + u] = output * tanh(state);
  }
}

// ---- whole small networks (fused_network.hpp) -------------------------------------------------------------------

struct BlockTeam {
  __device__ int rank() const { return static_cast<int>(threadIdx.x); }
  __device__ int size() const { return static_cast<int>(blockDim.x); }
  __device__ void sync() const { __syncthreads(); }
};

// Each block runs (member, example) items first .. first + per_block - 1 in member-major order, loading a
// member's parameters into shared memory when its items begin, so most blocks load one or two members.
template <class T>
__global__ void fused_network_kernel(FusedPlan plan, i64 members, i64 examples, i64 per_block, const T* u, i64 ldu,
                                     const T* x, i64 ldx, T* g, i64 ldg, const T* state_in, i64 state_in_ld,
                                     T* state_out, i64 state_out_ld) {
  extern __shared__ double shared_memory[];  // declared double so that it is aligned for either precision
  T* parameters = reinterpret_cast<T*>(shared_memory);
  T* const buffers[3] = {parameters + plan.parameter_count, parameters + plan.parameter_count + plan.buffer_size[0],
                         parameters + plan.parameter_count + plan.buffer_size[0] + plan.buffer_size[1]};
  const BlockTeam team;
  const i64 first = static_cast<i64>(blockIdx.x) * per_block;
  const i64 end = first + per_block < members * examples ? first + per_block : members * examples;
  i64 loaded = -1;
  for (i64 item = first; item < end; ++item) {
    const auto [member, example] = divide(item, examples);
    if (member != loaded) {  // the previous item ended with a barrier: nobody reads the old parameters
      for (i64 k = threadIdx.x; k < plan.parameter_count; k += blockDim.x) parameters[k] = u[member * ldu + k];
      __syncthreads();
      loaded = member;
    }
    fused_forward(plan, parameters, x + example * ldx, buffers, g + member * ldg + example * plan.output_size,
                  state_in != nullptr ? state_in + member * state_in_ld : nullptr,
                  state_out != nullptr ? state_out + member * state_out_ld : nullptr, examples, example, team);
  }
}

// ---- row reductions ------------------------------------------------------------------------------------------
// sum over units u of term(row, u, invalid) for each row, in double. blockIdx.y walks the rows and blockIdx.x
// splits a row across blocks, so a few long rows still fill the GPU; each block writes one partial per row.
// term may count invalid entries (the losses); the kernel adds each thread's count once.

template <class Term>
__global__ void partial_row_sums_kernel(i64 rows, i64 units, Term term, double* partials,
                                        unsigned long long* invalid_count) {
  unsigned long long invalid = 0;
  for (i64 r = blockIdx.y; r < rows; r += gridDim.y) {
    double sum = 0;
    for (i64 u = first_index(); u < units; u += grid_stride()) sum += term(r, u, invalid);
    sum = block_sum(sum);
    if (threadIdx.x == 0) partials[r * gridDim.x + blockIdx.x] = sum;
  }
  if (invalid != 0) atomicAdd(invalid_count, invalid);
}

// One block per row adds its partials in a fixed order (deterministic).
template <class Out>
__global__ void finish_row_sums_kernel(i64 rows, i64 parts, const double* partials, Out* out) {
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    double sum = 0;
    for (i64 p = threadIdx.x; p < parts; p += blockDim.x) sum += partials[r * parts + p];
    sum = block_sum(sum);
    if (threadIdx.x == 0) out[r] = static_cast<Out>(sum);
  }
}

// Terms of the reductions: unit u of row r.
template <class T>
struct RowEntry {  // A[r, u]
  const T* a;
  i64 lda;
  __device__ double operator()(i64 r, i64 u, unsigned long long&) const { return a[r * lda + u]; }
};

template <class T>
struct RowProduct {  // A[r, u] B[r, u]
  const T* a;
  i64 lda;
  const T* b;
  i64 ldb;
  __device__ double operator()(i64 r, i64 u, unsigned long long&) const {
    return static_cast<double>(a[r * lda + u]) * b[r * ldb + u];
  }
};

template <class T>
struct DiagonalEntry {  // A[u, u] (one row)
  const T* a;
  i64 lda;
  __device__ double operator()(i64, i64 u, unsigned long long&) const { return a[u * lda + u]; }
};

template <class T>
struct CentredSquare {  // (A[i, c] - mean[c])^2 over the flattened matrix (one row); mean nullable
  const T* a;
  i64 lda;
  i64 cols;
  const T* mean;
  __device__ double operator()(i64, i64 u, unsigned long long&) const {
    const auto [r, c] = divide(u, cols);
    const double d = static_cast<double>(a[r * lda + c]) - (mean != nullptr ? static_cast<double>(mean[c]) : 0.0);
    return d * d;
  }
};

// ---- losses: the same terms as the CPU backend, the gradient written on the way when grad != nullptr ----------

template <class T>
struct SquaredLoss {  // unit: one output
  const T* z;
  i64 ldz;
  const T* y;
  const T* inverse_variance;
  double scalar_inverse_variance;
  T* grad;
  i64 ldg;
  __device__ double operator()(i64 r, i64 c, unsigned long long&) const {
    const double iv = inverse_variance != nullptr ? static_cast<double>(inverse_variance[c]) : scalar_inverse_variance;
    const double d = static_cast<double>(z[r * ldz + c]) - y[c];
    if (grad != nullptr) grad[r * ldg + c] = static_cast<T>(d * iv);
    return 0.5 * d * d * iv;
  }
};

template <class T>
struct CrossEntropyLoss {  // unit: one output
  const T* z;
  i64 ldz;
  const T* y;
  T* grad;
  i64 ldg;
  __device__ double operator()(i64 r, i64 c, unsigned long long& invalid) const {
    const double target = y[c];
    if (target == 0) {
      if (grad != nullptr) grad[r * ldg + c] = T{0};
      return 0.0;
    }
    const double p = z[r * ldz + c];
    invalid += !(p > 0);
    if (grad != nullptr) grad[r * ldg + c] = static_cast<T>(-target / p);
    return -target * log(p);
  }
};

template <class T>
struct SoftmaxCrossEntropyLoss {  // unit: one example of `width` logits
  const T* z;
  i64 ldz;
  const T* y;
  i64 width;
  T* grad;
  i64 ldg;
  __device__ double operator()(i64 r, i64 e, unsigned long long&) const {
    const T* logits = z + r * ldz + e * width;
    const T* target = y + e * width;
    double max_z = -INFINITY, sum_exp = 0, sum_y = 0, value = 0;
    for (i64 k = 0; k < width; ++k) {
      const double v = logits[k];
      max_z = max_z < v ? v : max_z;  // std::max: a NaN logit never becomes the maximum
    }
    for (i64 k = 0; k < width; ++k) sum_exp += exp(logits[k] - max_z);
    const double log_sum = log(sum_exp);
    for (i64 k = 0; k < width; ++k) {
      value -= static_cast<double>(target[k]) * (logits[k] - max_z - log_sum);
      sum_y += target[k];
    }
    if (grad != nullptr) {
      T* g = grad + r * ldg + e * width;
      for (i64 k = 0; k < width; ++k) g[k] = static_cast<T>(sum_y * exp(logits[k] - max_z) / sum_exp - target[k]);
    }
    return value;
  }
};

template <class T>
struct GaussianNllLoss {  // unit: one example, z = [mu_1..mu_k, sigma_1..sigma_k], y = [t_1..t_k]
  const T* z;
  i64 ldz;
  const T* y;
  i64 width;
  T* grad;
  i64 ldg;
  __device__ double operator()(i64 r, i64 e, unsigned long long& invalid) const {
    constexpr double kTwoPi = 6.283185307179586;
    const i64 k = width / 2;
    const T* out = z + r * ldz + e * width;
    const T* target = y + e * k;
    double value = 0;
    for (i64 i = 0; i < k; ++i) {
      const double mu = out[i], sigma = out[k + i];
      const double w = (static_cast<double>(target[i]) - mu) / sigma;  // sigma^2, sigma^3 would underflow
      invalid += !(sigma > 0);
      value += 0.5 * log(kTwoPi) + log(sigma) + 0.5 * w * w;
      if (grad != nullptr) {
        T* g = grad + r * ldg + e * width;
        g[i] = static_cast<T>(-w / sigma);
        g[k + i] = static_cast<T>((1 - w * w) / sigma);
      }
    }
    return value;
  }
};

// ---- the backend ------------------------------------------------------------------------------------------------

template <class T>
class CudaBackend final : public Backend<T> {
 public:
  CudaBackend(const DeviceState& state, Workspace& workspace) : state_(state), workspace_(workspace) {}

  Device device() const override { return {DeviceKind::cuda, state_.device()}; }
  Workspace& workspace() override { return workspace_; }

  void copy_to_host(void* host, const void* source, std::size_t bytes) override {
    const DeviceGuard guard(state_.device());
    if (bytes > 0) check(cudaMemcpyAsync(host, source, bytes, cudaMemcpyDeviceToHost, stream()), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  }

  void copy_from_host(void* target, const void* host, std::size_t bytes) override {
    const DeviceGuard guard(state_.device());
    if (bytes > 0) check(cudaMemcpyAsync(target, host, bytes, cudaMemcpyHostToDevice, stream()), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");  // the caller may reuse host at once
  }

  double read_scalar(const T* value) override { return static_cast<double>(read_back(value)); }

  // ---- dense linear algebra ------------------------------------------------------------------------------------

  void gemm(Trans trans_a, Trans trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda, const T* b, i64 ldb,
            T beta, T* c, i64 ldc) override {
    if (m == 0 || n == 0) return;
    const DeviceGuard guard(state_.device());
    call(Routines<T>::gemm, state_.blas(), operation(trans_a), operation(trans_b), to_int(m, "m"), to_int(n, "n"),
         to_int(k, "k"), &alpha, a, to_int(std::max<i64>(lda, 1), "lda"), b, to_int(std::max<i64>(ldb, 1), "ldb"),
         &beta, c, to_int(std::max<i64>(ldc, 1), "ldc"));
  }

  // The H200 ran the J = 100, M = 10^4 ensemble update at 0.4x PyTorch's formula, which forms the J x J product
  // by GEMM; SYRK, like CPU BLAS's, is known to lag GEMM when the inner dimension is much longer than the
  // product, which GEMM splits across the device. So there GEMM computes both triangles (twice the flops;
  // the upper triangle is written too).
  void syrk_lower(Trans trans, i64 n, i64 k, T alpha, const T* a, i64 lda, T beta, T* c, i64 ldc) override {
    constexpr i64 kGemmFromRatio = 8;  // k / n from which GEMM is used (not tuned: not yet timed on a GPU)
    if (n == 0) return;
    if (k >= kGemmFromRatio * n) {
      gemm(trans, trans == Trans::yes ? Trans::no : Trans::yes, n, n, k, alpha, a, lda, a, lda, beta, c, ldc);
      return;
    }
    const DeviceGuard guard(state_.device());
    call(Routines<T>::syrk, state_.blas(), CUBLAS_FILL_MODE_LOWER, operation(trans), to_int(n, "n"), to_int(k, "k"),
         &alpha, a, to_int(std::max<i64>(lda, 1), "lda"), &beta, c, to_int(ldc, "ldc"));
  }

  void trsm_left_lower(Trans trans, i64 m, i64 n, const T* l, i64 ldl, T* b, i64 ldb) override {
    if (m == 0 || n == 0) return;
    const DeviceGuard guard(state_.device());
    const T one = 1;
    call(Routines<T>::trsm, state_.blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, operation(trans),
         CUBLAS_DIAG_NON_UNIT, to_int(m, "m"), to_int(n, "n"), &one, l, to_int(ldl, "ldl"), b, to_int(ldb, "ldb"));
  }

  void trmm_left_lower(i64 m, i64 n, const T* l, i64 ldl, T* b, i64 ldb) override {
    if (m == 0 || n == 0) return;
    const DeviceGuard guard(state_.device());
    const T one = 1;
    const int ildb = to_int(ldb, "ldb");
    // cuBLAS's trmm writes C = L B out of place; C == B with ldc == ldb is its documented in-place form.
    call(Routines<T>::trmm, state_.blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT,
         to_int(m, "m"), to_int(n, "n"), &one, l, to_int(ldl, "ldl"), b, ildb, b, ildb);
  }

  i64 potrf_lower(i64 n, T* a, i64 lda) override {
    if (n == 0) return 0;
    const DeviceGuard guard(state_.device());
    const int in = to_int(n, "n"), ilda = to_int(lda, "lda");
    int lwork = 0;
    call(Routines<T>::potrf_buffer_size, state_.solver(), CUBLAS_FILL_MODE_LOWER, in, a, ilda, &lwork);
    T* work = workspace_.take<T>(lwork);
    int* info = workspace_.take<int>(1);
    call(Routines<T>::potrf, state_.solver(), CUBLAS_FILL_MODE_LOWER, in, a, ilda, work, lwork, info);
    return read_back(info);
  }

  void potrs_lower(i64 n, i64 nrhs, const T* l, i64 ldl, T* b, i64 ldb) override {
    if (n == 0 || nrhs == 0) return;
    const DeviceGuard guard(state_.device());
    // info only reports invalid arguments, which to_int and the call's status already cover: left unread so
    // that the solve stays asynchronous.
    int* info = workspace_.take<int>(1);
    call(Routines<T>::potrs, state_.solver(), CUBLAS_FILL_MODE_LOWER, to_int(n, "n"), to_int(nrhs, "nrhs"), l,
         to_int(ldl, "ldl"), b, to_int(ldb, "ldb"), info);
  }

  i64 syevd_lower(i64 n, T* a, i64 lda, T* w) override {
    if (n == 0) return 0;
    const DeviceGuard guard(state_.device());
    const int in = to_int(n, "n"), ilda = to_int(lda, "lda");
    int lwork = 0;
    call(Routines<T>::syevd_buffer_size, state_.solver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, in, a, ilda,
         w, &lwork);
    T* work = workspace_.take<T>(lwork);
    int* info = workspace_.take<int>(1);
    call(Routines<T>::syevd, state_.solver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, in, a, ilda, w, work,
         lwork, info);
    return read_back(info);
  }

  // ---- element-wise kernels ------------------------------------------------------------------------------------

  void column_mean(i64 rows, i64 cols, const T* a, i64 lda, T* mean) override {
    const DeviceGuard guard(state_.device());
    launch("column_mean_kernel", cols, column_mean_kernel<T>, rows, cols, a, lda, mean);
  }

  void axpby(i64 rows, i64 cols, T alpha, const T* a, i64 lda, T beta, const T* b, i64 ldb, T* out, i64 ldo) override {
    const DeviceGuard guard(state_.device());
    launch("axpby_kernel", rows * cols, axpby_kernel<T>, rows, cols, alpha, a, lda, beta, b, ldb, out, ldo);
  }

  void add_row_vector(i64 rows, i64 cols, const T* a, i64 lda, T alpha, const T* v, T* out, i64 ldo) override {
    const DeviceGuard guard(state_.device());
    launch("add_row_vector_kernel", rows * cols, add_row_vector_kernel<T>, rows, cols, a, lda, alpha, v, out, ldo);
  }

  void scale_columns(i64 rows, i64 cols, T* a, i64 lda, const T* v) override {
    const DeviceGuard guard(state_.device());
    launch("scale_columns_kernel", rows * cols, scale_columns_kernel<T>, rows, cols, a, lda, v);
  }

  void residual(i64 rows, i64 cols, const T* y, const T* eta, i64 ld_eta, const T* g, i64 ldg, T* out,
                i64 ldo) override {
    const DeviceGuard guard(state_.device());
    launch("residual_kernel", rows * cols, residual_kernel<T>, rows, cols, y, eta, ld_eta, g, ldg, out, ldo);
  }

  void gather_rows(i64 count, i64 cols, const std::int64_t* index, const T* a, i64 lda, T* out, i64 ldo) override {
    const DeviceGuard guard(state_.device());
    launch("gather_rows_kernel", count * cols, gather_rows_kernel<T>, count, cols, index, a, lda, out, ldo);
  }

  void fill_normal(i64 rows, i64 cols, std::uint64_t key, i64 first_row, double scale, const T* column_scale,
                   const T* offset, T* out, i64 ldo) override {
    const DeviceGuard guard(state_.device());
    launch("fill_normal_kernel", rows * cols, fill_normal_kernel<T>, rows, cols, key, first_row, scale, column_scale,
           offset, out, ldo);
  }

  void add_diagonal(i64 n, T* a, i64 lda, T alpha, const T* v) override {
    const DeviceGuard guard(state_.device());
    launch("add_diagonal_kernel", n, add_diagonal_kernel<T>, n, a, lda, alpha, v);
  }

  void fold_centering(i64 n, const T* a, i64 lda, T* out, i64 ldo) override {
    if (n == 0) return;
    const DeviceGuard guard(state_.device());
    double* row_sum = workspace_.take<double>(n);
    row_sums(n, n, RowEntry<T>{a, lda}, row_sum);
    launch("fold_centering_kernel", n * n, fold_centering_kernel<T>, n, row_sum, a, lda, out, ldo);
  }

  void scale_by_negative_step(i64 rows, i64 cols, T* a, i64 lda, double h, double eps, bool adaptive,
                              T* step) override {
    const DeviceGuard guard(state_.device());
    double* sum_of_squares = nullptr;
    if (adaptive) {
      sum_of_squares = workspace_.take<double>(1);
      row_sums(1, rows * cols, CentredSquare<T>{a, lda, cols, nullptr}, sum_of_squares);
    }
    // At least one thread: *step is written even when A is empty.
    launch("scale_by_negative_step_kernel", std::max<i64>(rows * cols, 1), scale_by_negative_step_kernel<T>, rows, cols,
           a, lda, h, eps, sum_of_squares, step);
  }

  void flag_nonfinite_rows(i64 rows, i64 cols, const T* a, i64 lda, std::int32_t* flags) override {
    const DeviceGuard guard(state_.device());
    launch("flag_nonfinite_rows_kernel", rows * cols, flag_nonfinite_rows_kernel<T>, rows, cols, a, lda, flags);
  }

  i64 count_nonfinite(i64 rows, i64 cols, const T* a, i64 lda) override { return count<NonFinite>(rows, cols, a, lda); }

  i64 count_nonpositive(i64 rows, i64 cols, const T* a, i64 lda) override {
    return count<NonPositive>(rows, cols, a, lda);
  }

  i64 count_asymmetric(i64 n, const T* a, i64 lda, double tolerance) override {
    if (n == 0) return 0;
    const DeviceGuard guard(state_.device());
    auto* counter = workspace_.take<unsigned long long>(1);
    zero(counter, sizeof *counter);
    launch("count_asymmetric_kernel", n * n, count_asymmetric_kernel<T>, n, a, lda, tolerance, counter);
    return static_cast<i64>(read_back(counter));
  }

  double mean_diagonal(i64 n, const T* a, i64 lda) override {
    const DeviceGuard guard(state_.device());
    double* sum = workspace_.take<double>(1);
    row_sums(1, n, DiagonalEntry<T>{a, lda}, sum);
    return read_back(sum) / static_cast<double>(n);
  }

  double centred_sum_of_squares(i64 rows, i64 cols, const T* a, i64 lda, const T* mean) override {
    const DeviceGuard guard(state_.device());
    double* sum = workspace_.take<double>(1);
    row_sums(1, rows * cols, CentredSquare<T>{a, lda, cols, mean}, sum);
    return read_back(sum);
  }

  void divide_rows_clamped(i64 n, i64 nrhs, const T* w, T floor, T* b, i64 ldb) override {
    const DeviceGuard guard(state_.device());
    launch("divide_rows_clamped_kernel", n * nrhs, divide_rows_clamped_kernel<T>, n, nrhs, w, floor, b, ldb);
  }

  void row_dots(i64 rows, i64 cols, const T* a, i64 lda, const T* b, i64 ldb, T* out) override {
    const DeviceGuard guard(state_.device());
    row_sums(rows, cols, RowProduct<T>{a, lda, b, ldb}, out);
  }

  void inverse_sqrt(i64 n, const T* v, T* out) override {
    const DeviceGuard guard(state_.device());
    launch("inverse_sqrt_kernel", n, inverse_sqrt_kernel<T>, n, v, out);
  }

  // ---- batched ensemble networks ------------------------------------------------------------------------------

  void gemm_strided_batched(Trans trans_a, Trans trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda,
                            i64 stride_a, const T* b, i64 ldb, i64 stride_b, T beta, T* c, i64 ldc, i64 stride_c,
                            i64 batch) override {
    if (m == 0 || n == 0 || batch == 0) return;
    const DeviceGuard guard(state_.device());
    // A stride of 0 makes every batch entry read the same matrix, which cuBLAS allows.
    call(Routines<T>::gemm_strided_batched, state_.blas(), operation(trans_a), operation(trans_b), to_int(m, "m"),
         to_int(n, "n"), to_int(k, "k"), &alpha, a, to_int(std::max<i64>(lda, 1), "lda"),
         static_cast<long long int>(stride_a), b, to_int(std::max<i64>(ldb, 1), "ldb"),
         static_cast<long long int>(stride_b), &beta, c, to_int(std::max<i64>(ldc, 1), "ldc"),
         static_cast<long long int>(stride_c), to_int(batch, "batch"));
  }

  void bias_activation(i64 batch, i64 rows, i64 cols, T* x, i64 ld, i64 member_stride, const T* bias, i64 bias_stride,
                       bool bias_per_row, Activation activation) override {
    const DeviceGuard guard(state_.device());
    if (activation == Activation::softmax) {
      launch("softmax_kernel", batch * rows, softmax_kernel<T>, batch, rows, cols, x, ld, member_stride, bias,
             bias_stride, bias_per_row);
    } else {
      launch("bias_activation_kernel", batch * rows * cols, bias_activation_kernel<T>, batch, rows, cols, x, ld,
             member_stride, bias, bias_stride, bias_per_row, activation);
    }
  }

  void copy_strided(i64 batch, i64 rows, i64 cols, const T* in, i64 in_ld, i64 in_member_stride, T* out, i64 out_ld,
                    i64 out_member_stride) override {
    const DeviceGuard guard(state_.device());
    launch("copy_strided_kernel", batch * rows * cols, copy_strided_kernel<T>, batch, rows, cols, in, in_ld,
           in_member_stride, out, out_ld, out_member_stride);
  }

  void fill_strided(i64 batch, i64 rows, i64 cols, T value, T* out, i64 ld, i64 member_stride) override {
    const DeviceGuard guard(state_.device());
    launch("fill_strided_kernel", batch * rows * cols, fill_strided_kernel<T>, batch, rows, cols, value, out, ld,
           member_stride);
  }

  // Patches (Q x N, N = images * out pixels; once for a shared input) and one batched GEMM over the members,
  // column-major C (N x out_channels) = patches^T W^T: the CNHW output; then the pooling, if any.
  void conv2d(const ConvolutionLayer<T>& layer) override {
    const DeviceGuard guard(state_.device());
    const bool shared = layer.in_member_stride == 0, pooled = layer.pool_kernel > 0;
    const i64 q = layer.patch_size(), n = layer.images * layer.out_h * layer.out_w;
    const i64 blocks = shared ? 1 : layer.members, conv_stride = layer.out_channels * n;
    T* patches = workspace_.take<T>(blocks * q * n);
    launch("im2col_kernel", blocks * q * n, im2col_kernel<T>, blocks, layer.images, layer.channels, layer.height,
           layer.width, layer.in, layer.channel_stride, layer.image_stride, layer.in_member_stride, layer.kernel,
           layer.stride, layer.padding, layer.out_h, layer.out_w, patches, q * n);
    T* conv = pooled ? workspace_.take<T>(layer.members * conv_stride) : layer.out;
    gemm_strided_batched(Trans::yes, Trans::no, n, layer.out_channels, q, T{1}, patches, q, shared ? 0 : q * n,
                         layer.params, q, layer.params_stride, T{0}, conv, n, conv_stride, layer.members);
    bias_activation(layer.members, layer.out_channels, n, conv, n, conv_stride, layer.params + layer.out_channels * q,
                    layer.params_stride, true, layer.activation);
    if (pooled) {
      maxpool2d(layer.members, layer.out_channels, layer.images, layer.out_h, layer.out_w, conv, conv_stride,
                layer.pool_kernel, layer.pool_stride, layer.result_h(), layer.result_w(), layer.out,
                layer.out_member_stride());
    }
  }

  void maxpool2d(i64 batch, i64 channels, i64 images, i64 height, i64 width, const T* in, i64 in_member_stride,
                 i64 kernel, i64 stride, i64 out_h, i64 out_w, T* out, i64 out_member_stride) override {
    const DeviceGuard guard(state_.device());
    launch("maxpool2d_kernel", batch * channels * images * out_h * out_w, maxpool2d_kernel<T>, batch, channels, images,
           height, width, in, in_member_stride, kernel, stride, out_h, out_w, out, out_member_stride);
  }

  void channels_to_rows(i64 batch, i64 channels, i64 images, i64 pixels, const T* in, i64 in_member_stride, T* out,
                        i64 out_member_stride) override {
    const DeviceGuard guard(state_.device());
    launch("channels_to_rows_kernel", batch * channels * images * pixels, channels_to_rows_kernel<T>, batch, channels,
           images, pixels, in, in_member_stride, out, out_member_stride);
  }

  void lstm_cell(i64 batch, i64 rows, i64 hidden, const T* gates, i64 gates_ld, i64 gates_member_stride, T* c,
                 i64 c_member_stride, T* h, i64 h_ld, i64 h_member_stride) override {
    const DeviceGuard guard(state_.device());
    launch("lstm_cell_kernel", batch * rows * hidden, lstm_cell_kernel<T>, batch, rows, hidden, gates, gates_ld,
           gates_member_stride, c, c_member_stride, h, h_ld, h_member_stride);
  }

  void recurrent(const RecurrentLayer<T>& layer) override { recurrent_by_steps(*this, layer); }

  bool fused_forward(const FusedPlan& plan, i64 members, i64 examples, const T* u, i64 ldu, const T* x, i64 ldx,
                     T* g, i64 ldg, const T* state_in, i64 state_in_ld, T* state_out, i64 state_out_ld) override {
    constexpr i64 kWaves = 4;  // blocks per resident block slot: evens out the members' uneven finishing times
    if (members * examples == 0) return true;
    const std::size_t bytes = plan.shared_bytes<T>();
    if (bytes > static_cast<std::size_t>(state_.shared_bytes_per_block())) return false;
    const DeviceGuard guard(state_.device());
    const auto kernel = fused_network_kernel<T>;
    if (bytes != fused_bytes_) {  // the online drivers call this per observation: set up once per network size
      // The device's whole allowance rather than `bytes`: the attribute belongs to the kernel, shared by every
      // context in the process, and one that lowered it would break another's larger network.
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 state_.shared_bytes_per_block()),
            "cudaFuncSetAttribute");
      check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fused_resident_, kernel, kThreads, bytes),
            "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      fused_bytes_ = bytes;
    }
    if (fused_resident_ == 0) return false;
    const i64 items = members * examples;
    const i64 slots = kWaves * fused_resident_ * state_.multiprocessors();
    const i64 per_block = (items + slots - 1) / slots, blocks = (items + per_block - 1) / per_block;
    kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, stream()>>>(
        plan, members, examples, per_block, u, ldu, x, ldx, g, ldg, state_in, state_in_ld, state_out, state_out_ld);
    check(cudaGetLastError(), "fused_network_kernel");
    return true;
  }

  i64 loss_gradient(Loss loss, i64 rows, i64 cols, i64 width, const T* z, i64 ldz, const T* y,
                    const T* inverse_variance, double scalar_inverse_variance, T* values, T* grad, i64 ldg) override {
    const DeviceGuard guard(state_.device());
    auto* invalid = workspace_.take<unsigned long long>(1);
    zero(invalid, sizeof *invalid);
    switch (loss) {
      case Loss::squared:
        row_sums(rows, cols, SquaredLoss<T>{z, ldz, y, inverse_variance, scalar_inverse_variance, grad, ldg}, values,
                 invalid);
        break;
      case Loss::cross_entropy:
        row_sums(rows, cols, CrossEntropyLoss<T>{z, ldz, y, grad, ldg}, values, invalid);
        break;
      case Loss::cross_entropy_logits:
        row_sums(rows, cols / width, SoftmaxCrossEntropyLoss<T>{z, ldz, y, width, grad, ldg}, values, invalid);
        break;
      case Loss::gaussian_nll:
        row_sums(rows, cols / width, GaussianNllLoss<T>{z, ldz, y, width, grad, ldg}, values, invalid);
        break;
    }
    return static_cast<i64>(read_back(invalid));
  }

 private:
  cudaStream_t stream() const { return state_.stream(); }

  // The callers below hold a DeviceGuard.

  template <class V>
  V read_back(const V* value) {
    V host{};
    copy_to_host(&host, value, sizeof(V));
    return host;
  }

  void zero(void* pointer, std::size_t bytes) {
    check(cudaMemsetAsync(pointer, 0, bytes, stream()), "cudaMemsetAsync");
  }

  // Launches a grid-stride kernel sized for `work` items (nothing to do when work == 0).
  template <class... Params, class... Args>
  void launch(const char* name, i64 work, void (*kernel)(Params...), Args... args) {
    if (work <= 0) return;
    const auto blocks = static_cast<unsigned>(std::min<i64>((work + kThreads - 1) / kThreads, kMaxBlocks));
    kernel<<<blocks, kThreads, 0, stream()>>>(args...);
    check(cudaGetLastError(), name);
  }

  // out[r] = sum over units of term(r, u) (see partial_row_sums_kernel); out[r] = 0 for rows without units.
  template <class Out, class Term>
  void row_sums(i64 rows, i64 units, const Term& term, Out* out, unsigned long long* invalid = nullptr) {
    if (rows <= 0) return;
    const i64 grid_rows = std::min(rows, kMaxGridY);
    const i64 parts = std::clamp<i64>((units + kThreads - 1) / kThreads, 1, std::max<i64>(1, kMaxBlocks / grid_rows));
    double* partials = workspace_.take<double>(rows * parts);
    const dim3 grid(static_cast<unsigned>(parts), static_cast<unsigned>(grid_rows));
    partial_row_sums_kernel<<<grid, kThreads, 0, stream()>>>(rows, units, term, partials, invalid);
    check(cudaGetLastError(), "partial_row_sums_kernel");
    const auto finish_blocks = static_cast<unsigned>(std::min(rows, kMaxBlocks));
    finish_row_sums_kernel<<<finish_blocks, kThreads, 0, stream()>>>(rows, parts, partials, out);
    check(cudaGetLastError(), "finish_row_sums_kernel");
  }

  template <class Predicate>
  i64 count(i64 rows, i64 cols, const T* a, i64 lda) {
    if (rows * cols == 0) return 0;
    const DeviceGuard guard(state_.device());
    auto* counter = workspace_.take<unsigned long long>(1);
    zero(counter, sizeof *counter);
    launch("count_kernel", rows * cols, count_kernel<T, Predicate>, rows, cols, a, lda, counter);
    return static_cast<i64>(read_back(counter));
  }

  const DeviceState& state_;
  Workspace& workspace_;
  std::size_t fused_bytes_ = 0;  // the shared memory of the last fused_forward, and its blocks per SM
  int fused_resident_ = 0;
};

// ---- the context ----------------------------------------------------------------------------------------------

class CudaContext final : public BackendContext {
 public:
  CudaContext(int device, cudaStream_t stream)
      : state_(device, stream),
        allocator_(device),
        workspace_(allocator_),
        float_backend_(state_, workspace_),
        double_backend_(state_, workspace_) {}

  Device device() const override { return {DeviceKind::cuda, state_.device()}; }
  void set_stream(void* stream) override { state_.set_stream(static_cast<cudaStream_t>(stream)); }
  void* stream() const override { return state_.stream(); }
  void synchronize() override {
    const DeviceGuard guard(state_.device());
    check(cudaStreamSynchronize(state_.stream()), "cudaStreamSynchronize");
  }
  std::size_t workspace_bytes() const override { return workspace_.bytes(); }
  void release_workspace() override { workspace_.release(); }
  Backend<float>& backend(float) override { return float_backend_; }
  Backend<double>& backend(double) override { return double_backend_; }

 private:
  // Declaration order matters: the workspace frees its blocks through the allocator, so it goes first.
  DeviceState state_;
  CudaAllocator allocator_;
  Workspace workspace_;
  CudaBackend<float> float_backend_;
  CudaBackend<double> double_backend_;
};

}  // namespace
}  // namespace ekinet::detail

namespace ekinet {

std::unique_ptr<Context> make_cuda_context(int device, void* stream) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw BackendUnavailable(
        std::string("no CUDA device is available: ") +
        (status != cudaSuccess ? cudaGetErrorString(status) : "cudaGetDeviceCount found 0 devices"));
  }
  if (device < 0 || device >= count) {
    throw InvalidArgument("CUDA device " + std::to_string(device) + " does not exist: " + std::to_string(count) +
                          " device(s) are visible, so the index must be in [0, " + std::to_string(count - 1) + "]");
  }
  return std::make_unique<detail::CudaContext>(device, static_cast<cudaStream_t>(stream));
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace ekinet
