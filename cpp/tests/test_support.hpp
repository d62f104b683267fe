// Test harness: the same test body runs on the CPU and, when a GPU is present, on CUDA.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ekinet/ekinet.hpp"

#ifdef EKINET_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace ekinet::testing {

using Matrix = std::vector<double>;

// Owns arrays on the harness's device; views stay valid for the harness's life.
class Harness {
 public:
  explicit Harness(const std::string& device) : cuda_(device == "cuda") {
    context_ = cuda_ ? make_cuda_context(0) : make_cpu_context();
  }
  ~Harness() {
#ifdef EKINET_WITH_CUDA
    for (void* pointer : device_buffers_) cudaFree(pointer);
#endif
  }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  Context& context() { return *context_; }
  Device device() const { return cuda_ ? Device{DeviceKind::cuda, 0} : Device{}; }

  template <class T = double>
  MatrixView upload(const Matrix& values, std::int64_t rows, std::int64_t cols) {
    std::vector<T> converted(values.begin(), values.end());
    converted.resize(static_cast<std::size_t>(rows * cols));
    void* data = allocate(converted.size() * sizeof(T));
    copy_in(data, converted.data(), converted.size() * sizeof(T));
    return {data, dtype_of<T>(), device(), rows, cols, cols};
  }
  template <class T = double>
  MatrixView zeros(std::int64_t rows, std::int64_t cols) {
    return upload<T>(Matrix(static_cast<std::size_t>(rows * cols), 0.0), rows, cols);
  }
  Matrix download(const ConstMatrixView& view) {
    const std::size_t count = static_cast<std::size_t>(view.rows * view.cols);
    Matrix out(count);
    if (view.dtype == DType::float64) {
      std::vector<double> host(count);
      copy_out(host.data(), view.data, count * sizeof(double));
      out.assign(host.begin(), host.end());
    } else {
      std::vector<float> host(count);
      copy_out(host.data(), view.data, count * sizeof(float));
      out.assign(host.begin(), host.end());
    }
    return out;
  }

 private:
  void* allocate(std::size_t bytes) {
#ifdef EKINET_WITH_CUDA
    if (cuda_) {
      void* pointer = nullptr;
      if (cudaMalloc(&pointer, bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
      device_buffers_.push_back(pointer);
      return pointer;
    }
#endif
    host_buffers_.emplace_back(bytes);
    return host_buffers_.back().data();
  }
  void copy_in(void* target, const void* source, std::size_t bytes) {
#ifdef EKINET_WITH_CUDA
    if (cuda_) {
      cudaMemcpy(target, source, bytes, cudaMemcpyHostToDevice);
      return;
    }
#endif
    std::memcpy(target, source, bytes);
  }
  void copy_out(void* target, const void* source, std::size_t bytes) {
#ifdef EKINET_WITH_CUDA
    if (cuda_) {
      context_->synchronize();
      cudaMemcpy(target, source, bytes, cudaMemcpyDeviceToHost);
      return;
    }
#endif
    std::memcpy(target, source, bytes);
  }

  bool cuda_;
  std::unique_ptr<Context> context_;
  std::vector<std::vector<unsigned char>> host_buffers_;
  std::vector<void*> device_buffers_;
};

// "cpu", plus "cuda" when a device is present (CUDA cases are skipped with a reason otherwise).
inline std::vector<std::string> devices() { return {"cpu", "cuda"}; }

// A macro, because GTEST_SKIP only returns from the function it is written in.
#define EKINET_SKIP_UNLESS_AVAILABLE(device)                      \
  if ((device) == "cuda" && ::ekinet::cuda_device_count() == 0) \
  GTEST_SKIP() << "no CUDA device (or ekinet built without CUDA)"

inline Matrix random_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 generator(seed);
  std::normal_distribution<double> normal;
  Matrix out(static_cast<std::size_t>(rows * cols));
  for (double& value : out) value = scale * normal(generator);
  return out;
}

// A = B B^T + n I (symmetric positive definite).
inline Matrix random_spd(std::int64_t n, std::uint64_t seed) {
  const Matrix b = random_matrix(n, n, seed);
  Matrix a(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      for (std::int64_t k = 0; k < n; ++k) a[i * n + j] += b[i * n + k] * b[j * n + k];
      if (i == j) a[i * n + j] += static_cast<double>(n);
    }
  return a;
}

inline double max_abs_difference(const Matrix& a, const Matrix& b) {
  double largest = 0;
  for (std::size_t i = 0; i < a.size(); ++i) largest = std::max(largest, std::abs(a[i] - b[i]));
  return largest;
}

inline double max_abs(const Matrix& a) {
  double largest = 0;
  for (double value : a) largest = std::max(largest, std::abs(value));
  return largest;
}

}  // namespace ekinet::testing
