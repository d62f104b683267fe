// Element-wise activation rows and small matrix products for the CPU backend: vectorised exp-based tanh and
// sigmoid for float (a few ulp; NaN stays NaN so a failed member stays visible), libm for double; dot-product
// and register-blocked row-update products for the recurrent layers and tiny GEMMs; the counter-based
// normal draws.
#pragma once

#include <cstdint>

namespace ekinet::detail::fast {

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

void gemm_tn(std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a, std::int64_t lda,
             const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);
void gemm_tn(std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a, std::int64_t lda,
             const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc);

}  // namespace ekinet::detail::fast
