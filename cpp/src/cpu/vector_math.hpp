// Element-wise activation rows for the CPU backend: vectorised exp-based tanh and sigmoid for float (a few
// ulp; NaN stays NaN so a failed member stays visible), libm for double.
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

}  // namespace ekinet::detail::fast
