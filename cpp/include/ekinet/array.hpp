// Non-owning views of the caller's arrays: ekinet never allocates or frees user data.
#pragma once

#include <cstdint>
#include <string>

namespace ekinet {

enum class DType { float32, float64 };
enum class DeviceKind { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
};

std::string to_string(DType dtype);
std::string to_string(const Device& device);
std::size_t size_of(DType dtype);

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::float32; }
template <>
constexpr DType dtype_of<double>() { return DType::float64; }

// A row-major matrix: element (i, j) lives at data[i * row_stride + j]. A vector is a 1 x n view.
// Ensembles are J x P (one member per row, "member-major"), outputs J x M, data 1 x M.
struct ConstMatrixView {
  const void* data = nullptr;
  DType dtype = DType::float32;
  Device device{};
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;

  std::int64_t size() const { return rows * cols; }
  bool empty() const { return data == nullptr; }
  bool contiguous() const { return rows <= 1 || row_stride == cols; }
  template <class T>
  const T* as() const { return static_cast<const T*>(data); }
};

struct MatrixView {
  void* data = nullptr;
  DType dtype = DType::float32;
  Device device{};
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;

  operator ConstMatrixView() const { return {data, dtype, device, rows, cols, row_stride}; }
  std::int64_t size() const { return rows * cols; }
  template <class T>
  T* as() const { return static_cast<T*>(data); }
};

// Views over contiguous host or device memory.
template <class T>
MatrixView matrix_view(T* data, std::int64_t rows, std::int64_t cols, Device device = {}) {
  return {data, dtype_of<T>(), device, rows, cols, cols};
}
template <class T>
ConstMatrixView matrix_view(const T* data, std::int64_t rows, std::int64_t cols, Device device = {}) {
  return {data, dtype_of<T>(), device, rows, cols, cols};
}
template <class T>
ConstMatrixView vector_view(const T* data, std::int64_t size, Device device = {}) {
  return matrix_view(data, 1, size, device);
}
template <class T>
MatrixView vector_view(T* data, std::int64_t size, Device device = {}) {
  return matrix_view(data, 1, size, device);
}

}  // namespace ekinet
