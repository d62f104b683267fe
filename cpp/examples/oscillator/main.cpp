// Calibrates the frequency and damping of a damped oscillator x'' + 2 zeta omega x' + omega^2 x = 0 from noisy
// observations of x(t) with ensemble Kalman inversion. The simulator is a black box to EKI: only its outputs
// are used. Exits non-zero if the estimate misses the truth by more than 10%.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <ekinet/ekinet.hpp>

namespace {

constexpr double kOmega = 2.0, kZeta = 0.15;

// x at the observation times for (log omega, log zeta), x(0) = 1, x'(0) = 0, by RK4.
std::vector<double> simulate(double log_omega, double log_zeta, const std::vector<double>& times) {
  const double omega = std::exp(log_omega), zeta = std::exp(log_zeta);
  const double dt = times.front() / 20;
  auto acceleration = [&](double x, double v) { return -2 * zeta * omega * v - omega * omega * x; };
  std::vector<double> out;
  double x = 1, v = 0, t = 0;
  for (double target : times) {
    while (t < target - 1e-12) {
      const double k1x = v, k1v = acceleration(x, v);
      const double k2x = v + dt / 2 * k1v, k2v = acceleration(x + dt / 2 * k1x, v + dt / 2 * k1v);
      const double k3x = v + dt / 2 * k2v, k3v = acceleration(x + dt / 2 * k2x, v + dt / 2 * k2v);
      const double k4x = v + dt * k3v, k4v = acceleration(x + dt * k3x, v + dt * k3v);
      x += dt / 6 * (k1x + 2 * k2x + 2 * k3x + k4x);
      v += dt / 6 * (k1v + 2 * k2v + 2 * k3v + k4v);
      t += dt;
    }
    out.push_back(x);
  }
  return out;
}

}  // namespace

int main() {
  const int J = 100, P = 2, iterations = 15;
  const double noise_std = 0.02;
  std::vector<double> times;
  for (int i = 1; i <= 40; ++i) times.push_back(0.25 * i);
  const int M = static_cast<int>(times.size());

  std::mt19937_64 generator(0);
  std::normal_distribution<double> normal;
  std::vector<double> y = simulate(std::log(kOmega), std::log(kZeta), times);
  for (double& value : y) value += noise_std * normal(generator);

  // Prior ensemble (J x P, member-major): log omega ~ N(log 1.5, 0.3^2), log zeta ~ N(log 0.3, 0.5^2).
  std::vector<double> U(J * P), U_next(J * P), G(J * M);
  for (int j = 0; j < J; ++j) {
    U[j * P + 0] = std::log(1.5) + 0.3 * normal(generator);
    U[j * P + 1] = std::log(0.3) + 0.5 * normal(generator);
  }

  auto context = ekinet::make_cpu_context();
  const auto noise = ekinet::NoiseCovariance::isotropic(noise_std * noise_std);
  for (int n = 0; n < iterations; ++n) {
    for (int j = 0; j < J; ++j) {
      const std::vector<double> x = simulate(U[j * P], U[j * P + 1], times);
      std::copy(x.begin(), x.end(), G.begin() + j * M);
    }
    ekinet::KalmanOptions options;
    options.step = 1.0;
    const ekinet::UpdateReport report = ekinet::kalman_update(
        *context, ekinet::matrix_view(U.data(), J, P), ekinet::matrix_view(G.data(), J, M),
        ekinet::vector_view(y.data(), M), noise, ekinet::Perturbation::seeded(1000 + n), options,
        ekinet::matrix_view(U_next.data(), J, P));
    U.swap(U_next);
    std::printf("update %2d: %s formulation, spread %.3g\n", n + 1, ekinet::to_string(report.formulation).c_str(),
                ekinet::ensemble_spread(*context, ekinet::matrix_view(U.data(), J, P)));
  }

  std::vector<double> mean(P);
  ekinet::ensemble_mean(*context, ekinet::matrix_view(U.data(), J, P), ekinet::vector_view(mean.data(), P));
  const double omega = std::exp(mean[0]), zeta = std::exp(mean[1]);
  std::printf("omega: truth %.4f, estimate %.4f\nzeta:  truth %.4f, estimate %.4f\n", kOmega, omega, kZeta, zeta);
  const bool close = std::abs(omega / kOmega - 1) < 0.1 && std::abs(zeta / kZeta - 1) < 0.1;
  std::printf("%s\n", close ? "calibrated" : "FAILED: estimate more than 10% off");
  return close ? 0 : 1;
}
