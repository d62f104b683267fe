// Stand-ins for the CUDA entry points when ekinet is built without the CUDA backend (EKINET_CUDA=OFF or no
// toolkit found): the library links, and asking for a CUDA context says how to get one.
#include "ekinet/build_info.hpp"
#include "ekinet/context.hpp"
#include "ekinet/errors.hpp"

namespace ekinet {

std::unique_ptr<Context> make_cuda_context(int, void*) {
  throw BackendUnavailable(
      "ekinet was built without CUDA: reinstall on a machine with the CUDA toolkit (nvcc, cuBLAS, cuSOLVER), "
      "e.g. pip install . with CMake option EKINET_CUDA=ON");
}

int cuda_device_count() { return 0; }

}  // namespace ekinet
