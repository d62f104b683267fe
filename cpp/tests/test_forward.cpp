// The public network API as an embedding C++ program uses it: Network's parameter layout, forward() against
// loops written from PyTorch's definitions (dense layers, an LSTM with gates i, f, g, o), recurrent state carried
// between calls, the workspace prediction, and bad input.
#include <string>

#include "test_support.hpp"

namespace ekinet::testing {
namespace {

const ParameterSlice& slice(const Network& network, const std::string& name) {
  for (const ParameterSlice& p : network.parameters())
    if (p.name == name) return p;
  throw std::runtime_error("no parameter " + name);
}

// y = W x + b for W (out x in) stored row-major at the slice's offset, as torch.nn.Linear.
Matrix linear(const Network& net, const double* member, std::size_t layer, const Matrix& x) {
  const std::string prefix = std::to_string(layer) + ".";
  const ParameterSlice& w = slice(net, prefix + "weight");
  const ParameterSlice& b = slice(net, prefix + "bias");
  const std::int64_t out = w.shape[0], in = w.shape[1];
  Matrix y(static_cast<std::size_t>(out));
  for (std::int64_t o = 0; o < out; ++o) {
    y[o] = member[b.offset + o];
    for (std::int64_t i = 0; i < in; ++i) y[o] += member[w.offset + o * in + i] * x[i];
  }
  return y;
}

double sigmoid(double v) { return 1 / (1 + std::exp(-v)); }

class NetworkForward : public ::testing::TestWithParam<std::string> {};
INSTANTIATE_TEST_SUITE_P(Devices, NetworkForward, ::testing::ValuesIn(devices()));

TEST_P(NetworkForward, DenseLayersEqualTheirDefinition) {
  EKINET_SKIP_UNLESS_AVAILABLE(GetParam());
  const Network net({Layer::dense(4, Activation::tanh), Layer::dense(2)}, {3});
  ASSERT_EQ(net.parameter_count(), 4 * 3 + 4 + 2 * 4 + 2);
  EXPECT_EQ(slice(net, "1.weight").offset, 16);
  EXPECT_EQ(slice(net, "1.weight").shape, (std::vector<std::int64_t>{2, 4}));
  const std::int64_t J = 3, B = 2, P = net.parameter_count();
  const Matrix u = random_matrix(J, P, 1, 0.5), x = random_matrix(B, 3, 2);
  Harness harness(GetParam());
  MatrixView G = harness.zeros(J, B * 2);
  forward(harness.context(), net, harness.upload(u, J, P), harness.upload(x, B, 3), G);
  const Matrix got = harness.download(G);
  for (std::int64_t j = 0; j < J; ++j)
    for (std::int64_t b = 0; b < B; ++b) {
      Matrix hidden = linear(net, &u[j * P], 0, Matrix(x.begin() + b * 3, x.begin() + (b + 1) * 3));
      for (double& v : hidden) v = std::tanh(v);
      const Matrix out = linear(net, &u[j * P], 1, hidden);
      for (int o = 0; o < 2; ++o) EXPECT_NEAR(got[j * B * 2 + b * 2 + o], out[o], 1e-12) << j << " " << b;
    }
}

TEST_P(NetworkForward, LstmEqualsItsDefinitionAndCarriesItsState) {
  EKINET_SKIP_UNLESS_AVAILABLE(GetParam());
  const std::int64_t T = 4, F = 2, H = 3, J = 2, B = 3;
  const Network net({Layer::lstm(H), Layer::dense(1)}, {T, F});
  const Network half({Layer::lstm(H), Layer::dense(1)}, {T / 2, F});
  const std::int64_t P = net.parameter_count();
  ASSERT_EQ(P, 4 * H * F + 4 * H * H + 8 * H + H + 1);
  ASSERT_EQ(half.parameter_count(), P);
  EXPECT_EQ(slice(net, "0.weight_hh").shape, (std::vector<std::int64_t>{4 * H, H}));
  const ParameterSlice &w_ih = slice(net, "0.weight_ih"), &w_hh = slice(net, "0.weight_hh"),
                       &b_ih = slice(net, "0.bias_ih"), &b_hh = slice(net, "0.bias_hh");
  const Matrix u = random_matrix(J, P, 3, 0.5), x = random_matrix(B, T * F, 4);

  Harness harness(GetParam());
  const std::int64_t S = B * net.state_size();
  MatrixView G = harness.zeros(J, B), state = harness.zeros(J, S);
  forward(harness.context(), net, harness.upload(u, J, P), harness.upload(x, B, T * F), G, {}, state);
  const Matrix got = harness.download(G);
  for (std::int64_t j = 0; j < J; ++j) {
    const double* m = &u[j * P];
    for (std::int64_t b = 0; b < B; ++b) {
      Matrix h(H, 0.0), c(H, 0.0);
      for (std::int64_t t = 0; t < T; ++t) {
        Matrix gates(4 * H);
        for (std::int64_t g = 0; g < 4 * H; ++g) {
          gates[g] = m[b_ih.offset + g] + m[b_hh.offset + g];
          for (std::int64_t f = 0; f < F; ++f) gates[g] += m[w_ih.offset + g * F + f] * x[b * T * F + t * F + f];
          for (std::int64_t k = 0; k < H; ++k) gates[g] += m[w_hh.offset + g * H + k] * h[k];
        }
        for (std::int64_t k = 0; k < H; ++k) {  // gates i, f, g, o
          c[k] = sigmoid(gates[H + k]) * c[k] + sigmoid(gates[k]) * std::tanh(gates[2 * H + k]);
          h[k] = sigmoid(gates[3 * H + k]) * std::tanh(c[k]);
        }
      }
      EXPECT_NEAR(got[j * B + b], linear(net, m, 1, h)[0], 1e-12) << j << " " << b;
    }
  }

  // The first two steps, then the last two from the returned state, equal the four at once.
  Matrix x_first(B * 2 * F), x_last(B * 2 * F);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < 2 * F; ++i) {
      x_first[b * 2 * F + i] = x[b * T * F + i];
      x_last[b * 2 * F + i] = x[b * T * F + 2 * F + i];
    }
  MatrixView G_half = harness.zeros(J, B), middle = harness.zeros(J, S), end = harness.zeros(J, S);
  const ConstMatrixView U = harness.upload(u, J, P);
  forward(harness.context(), half, U, harness.upload(x_first, B, 2 * F), G_half, {}, middle);
  forward(harness.context(), half, U, harness.upload(x_last, B, 2 * F), G_half, middle, end);
  EXPECT_LT(max_abs_difference(harness.download(G_half), got), 1e-12);
  EXPECT_LT(max_abs_difference(harness.download(end), harness.download(state)), 1e-12);
}

TEST(NetworkApi, WorkspaceStaysWithinThePrediction) {
  const Network net({Layer::conv2d(4, 3, 1, 1, Activation::relu), Layer::maxpool2d(2, 2), Layer::flatten(),
                     Layer::dense(5)},
                    {1, 8, 8});
  const std::int64_t J = 6, B = 5, P = net.parameter_count();
  const std::vector<double> u = random_matrix(J, P, 5), x = random_matrix(B, 64, 6);
  std::vector<double> g(J * B * 5);
  auto context = make_cpu_context();
  for (int call = 0; call < 2; ++call)
    forward(*context, net, matrix_view(u.data(), J, P), matrix_view(x.data(), B, 64), matrix_view(g.data(), J, B * 5));
  EXPECT_GT(context->workspace_bytes(), 0u);
  EXPECT_LE(context->workspace_bytes(), net.forward_workspace_bytes(J, B, DType::float64));
}

TEST(NetworkApi, BadInputIsNamed) {
  EXPECT_THROW(Network({Layer::dense(3)}, {1, 4, 4}), InvalidArgument);  // dense on an image: Flatten first
  EXPECT_THROW(Network({Layer::dense(4)}, {-2, -3}), InvalidArgument);   // a positive product is not enough
  EXPECT_THROW(Network({Layer::dense(std::int64_t{1} << 40)}, {std::int64_t{1} << 40}), InvalidArgument);  // overflow
  constexpr std::int64_t huge = std::int64_t{1} << 62;
  EXPECT_THROW(Network({Layer::conv2d(2, 3, 1, huge)}, {1, 8, 8}), InvalidArgument);  // padding overflows
  EXPECT_THROW(Network({Layer::lstm(huge)}, {5, 1}), InvalidArgument);                // 4 gates x hidden
  const Network net({Layer::dense(2)}, {3});
  EXPECT_THROW(net.shape(2), InvalidArgument);  // one layer: shapes 0 (input) and 1
  EXPECT_THROW(net.parameter_offset(1), InvalidArgument);
  EXPECT_EQ(net.shape(1), std::vector<std::int64_t>{2});
  std::vector<double> u(2 * net.parameter_count(), 0.1), x(4 * 3, 1.0), g(2 * 4 * 2);
  auto context = make_cpu_context();
  auto message = [&](ConstMatrixView U, ConstMatrixView X) {
    try {
      forward(*context, net, U, X, matrix_view(g.data(), 2, 8));
    } catch (const InvalidArgument& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(matrix_view(u.data(), 2, 7), matrix_view(x.data(), 4, 3))
                .find("U has 7 parameters per member but the network has 8"),
            std::string::npos);
  EXPECT_NE(message(matrix_view(u.data(), 2, 8), matrix_view(x.data(), 6, 2)).find("X"), std::string::npos);
  x[4] = std::nan("");
  EXPECT_NE(message(matrix_view(u.data(), 2, 8), matrix_view(x.data(), 4, 3)).find("X contains 1 NaN/Inf value"),
            std::string::npos);
}

}  // namespace
}  // namespace ekinet::testing
