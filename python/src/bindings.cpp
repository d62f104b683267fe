// The ekinet._core extension: thin wrappers over the C++ API. Arrays arrive as views (pointer, dtype,
// device, shape, row stride) built by ekinet._arrays, which keeps them alive during the call. C++ exceptions
// become ValueError, TypeError, FloatingPointError, MemoryError and ekinet.BackendUnavailable.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ekinet/ekinet.hpp"

namespace py = pybind11;
using namespace ekinet;

namespace {

struct View {
  std::uintptr_t pointer = 0;
  DType dtype = DType::float32;
  Device device{};
  std::int64_t rows = 0, cols = 0, row_stride = 0;
  // The array that owns the memory, held for as long as the view lives: a view of a temporary (an argument
  // such as view(xp.ascontiguousarray(a))) must not let the memory go back to an allocator's pool, where the
  // next allocation would overwrite it before the call reads it.
  py::object owner;

  MatrixView mutable_view() const {
    return {reinterpret_cast<void*>(pointer), dtype, device, rows, cols, row_stride};
  }
  ConstMatrixView const_view() const { return mutable_view(); }
};

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::float32;
  if (name == "float64") return DType::float64;
  throw DTypeError("unsupported dtype " + name + "; ekinet computes in float32 or float64");
}

// A view of a NumPy array (2-D, or 1-D as one row; unit stride along its last axis) read in C++: through
// __array_interface__ and the View constructor a view cost about 3 us, and an online step makes a dozen.
View host_view(const py::array& a) {
  const py::ssize_t ndim = a.ndim();
  if (ndim != 1 && ndim != 2) throw InvalidArgument("internal: arrays passed to the native core are 1-D or 2-D");
  const char kind = a.dtype().char_();
  if (kind != 'f' && kind != 'd') parse_dtype(py::str(a.dtype().attr("name")));  // throws, naming the dtype
  const std::int64_t itemsize = a.itemsize(), rows = ndim == 2 ? a.shape(0) : 1, cols = a.shape(ndim - 1);
  if (cols > 1 && a.strides(ndim - 1) != itemsize) {
    throw InvalidArgument("internal: arrays passed to the native core need contiguous rows");
  }
  const std::int64_t row_stride = ndim == 2 && rows > 1 ? a.strides(0) / itemsize : cols;
  return View{reinterpret_cast<std::uintptr_t>(a.data()), kind == 'f' ? DType::float32 : DType::float64, Device{},
              rows, cols, row_stride, a};
}

// The same for a CuPy array, read through its attributes (data.ptr, shape, strides, dtype.char, device.id):
// cheaper than __cuda_array_interface__, a dictionary CuPy builds on every access.
View device_view(const py::object& a) {
  const auto shape = a.attr("shape").cast<std::vector<std::int64_t>>();
  const auto strides = a.attr("strides").cast<std::vector<std::int64_t>>();
  const std::size_t ndim = shape.size();
  if (ndim != 1 && ndim != 2) throw InvalidArgument("internal: arrays passed to the native core are 1-D or 2-D");
  const py::object dtype = a.attr("dtype");
  const std::string kind = py::str(dtype.attr("char"));
  if (kind != "f" && kind != "d") parse_dtype(py::str(dtype.attr("name")));  // throws, naming the dtype
  const std::int64_t itemsize = kind == "f" ? 4 : 8, rows = ndim == 2 ? shape[0] : 1, cols = shape[ndim - 1];
  if (cols > 1 && strides[ndim - 1] != itemsize) {
    throw InvalidArgument("internal: arrays passed to the native core need contiguous rows");
  }
  const std::int64_t row_stride = ndim == 2 && rows > 1 ? strides[0] / itemsize : cols;
  const Device device{DeviceKind::cuda, a.attr("device").attr("id").cast<int>()};
  return View{a.attr("data").attr("ptr").cast<std::uintptr_t>(), kind == "f" ? DType::float32 : DType::float64,
              device, rows, cols, row_stride, a};
}

template <class Enum>
Enum parse_choice(const std::string& value, const char* name,
                  std::initializer_list<std::pair<const char*, Enum>> choices) {
  std::string allowed;
  for (const auto& [text, choice] : choices) {
    if (value == text) return choice;
    allowed += (allowed.empty() ? "'" : ", '") + std::string(text) + "'";
  }
  throw InvalidArgument(std::string(name) + " = '" + value + "' is not one of " + allowed);
}

Formulation parse_formulation(const std::string& value) {
  return parse_choice<Formulation>(value, "formulation",
                                   {{"auto", Formulation::automatic},
                                    {"ensemble", Formulation::ensemble},
                                    {"observation", Formulation::observation}});
}

FailurePolicy parse_failure(const std::string& value) {
  return parse_choice<FailurePolicy>(value, "on_failure",
                                     {{"redraw", FailurePolicy::redraw}, {"raise", FailurePolicy::raise}});
}

UpdateOutput parse_output(const std::string& value) {
  return parse_choice<UpdateOutput>(value, "output", {{"ensemble", UpdateOutput::ensemble}, {"mean", UpdateOutput::mean}});
}

Loss parse_loss(const std::string& value) {
  return parse_choice<Loss>(value, "loss",
                            {{"squared", Loss::squared},
                             {"cross_entropy", Loss::cross_entropy},
                             {"cross_entropy_logits", Loss::cross_entropy_logits},
                             {"gaussian_nll", Loss::gaussian_nll}});
}

Activation parse_activation(const std::string& value) {
  return parse_choice<Activation>(value, "activation",
                                  {{"identity", Activation::identity},
                                   {"relu", Activation::relu},
                                   {"tanh", Activation::tanh},
                                   {"sigmoid", Activation::sigmoid},
                                   {"heaviside", Activation::heaviside},
                                   {"softmax", Activation::softmax}});
}

// A layer from the dict ekinet.nn builds: {"kind": ..., "units", "kernel", "stride", "padding", "activation",
// "return_sequences"} (absent keys keep the defaults).
Layer parse_layer(const py::dict& spec) {
  Layer layer;
  layer.kind = parse_choice<Layer::Kind>(spec["kind"].cast<std::string>(), "layer kind",
                                         {{"dense", Layer::Kind::dense},
                                          {"conv2d", Layer::Kind::conv2d},
                                          {"maxpool2d", Layer::Kind::maxpool2d},
                                          {"flatten", Layer::Kind::flatten},
                                          {"rnn", Layer::Kind::rnn},
                                          {"lstm", Layer::Kind::lstm}});
  if (spec.contains("units")) layer.units = spec["units"].cast<std::int64_t>();
  if (spec.contains("kernel")) layer.kernel = spec["kernel"].cast<std::int64_t>();
  if (spec.contains("stride")) layer.stride = spec["stride"].cast<std::int64_t>();
  if (spec.contains("padding")) layer.padding = spec["padding"].cast<std::int64_t>();
  if (spec.contains("activation")) layer.activation = parse_activation(spec["activation"].cast<std::string>());
  if (spec.contains("return_sequences")) layer.return_sequences = spec["return_sequences"].cast<bool>();
  return layer;
}

NoiseCovariance make_noise(const std::string& kind, double scalar, const std::optional<View>& matrix) {
  if (kind == "scalar") return NoiseCovariance::isotropic(scalar);
  if (!matrix) throw InvalidArgument("noise_cov of kind " + kind + " needs an array");
  if (kind == "diagonal") return NoiseCovariance::diagonal(matrix->const_view());
  if (kind == "full") return NoiseCovariance::full(matrix->const_view());
  throw InvalidArgument("noise_cov kind '" + kind + "' is not one of 'scalar', 'diagonal', 'full'");
}

py::dict report_dict(const UpdateReport& report) {
  py::dict d;
  d["formulation"] = to_string(report.formulation);
  d["failed_members"] = report.failed_members;
  d["cholesky_jitter_retries"] = report.cholesky_jitter_retries;
  d["eigen_fallbacks"] = report.eigen_fallbacks;
  d["step"] = report.step;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ekinet native core (C++/CUDA)";

  static py::exception<BackendUnavailable> backend_unavailable(m, "BackendUnavailable", PyExc_RuntimeError);
  static py::exception<NumericalError> numerical_error(m, "NumericalError", PyExc_FloatingPointError);
  py::register_exception_translator([](std::exception_ptr pointer) {
    try {
      if (pointer) std::rethrow_exception(pointer);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const DTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const NumericalError& e) {
      py::set_error(numerical_error, e.what());
    } catch (const OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const BackendUnavailable& e) {
      py::set_error(backend_unavailable, e.what());
    } catch (const Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  py::class_<View>(m, "View")
      .def(py::init([](std::uintptr_t pointer, const std::string& dtype, const std::string& device, int device_index,
                       std::int64_t rows, std::int64_t cols, std::int64_t row_stride, py::object owner) {
             const DeviceKind kind = device == "cuda" ? DeviceKind::cuda : DeviceKind::cpu;
             return View{pointer, parse_dtype(dtype), Device{kind, device_index}, rows, cols, row_stride,
                         std::move(owner)};
           }),
           py::arg("pointer"), py::arg("dtype"), py::arg("device"), py::arg("device_index"), py::arg("rows"),
           py::arg("cols"), py::arg("row_stride"), py::arg("owner"));

  m.def("host_view", &host_view, py::arg("array").noconvert());
  m.def("device_view", &device_view, py::arg("array"));

  py::class_<Context>(m, "Context")
      .def_property_readonly("device", [](const Context& c) { return to_string(c.device()); })
      .def("set_stream", [](Context& c, std::uintptr_t stream) { c.set_stream(reinterpret_cast<void*>(stream)); })
      .def("synchronize", &Context::synchronize)
      .def_property_readonly("workspace_bytes", &Context::workspace_bytes)
      .def_property("whole_networks", &Context::whole_networks, &Context::set_whole_networks)
      .def("release_workspace", &Context::release_workspace);
  m.def("make_cpu_context", &make_cpu_context);
  m.def("make_cuda_context", [](int device) { return make_cuda_context(device, nullptr); }, py::arg("device") = 0);

  m.def(
      "kalman_update",
      [](Context& ctx, const View& U, const View& G, const View& y, const std::string& noise_kind, double noise_scalar,
         const std::optional<View>& noise_matrix, const std::optional<View>& eta, std::optional<std::uint64_t> seed,
         double step, const std::string& formulation, const std::string& on_failure, std::uint64_t redraw_seed,
         const std::string& output, const View& U_out) {
        const NoiseCovariance noise = make_noise(noise_kind, noise_scalar, noise_matrix);
        const Perturbation perturbation = eta    ? Perturbation::given(eta->const_view())
                                          : seed ? Perturbation::seeded(*seed)
                                                 : Perturbation::none();
        const KalmanOptions options{step, parse_formulation(formulation), parse_failure(on_failure), redraw_seed,
                                    parse_output(output)};
        UpdateReport report;
        {
          py::gil_scoped_release release;
          report = kalman_update(ctx, U.const_view(), G.const_view(), y.const_view(), noise, perturbation, options,
                                 U_out.mutable_view());
        }
        return report_dict(report);
      },
      py::arg("ctx"), py::arg("U"), py::arg("G"), py::arg("y"), py::arg("noise_kind"), py::arg("noise_scalar"),
      py::arg("noise_matrix"), py::arg("eta"), py::arg("seed"), py::arg("step"), py::arg("formulation"),
      py::arg("on_failure"), py::arg("redraw_seed"), py::arg("output"), py::arg("U_out"));

  m.def(
      "loss_update",
      [](Context& ctx, const View& U, const View& G, const View& grad, double step, bool adaptive, double eps,
         const std::string& on_failure, std::uint64_t redraw_seed, const std::string& output, const View& U_out) {
        const LossUpdateOptions options{step, adaptive, eps, parse_failure(on_failure), redraw_seed,
                                        parse_output(output)};
        UpdateReport report;
        {
          py::gil_scoped_release release;
          report = loss_update(ctx, U.const_view(), G.const_view(), grad.const_view(), options, U_out.mutable_view());
        }
        return report_dict(report);
      },
      py::arg("ctx"), py::arg("U"), py::arg("G"), py::arg("grad"), py::arg("step"), py::arg("adaptive"),
      py::arg("eps"), py::arg("on_failure"), py::arg("redraw_seed"), py::arg("output"), py::arg("U_out"));

  m.def("nesterov_extrapolate", [](Context& ctx, const View& U_new, const View& U_old, double c, const View& out) {
    py::gil_scoped_release release;
    nesterov_extrapolate(ctx, U_new.const_view(), U_old.const_view(), c, out.mutable_view());
  });

  m.def(
      "loss_and_gradient",
      [](Context& ctx, const std::string& loss, const View& Z, const View& y, std::int64_t width,
         const std::string& noise_kind, double noise_scalar, const std::optional<View>& noise_matrix,
         const View& values, const std::optional<View>& grad) {
        const NoiseCovariance noise = make_noise(noise_kind, noise_scalar, noise_matrix);
        const Loss kind = parse_loss(loss);
        py::gil_scoped_release release;
        loss_and_gradient(ctx, kind, Z.const_view(), y.const_view(), width, noise, values.mutable_view(),
                          grad ? grad->mutable_view() : MatrixView{});
      },
      py::arg("ctx"), py::arg("loss"), py::arg("Z"), py::arg("y"), py::arg("width"), py::arg("noise_kind"),
      py::arg("noise_scalar"), py::arg("noise_matrix"), py::arg("values"), py::arg("grad"));

  m.def("ensemble_mean", [](Context& ctx, const View& U, const View& mean) {
    py::gil_scoped_release release;
    ensemble_mean(ctx, U.const_view(), mean.mutable_view());
  });
  m.def("ensemble_anomalies", [](Context& ctx, const View& U, const View& out) {
    py::gil_scoped_release release;
    ensemble_anomalies(ctx, U.const_view(), out.mutable_view());
  });
  m.def("ensemble_spread", [](Context& ctx, const View& U) {
    py::gil_scoped_release release;
    return ensemble_spread(ctx, U.const_view());
  });
  m.def("randomize", [](Context& ctx, const View& U, double scale, const View& prior_std, std::uint64_t seed,
                        const View& out) {
    py::gil_scoped_release release;
    randomize(ctx, U.const_view(), scale, prior_std.const_view(), seed, out.mutable_view());
  });
  m.def("randomize_around", [](Context& ctx, const View& mean, double scale, const View& prior_std,
                               std::uint64_t seed, const View& out) {
    py::gil_scoped_release release;
    randomize_around(ctx, mean.const_view(), scale, prior_std.const_view(), seed, out.mutable_view());
  });
  m.def("randomize_with", [](Context& ctx, const View& U, double scale, const View& xi, const View& out) {
    py::gil_scoped_release release;
    randomize_with(ctx, U.const_view(), scale, xi.const_view(), out.mutable_view());
  });

  m.def(
      "choose_formulation",
      [](std::int64_t J, std::int64_t P, std::int64_t M, const std::string& noise_kind, std::size_t element_bytes,
         std::size_t max_gain_bytes, const std::string& output) {
        const NoiseCovariance::Kind kind = noise_kind == "full"       ? NoiseCovariance::Kind::full
                                           : noise_kind == "diagonal" ? NoiseCovariance::Kind::diagonal
                                                                      : NoiseCovariance::Kind::scalar;
        return to_string(choose_formulation(J, P, M, kind, element_bytes, max_gain_bytes, parse_output(output)));
      },
      py::arg("J"), py::arg("P"), py::arg("M"), py::arg("noise_kind"), py::arg("element_bytes"),
      py::arg("max_gain_bytes"), py::arg("output") = "ensemble");
  m.def(
      "kalman_update_flops",
      [](const std::string& formulation, std::int64_t J, std::int64_t P, std::int64_t M,
         const std::string& noise_kind, const std::string& output) {
        const NoiseCovariance::Kind kind =
            noise_kind == "full" ? NoiseCovariance::Kind::full : NoiseCovariance::Kind::scalar;
        return kalman_update_flops(parse_formulation(formulation), J, P, M, kind, parse_output(output));
      },
      py::arg("formulation"), py::arg("J"), py::arg("P"), py::arg("M"), py::arg("noise_kind"),
      py::arg("output") = "ensemble");
  m.def("standard_normal", [](std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
    return standard_normal(stream_key(seed, static_cast<RandomStream>(stream)), index);
  });

  // ---- batched ensemble networks ----------------------------------------------------------------------
  m.def("network", [](const std::vector<py::dict>& specs, const std::vector<std::int64_t>& input_shape) {
    std::vector<Layer> layers;
    for (const py::dict& spec : specs) layers.push_back(parse_layer(spec));
    return Network(std::move(layers), input_shape);
  }, py::arg("layers"), py::arg("input_shape"));
  py::class_<Network>(m, "Network")
      .def_property_readonly("parameter_count", &Network::parameter_count)
      .def_property_readonly("input_shape", &Network::input_shape)
      .def_property_readonly("output_shape", &Network::output_shape)
      .def_property_readonly("state_size", &Network::state_size)
      .def("shape", &Network::shape, py::arg("index"))
      .def_property_readonly("parameters", [](const Network& n) {
        py::list out;
        for (const ParameterSlice& p : n.parameters()) {
          py::dict d;
          d["name"] = p.name;
          d["offset"] = p.offset;
          d["shape"] = p.shape;
          d["fan_in"] = p.fan_in;
          d["fan_out"] = p.fan_out;
          out.append(d);
        }
        return out;
      })
      .def("forward_workspace_bytes", [](const Network& n, std::int64_t J, std::int64_t B, const std::string& dtype) {
        return n.forward_workspace_bytes(J, B, parse_dtype(dtype));
      });
  m.def(
      "forward",
      [](Context& ctx, const Network& network, const View& U, const View& X, const View& G,
         const std::optional<View>& state_in, const std::optional<View>& state_out) {
        py::gil_scoped_release release;
        forward(ctx, network, U.const_view(), X.const_view(), G.mutable_view(),
                state_in ? state_in->const_view() : ConstMatrixView{},
                state_out ? state_out->mutable_view() : MatrixView{});
      },
      py::arg("ctx"), py::arg("network"), py::arg("U"), py::arg("X"), py::arg("G"), py::arg("state_in"),
      py::arg("state_out"));

  m.def("build_info", [] {
    const BuildInfo info = build_info();
    py::dict d;
    d["version"] = info.version;
    d["cuda"] = info.cuda;
    d["cuda_version"] = info.cuda_version;
    d["cuda_architectures"] = info.cuda_architectures;
    d["blas"] = info.blas;
    d["compiler"] = info.compiler;
    return d;
  });
  m.def("cuda_device_count", &cuda_device_count);
}
