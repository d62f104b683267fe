#include "ekinet/build_info.hpp"

namespace ekinet {

BuildInfo build_info() {
  BuildInfo info;
  info.version = EKINET_VERSION;
  info.blas = EKINET_BLAS_NAME;
  info.compiler = EKINET_COMPILER;
#ifdef EKINET_WITH_CUDA
  info.cuda = true;
  info.cuda_version = EKINET_CUDA_VERSION;
  info.cuda_architectures = EKINET_CUDA_ARCHITECTURES;
#endif
  return info;
}

}  // namespace ekinet
