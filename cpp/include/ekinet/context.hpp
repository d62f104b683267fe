// A Context owns everything one device needs across calls: BLAS/LAPACK (CPU) or the CUDA stream, the
// cuBLAS and cuSOLVER handles (CUDA), and a workspace that grows to the high-water mark and is reused, so a
// training loop makes no workspace or device allocation after its first step (the CPU backend still takes small
// host vectors per call, O(P) or one per thread, and starts its worker threads per pass). A Context is not
// thread safe: use one per thread.
#pragma once

#include <cstddef>
#include <memory>

#include "ekinet/array.hpp"

namespace ekinet {

namespace detail {
class BackendContext;
}

// Made only by make_cpu_context and make_cuda_context: the library's functions reach the device's primitives
// through the context, so only the library's internal context class can construct one.
class Context {
 public:
  virtual ~Context() = default;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  virtual Device device() const = 0;
  // CUDA: the stream all work is queued on (cudaStream_t as void*); ignored on the CPU.
  virtual void set_stream(void* stream) = 0;
  virtual void* stream() const = 0;
  // Waits for all queued work (a no-op on the CPU).
  virtual void synchronize() = 0;
  // Bytes currently held by the workspace.
  virtual std::size_t workspace_bytes() const = 0;
  // Frees the workspace (it grows again on the next call).
  virtual void release_workspace() = 0;

  // Whether forward() may run a small network whole per member and example in on-chip memory (CUDA: image
  // networks such as CNN-MNIST and one-step recurrent networks; docs/design.md). On by default; off runs every
  // network layer by layer, to compare the two in benchmarks or to isolate a suspected fault.
  void set_whole_networks(bool enabled) { whole_networks_ = enabled; }
  bool whole_networks() const { return whole_networks_; }

 private:
  friend class detail::BackendContext;
  Context() = default;

  bool whole_networks_ = true;
};

std::unique_ptr<Context> make_cpu_context();
// Throws BackendUnavailable when ekinet was built without CUDA or no CUDA device is present, InvalidArgument
// for a device index out of range.
// stream == nullptr uses the default stream.
std::unique_ptr<Context> make_cuda_context(int device = 0, void* stream = nullptr);

}  // namespace ekinet
