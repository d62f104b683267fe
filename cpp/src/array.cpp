#include "ekinet/array.hpp"
#include "ekinet/report.hpp"

namespace ekinet {

std::string to_string(DType dtype) { return dtype == DType::float32 ? "float32" : "float64"; }

std::string to_string(const Device& device) {
  return device.kind == DeviceKind::cpu ? std::string("cpu") : "cuda:" + std::to_string(device.index);
}

std::size_t size_of(DType dtype) { return dtype == DType::float32 ? 4 : 8; }

std::string to_string(Formulation formulation) {
  switch (formulation) {
    case Formulation::automatic: return "auto";
    case Formulation::ensemble: return "ensemble";
    case Formulation::observation: return "observation";
  }
  return "unknown";
}

}  // namespace ekinet
