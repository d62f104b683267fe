// The primitives the algorithms are written against, implemented once per device (cpu/, cuda/).
// Dense linear algebra follows the Fortran BLAS/LAPACK conventions (column-major). A row-major R x C matrix
// is the column-major C x R matrix of the same buffer, which is how the algorithms call these.
// Element-wise kernels take row-major matrices (rows x cols, leading dimension ld). Every call is queued on
// the context's stream; only the functions documented as returning a host value synchronise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ekinet/array.hpp"
#include "ekinet/context.hpp"
#include "ekinet/losses.hpp"
#include "ekinet/network.hpp"
#include "fused_network.hpp"

namespace ekinet::detail {

using i64 = std::int64_t;
enum class Trans { no, yes };

// Raw device (or host) memory for the workspace.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(std::size_t bytes) = 0;  // throws OutOfMemory
  virtual void deallocate(void* pointer) = 0;
};

// A bump allocator over one block that is reset at the start of every operation. Requests that do not fit
// get blocks of their own; at the next reset they are freed and the main block grows to the high-water
// mark, so a steady loop allocates nothing. Pointers stay valid until the next reset.
class Workspace {
 public:
  explicit Workspace(Allocator& allocator) : allocator_(allocator) {}
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  void reset();
  void release();
  std::size_t bytes() const { return capacity_; }
  void* take_bytes(std::size_t bytes);
  template <class T>
  T* take(i64 count) {
    return static_cast<T*>(take_bytes(static_cast<std::size_t>(count) * sizeof(T)));
  }

 private:
  Allocator& allocator_;
  void* block_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
  std::size_t high_water_ = 0;
  std::vector<void*> spills_;  // only the first calls of a loop spill, so this stops growing too
};

// One recurrent layer (Elman: h = tanh(W_ih x + b_ih + W_hh h + b_hh), or LSTM, PyTorch's equations and gate
// order i, f, g, o) of `members` members over `steps` steps of `examples` sequences; gates = hidden (Elman)
// or 4 hidden (LSTM).
template <class T>
struct RecurrentLayer {
  bool lstm = false;
  i64 members = 0, examples = 0, steps = 0, features = 0, hidden = 0;
  // Input of member i, example b, step t: x + i * x_member_stride + (b * steps + t) * x_ld (stride 0: shared).
  const T* x = nullptr;
  i64 x_ld = 0, x_member_stride = 0;
  // Member i's W_ih (gates x features), W_hh (gates x hidden), b_ih, b_hh, one after another, at
  // params + i * params_stride.
  const T* params = nullptr;
  i64 params_stride = 0;
  // Initial h and (LSTM) c of member i, each examples x hidden, at h0/c0 + i * state_in_stride; null: zeros.
  const T* h0 = nullptr;
  const T* c0 = nullptr;
  i64 state_in_stride = 0;
  // Output h of every step: member i, example b, step t at h + i * steps * examples * hidden + (b * steps + t)
  // * hidden.
  T* h = nullptr;
  // Final c of member i (examples x hidden) at c_out + i * c_out_stride; null: not wanted.
  T* c_out = nullptr;
  i64 c_out_stride = 0;

  i64 gates() const { return (lstm ? 4 : 1) * hidden; }
  i64 h_member_stride() const { return steps * examples * hidden; }
};

// One convolutional layer over every member and image, for Backend::conv2d, with the max-pooling layer that
// follows it when there is one.
template <class T>
struct ConvolutionLayer {
  i64 members = 0, images = 0, channels = 0, height = 0, width = 0;
  // Input of member i, image n, channel c, pixel (y, x) at in + i * in_member_stride + n * image_stride +
  // c * channel_stride + y * width + x (in_member_stride 0: shared by all members).
  const T* in = nullptr;
  i64 channel_stride = 0, image_stride = 0, in_member_stride = 0;
  i64 kernel = 0, stride = 1, padding = 0;
  i64 out_channels = 0, out_h = 0, out_w = 0;  // of the convolution
  // Member i's weights (out_channels x channels x kernel x kernel, PyTorch's order), then its bias, at
  // params + i * params_stride.
  const T* params = nullptr;
  i64 params_stride = 0;
  Activation activation = Activation::identity;
  // Max-pooling windows of the activations (0: no pooling), no padding.
  i64 pool_kernel = 0, pool_stride = 0;
  // CNHW result (pooled, if pooling): member i, channel c, image n, pixel p at out + i * out_member_stride() +
  // c * images * result_pixels() + n * result_pixels() + p.
  T* out = nullptr;

  i64 patch_size() const { return channels * kernel * kernel; }
  i64 result_h() const { return pool_kernel == 0 ? out_h : (out_h - pool_kernel) / pool_stride + 1; }
  i64 result_w() const { return pool_kernel == 0 ? out_w : (out_w - pool_kernel) / pool_stride + 1; }
  i64 result_pixels() const { return result_h() * result_w(); }
  i64 out_member_stride() const { return out_channels * images * result_pixels(); }

  // Elements of scratch each thread of the CPU's direct convolution takes, for `lanes` output channels at once:
  // a member's weight blocks with their biases, one image's activations and pooled activations, and a
  // zero-padded copy of the image (whole vectors). Besides: the patch offsets, patch_size() + out_h * out_w
  // 64-bit integers.
  i64 thread_scratch(i64 lanes) const {
    const i64 channel_lanes = (out_channels + lanes - 1) / lanes * lanes;
    const i64 plane = padding > 0 ? channels * (height + 2 * padding) * (width + 2 * padding) : 0;
    return channel_lanes * (patch_size() + 1 + out_h * out_w + (pool_kernel > 0 ? result_pixels() : 0)) +
           (plane + lanes - 1) / lanes * lanes;
  }
};

// The most threads the CPU backend splits a pass over (its per-thread scratch is counted this many times).
i64 cpu_threads();

template <class T>
class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual Workspace& workspace() = 0;

  // ---- memory ------------------------------------------------------------------------------------------
  virtual void copy_to_host(void* host, const void* source, std::size_t bytes) = 0;    // synchronises
  virtual void copy_from_host(void* target, const void* host, std::size_t bytes) = 0;  // host may be reused after return
  virtual double read_scalar(const T* value) = 0;                                       // synchronises

  // ---- dense linear algebra, column-major ----------------------------------------------------------------
  // C (m x n) = alpha op(A) op(B) + beta C
  virtual void gemm(Trans trans_a, Trans trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda,
                    const T* b, i64 ldb, T beta, T* c, i64 ldc) = 0;
  // lower triangle of C (n x n) = alpha op(A) op(A)^T + beta C, op(A) n x k (Trans::yes: A is k x n); the upper
  // triangle may be overwritten, and with beta != 0 read (a backend may form the product by GEMM)
  virtual void syrk_lower(Trans trans, i64 n, i64 k, T alpha, const T* a, i64 lda, T beta, T* c, i64 ldc) = 0;
  // B (m x n) <- op(L)^{-1} B, L lower triangular with non-unit diagonal
  virtual void trsm_left_lower(Trans trans, i64 m, i64 n, const T* l, i64 ldl, T* b, i64 ldb) = 0;
  // B (m x n) <- L B, L lower triangular with non-unit diagonal
  virtual void trmm_left_lower(i64 m, i64 n, const T* l, i64 ldl, T* b, i64 ldb) = 0;
  // Cholesky A = L L^T in the lower triangle; returns LAPACK's info (0: success, k > 0: the leading minor of
  // order k is not positive definite). Synchronises.
  virtual i64 potrf_lower(i64 n, T* a, i64 lda) = 0;
  // B (n x nrhs) <- A^{-1} B with A's Cholesky factor from potrf_lower
  virtual void potrs_lower(i64 n, i64 nrhs, const T* l, i64 ldl, T* b, i64 ldb) = 0;
  // Symmetric eigen-decomposition from the lower triangle: eigenvalues ascending in w, eigenvectors in the
  // columns of A. Returns LAPACK's info. Synchronises.
  virtual i64 syevd_lower(i64 n, T* a, i64 lda, T* w) = 0;

  // ---- element-wise kernels and reductions, row-major --------------------------------------------------
  // mean[c] = (1/rows) sum_r A[r, c]
  virtual void column_mean(i64 rows, i64 cols, const T* a, i64 lda, T* mean) = 0;
  // out = alpha A + beta B (out may alias A or B)
  virtual void axpby(i64 rows, i64 cols, T alpha, const T* a, i64 lda, T beta, const T* b, i64 ldb, T* out,
                     i64 ldo) = 0;
  // out[r, c] = A[r, c] + alpha v[c] (out may alias A)
  virtual void add_row_vector(i64 rows, i64 cols, const T* a, i64 lda, T alpha, const T* v, T* out, i64 ldo) = 0;
  // A[r, c] *= v[c]
  virtual void scale_columns(i64 rows, i64 cols, T* a, i64 lda, const T* v) = 0;
  // out[r, c] = y[c] + (eta ? eta[r, c] : 0) - G[r, c]
  virtual void residual(i64 rows, i64 cols, const T* y, const T* eta, i64 ld_eta, const T* g, i64 ldg, T* out,
                        i64 ldo) = 0;
  // out[i, c] = A[index[i], c], index on the device
  virtual void gather_rows(i64 count, i64 cols, const std::int64_t* index, const T* a, i64 lda, T* out,
                           i64 ldo) = 0;
  // out[i, c] = (offset ? offset[c] : 0) + scale * (column_scale ? column_scale[c] : 1) *
  //             standard_normal(key, (first_row + i) * cols + c)
  virtual void fill_normal(i64 rows, i64 cols, std::uint64_t key, i64 first_row, double scale,
                           const T* column_scale, const T* offset, T* out, i64 ldo) = 0;
  // A[i, i] += alpha * (v ? v[i] : 1) for the n x n matrix A
  virtual void add_diagonal(i64 n, T* a, i64 lda, T alpha, const T* v) = 0;
  // T = I + A - (A 1) 1^T / n for the n x n matrix A: the member transform whose product with U equals
  // U + A (U - ubar) exactly (the rows of the centring matrix sum to zero). out may alias A.
  virtual void fold_centering(i64 n, const T* a, i64 lda, T* out, i64 ldo) = 0;
  // step = adaptive ? h / (||A||_F + eps) : h (h where ||A||_F + eps = 0), written to *step; then A *= -step.
  virtual void scale_by_negative_step(i64 rows, i64 cols, T* a, i64 lda, double h, double eps, bool adaptive,
                                      T* step) = 0;
  // flags[r] = 1 if row r of A holds a NaN or Inf (flags not touched otherwise)
  virtual void flag_nonfinite_rows(i64 rows, i64 cols, const T* a, i64 lda, std::int32_t* flags) = 0;
  // Number of NaN/Inf entries. Synchronises.
  virtual i64 count_nonfinite(i64 rows, i64 cols, const T* a, i64 lda) = 0;
  // Number of entries <= 0 (NaN counts too). Synchronises.
  virtual i64 count_nonpositive(i64 rows, i64 cols, const T* a, i64 lda) = 0;
  // Number of pairs r > c of the n x n matrix A with |A[r, c] - A[c, r]| > tolerance sqrt(|A[r, r] A[c, c]|)
  // (the bound an SPD matrix puts on |A[r, c]|, so the test is relative to the entries' own scale; NaN counts).
  // Synchronises.
  virtual i64 count_asymmetric(i64 n, const T* a, i64 lda, double tolerance) = 0;
  // (1/n) trace of the n x n matrix A. Synchronises.
  virtual double mean_diagonal(i64 n, const T* a, i64 lda) = 0;
  // sum over entries of (A - 1 mean^T)^2 (the spread numerator). Synchronises.
  virtual double centred_sum_of_squares(i64 rows, i64 cols, const T* a, i64 lda, const T* mean) = 0;
  // Column-major B (n x nrhs): B[i, c] /= max(w[i], floor)
  virtual void divide_rows_clamped(i64 n, i64 nrhs, const T* w, T floor, T* b, i64 ldb) = 0;
  // out[r] = sum_c A[r, c] B[r, c]
  virtual void row_dots(i64 rows, i64 cols, const T* a, i64 lda, const T* b, i64 ldb, T* out) = 0;
  // out[i] = 1 / sqrt(v[i]) (whitening weights of a diagonal covariance)
  virtual void inverse_sqrt(i64 n, const T* v, T* out) = 0;

  // ---- batched ensemble networks (network.hpp) -----------------------------------------------------------
  // Activations of member i live at base + i * member_stride; within a member, row-major rows at stride ld.
  // Convolutional activations are kept channel-major across the batch ("CNHW": row c holds every image's
  // pixels of channel c), so that a convolution is one GEMM per member over the whole batch.

  // `batch` independent column-major GEMMs C_i = alpha op(A_i) op(B_i) + beta C_i with X_i = X + i * stride_x
  // (stride 0: one matrix shared by every member, e.g. the input batch).
  virtual void gemm_strided_batched(Trans trans_a, Trans trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda,
                                    i64 stride_a, const T* b, i64 ldb, i64 stride_b, T beta, T* c, i64 ldc,
                                    i64 stride_c, i64 batch) = 0;
  // x[i, r, c] = activation(x[i, r, c] + bias_i[bias_per_row ? r : c]), bias_i = bias + i * bias_stride
  // (bias may be null). softmax normalises each row over its cols entries.
  virtual void bias_activation(i64 batch, i64 rows, i64 cols, T* x, i64 ld, i64 member_stride, const T* bias,
                               i64 bias_stride, bool bias_per_row, Activation activation) = 0;
  // out[i, r, c] = in[i, r, c] for strided 3-D blocks (e.g. the last step of a sequence, recurrent state).
  virtual void copy_strided(i64 batch, i64 rows, i64 cols, const T* in, i64 in_ld, i64 in_member_stride, T* out,
                            i64 out_ld, i64 out_member_stride) = 0;
  // out[i, r, c] = value
  virtual void fill_strided(i64 batch, i64 rows, i64 cols, T value, T* out, i64 ld, i64 member_stride) = 0;
  // A whole convolutional layer, bias, activation and a following max-pooling included. The schedule is the
  // backend's: the CPU convolves and pools each member's images directly (its weights and the image's
  // activations in cache, vectorised over output channels); CUDA forms im2col patches, runs one batched GEMM
  // over the members, and pools.
  virtual void conv2d(const ConvolutionLayer<T>& layer) = 0;
  // Max-pooling of CNHW activations (channels x images*height*width per member) into CNHW
  // (channels x images*out_h*out_w), windows kernel x kernel moved by stride, no padding.
  virtual void maxpool2d(i64 batch, i64 channels, i64 images, i64 height, i64 width, const T* in, i64 in_member_stride,
                         i64 kernel, i64 stride, i64 out_h, i64 out_w, T* out, i64 out_member_stride) = 0;
  // CNHW (channels x images*pixels) to one row per image in PyTorch's flatten order (channel, pixel).
  virtual void channels_to_rows(i64 batch, i64 channels, i64 images, i64 pixels, const T* in, i64 in_member_stride,
                                T* out, i64 out_member_stride) = 0;
  // One LSTM step for `rows` examples of each member: gates (rows x 4 hidden at gates_ld, PyTorch order i, f, g,
  // o, pre-activation); c (rows x hidden, contiguous) <- f c + i g; h (rows x hidden at h_ld) <- o tanh(c).
  virtual void lstm_cell(i64 batch, i64 rows, i64 hidden, const T* gates, i64 gates_ld, i64 gates_member_stride,
                         T* c, i64 c_member_stride, T* h, i64 h_ld, i64 h_member_stride) = 0;

  // A whole recurrent layer. The schedule is the backend's: the CPU runs each member through all steps on one
  // core with its weights in cache; CUDA runs one batched GEMM per step over every member (recurrent_steps.hpp).
  virtual void recurrent(const RecurrentLayer<T>& layer) = 0;

  // The whole network of `plan` for every member (parameters at u + i * ldu) on every example (at x + n * ldx),
  // outputs of member i and example n at g + i * ldg + n * output_size; recurrent state (one step) from the rows
  // of state_in and into those of state_out (null: zeros, and not wanted), with nothing in the workspace
  // (fused_network.hpp). Returns false, having done nothing, where the backend has no such path or the network
  // does not fit on the chip; forward() then runs the layers one by one.
  virtual bool fused_forward(const FusedPlan& plan, i64 members, i64 examples, const T* u, i64 ldu, const T* x,
                             i64 ldx, T* g, i64 ldg, const T* state_in, i64 state_in_ld, T* state_out,
                             i64 state_out_ld) = 0;

  // ---- losses (eki-math section 2), row-major, scalar or diagonal noise only --------------------------
  // Loss values per member (values[r]) and, when grad != nullptr, the gradient with respect to Z. For
  // squared: inverse_variance (1 x M, nullable: then scalar_inverse_variance applies). For
  // cross_entropy_logits and gaussian_nll, width is the outputs per example. Returns the number
  // of invalid entries (probability <= 0 for cross_entropy, sigma <= 0 for gaussian_nll). Synchronises.
  virtual i64 loss_gradient(Loss loss, i64 rows, i64 cols, i64 width, const T* z, i64 ldz, const T* y,
                            const T* inverse_variance, double scalar_inverse_variance, T* values, T* grad,
                            i64 ldg) = 0;
};

// Every Context is one of these (Context's constructor is private to this class), so the library's functions
// can reach the primitives of a context they are given.
class BackendContext : public Context {
 public:
  virtual Backend<float>& backend(float) = 0;
  virtual Backend<double>& backend(double) = 0;
};

template <class T>
Backend<T>& backend_of(Context& context) {
  return static_cast<BackendContext&>(context).backend(T{});
}

}  // namespace ekinet::detail
