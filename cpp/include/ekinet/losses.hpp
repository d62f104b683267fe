// Losses of the network outputs and their gradients with respect to the outputs (eki-math section 2).
// Z is J x M (member j's outputs on the batch, examples one after another, `width` outputs per example).
#pragma once

#include <cstdint>

#include "ekinet/context.hpp"
#include "ekinet/noise.hpp"

namespace ekinet {

enum class Loss {
  squared,               // 1/2 |y - z|^2_Gamma,        g = Gamma^{-1} (z - y);      y: 1 x M
  cross_entropy,         // -<y, log z>, z probabilities, g = -y / z;                 y: 1 x M (one-hot / soft)
  cross_entropy_logits,  // -<y, log softmax(z)>,        g = softmax(z) - y per example (width = classes)
  gaussian_nll,          // z per example = [mu_1..mu_k, sigma_1..sigma_k] (width = 2k), y: 1 x (M / 2);
                         // sum_k log(2 pi sigma_k^2)/2 + (y_k - mu_k)^2 / (2 sigma_k^2)
};

// values: 1 x J (loss of each member, summed over the batch); grad: J x M (may be empty to skip).
// noise is used by the squared loss only. Throws InvalidArgument for a non-positive probability or sigma.
void loss_and_gradient(Context& ctx, Loss loss, ConstMatrixView Z, ConstMatrixView y, std::int64_t width,
                       const NoiseCovariance& noise, MatrixView values, MatrixView grad);

}  // namespace ekinet
