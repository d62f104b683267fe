// Element-wise activation rows and small matrix products for the CPU backend: vectorised exp-based tanh and
// sigmoid for float (a few ulp; NaN stays NaN so a failed member stays visible), libm for double; dot-product
// and register-blocked row-update products for the recurrent layers and tiny GEMMs; the counter-based
// normal draws.
#pragma once

#include <cstdint>

namespace ekinet::detail::fast {

// max(x, 0), NaN stays NaN (a failed member stays visible)
void relu_row(float* row, std::int64_t n);
void relu_row(double* row, std::int64_t n);
void tanh_row(float* row, std::int64_t n);
void tanh_row(double* row, std::int64_t n);
void sigmoid_row(float* row, std::int64_t n);
void sigmoid_row(double* row, std::int64_t n);
// One LSTM cell over `hidden` units: gates holds the input, forget, candidate and output pre-activations
// (PyTorch's order); updates cell in place and writes h.
void lstm_cell_row(const float* gates, std::int64_t hidden, float* cell, float* h);
void lstm_cell_row(const double* gates, std::int64_t hidden, double* cell, double* h);

// Column-major C = alpha A^T B + beta C for tiny shapes (dot products of contiguous columns), where a BLAS
// call costs more than the arithmetic: one online step multiplies a few thousand numbers per member.
// C (rows x n, ld ldc) += A (rows x k, ld lda) Wt (k x n, contiguous)
void accumulate_product(std::int64_t rows, std::int64_t n, std::int64_t k, const float* a, std::int64_t lda,
                        const float* wt, float* c, std::int64_t ldc);
void accumulate_product(std::int64_t rows, std::int64_t n, std::int64_t k, const double* a, std::int64_t lda,
                        const double* wt, double* c, std::int64_t ldc);

// out[i] = (offset ? offset[i] : 0) + scale * (column_scale ? column_scale[i] : 1) * z_i with
// z_i = standard_normal(key, first_index + i) of ekinet/random.hpp to an ulp or two, vectorised (the scalar draw
// costs about 25 ns in libm).
void standard_normal_row(std::uint64_t key, std::uint64_t first_index, std::int64_t n, double scale,
                         const float* column_scale, const float* offset, float* out);
void standard_normal_row(std::uint64_t key, std::uint64_t first_index, std::int64_t n, double scale,
                         const double* column_scale, const double* offset, double* out);

// Output channels a direct convolution computes at once: one 64-byte vector (an AVX-512 register).
template <class T>
constexpr std::int64_t kConvolutionLanes = 64 / sizeof(T);

// One image of a direct convolution, vectorised over output channels, in blocks of L = kConvolutionLanes
// channels: out[(b * pixels + p) * L + l] = bias_{b,l} + sum_{e < q} w_{b,l}[e] in[base[p] + offsets[e]] for
// each output pixel p and block b < blocks. Block b of wt (at wt + b * (q + 1) * L) holds the L biases, then
// the weights transposed, w_{b,l}[e] at e * L + l (zero for lanes past the last channel).
void convolve_image(const float* in, const std::int64_t* base, std::int64_t pixels, const std::int64_t* offsets,
                    std::int64_t q, const float* wt, std::int64_t blocks, float* out);
void convolve_image(const double* in, const std::int64_t* base, std::int64_t pixels, const std::int64_t* offsets,
                    std::int64_t q, const double* wt, std::int64_t blocks, double* out);

// out[c * out_channel_stride + p] = in[((c / L) * pixels + p) * L + c % L] for c < channels: the channel blocks
// of convolve_image as one row per channel.
void unblock_channels(const float* in, std::int64_t pixels, std::int64_t channels, float* out,
                      std::int64_t out_channel_stride);
void unblock_channels(const double* in, std::int64_t pixels, std::int64_t channels, double* out,
                      std::int64_t out_channel_stride);

// Max-pooling of a plane of vectors (rows of width pixels of L = kConvolutionLanes lanes each, as convolve_image
// writes them) into out_h x out_w, windows kernel x kernel moved by stride; NaN propagates. The first out_w
// pixels of the first (out_h - 1) stride + kernel rows are overwritten with the rows' window maxima.
void maxpool_vectors(float* plane, std::int64_t width, std::int64_t kernel, std::int64_t stride,
                     std::int64_t out_h, std::int64_t out_w, float* out);
void maxpool_vectors(double* plane, std::int64_t width, std::int64_t kernel, std::int64_t stride,
                     std::int64_t out_h, std::int64_t out_w, double* out);

// Max-pooling of one plane (height x width, row-major) into out_h x out_w, windows kernel x kernel moved by
// stride: a NaN in a window gives NaN. row: scratch of width elements.
void maxpool_plane(const float* in, std::int64_t width, std::int64_t kernel, std::int64_t stride, std::int64_t out_h,
                   std::int64_t out_w, float* out, float* row);
void maxpool_plane(const double* in, std::int64_t width, std::int64_t kernel, std::int64_t stride,
                   std::int64_t out_h, std::int64_t out_w, double* out, double* row);

void gemm_tn(std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a, std::int64_t lda,
             const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);
void gemm_tn(std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a, std::int64_t lda,
             const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc);

}  // namespace ekinet::detail::fast
