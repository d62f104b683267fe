#pragma once

#include <string>

namespace ekinet {

struct BuildInfo {
  std::string version;
  bool cuda = false;
  std::string cuda_version;        // toolkit ekinet was compiled with
  std::string cuda_architectures;  // e.g. "80 90"
  std::string blas;                // BLAS/LAPACK library linked for the CPU
  std::string compiler;
};

BuildInfo build_info();

// Number of CUDA devices visible at run time (0 when built without CUDA or none is present).
int cuda_device_count();

}  // namespace ekinet
