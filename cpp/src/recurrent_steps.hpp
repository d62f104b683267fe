// A recurrent layer step by step out of the backend's batched primitives: per step, the input projection and
// the recurrent product as batched GEMMs over every member into one small gates buffer, then the bias and the
// cell. The schedule of a backend whose primitives are each one launch over all members (CUDA).
#pragma once

#include "backend.hpp"

namespace ekinet::detail {

template <class T>
void recurrent_by_steps(Backend<T>& backend, const RecurrentLayer<T>& layer) {
  const i64 count = layer.members, B = layer.examples, steps = layer.steps, hidden = layer.hidden;
  const i64 features = layer.features, gates = layer.gates(), ldu = layer.params_stride;
  const T* w_ih = layer.params;
  const T* w_hh = w_ih + gates * features;
  const T* b_ih = w_hh + gates * hidden;
  const T* b_hh = b_ih + gates;
  const i64 h_ld = steps * hidden, h_member = layer.h_member_stride();

  Workspace& workspace = backend.workspace();
  T* pre = workspace.take<T>(count * B * gates);  // one step's gates of every member
  T* bias = workspace.take<T>(count * gates);     // b_ih + b_hh, so that each step adds one bias
  T* c = layer.lstm ? workspace.take<T>(count * B * hidden) : nullptr;
  const i64 pre_member = B * gates;
  backend.axpby(count, gates, T{1}, b_ih, ldu, T{1}, b_hh, ldu, bias, gates);
  if (layer.lstm) {
    if (layer.c0 != nullptr) {
      backend.copy_strided(count, B, hidden, layer.c0, hidden, layer.state_in_stride, c, hidden, B * hidden);
    } else {
      backend.fill_strided(count, B, hidden, T{0}, c, hidden, B * hidden);
    }
  }
  for (i64 t = 0; t < steps; ++t) {
    backend.gemm_strided_batched(Trans::yes, Trans::no, gates, B, features, T{1}, w_ih, features, ldu,
                                 layer.x + t * layer.x_ld, layer.x_ld * steps, layer.x_member_stride, T{0}, pre,
                                 gates, pre_member, count);
    if (t > 0 || layer.h0 != nullptr) {  // h_{-1} = 0 without a given state: nothing to add
      const T* previous = t > 0 ? layer.h + (t - 1) * hidden : layer.h0;
      const i64 previous_ld = t > 0 ? h_ld : hidden, previous_member = t > 0 ? h_member : layer.state_in_stride;
      backend.gemm_strided_batched(Trans::yes, Trans::no, gates, B, hidden, T{1}, w_hh, hidden, ldu, previous,
                                   previous_ld, previous_member, T{1}, pre, gates, pre_member, count);
    }
    if (layer.lstm) {
      backend.bias_activation(count, B, gates, pre, gates, pre_member, bias, gates, false, Activation::identity);
      backend.lstm_cell(count, B, hidden, pre, gates, pre_member, c, B * hidden, layer.h + t * hidden, h_ld,
                        h_member);
    } else {
      backend.bias_activation(count, B, hidden, pre, gates, pre_member, bias, gates, false, Activation::tanh);
      backend.copy_strided(count, B, hidden, pre, gates, pre_member, layer.h + t * hidden, h_ld, h_member);
    }
  }
  if (layer.c_out != nullptr) {
    backend.copy_strided(count, B, hidden, c, hidden, B * hidden, layer.c_out, hidden, layer.c_out_stride);
  }
}

}  // namespace ekinet::detail
