// Helpers shared by the bindings: reading NumPy arrays and token ids into clear Python errors.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model.hpp"

namespace gpt2gen::bindings {

namespace py = pybind11;

std::string shape_str(const std::vector<py::ssize_t>& shape);

template <typename T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

bool is_mapping(py::handle obj);

// Calls f(T{}) with T the dtype of x (float32 or float64).
template <typename F>
auto dispatch_array(py::handle x, F&& f) {
  if (py::isinstance<py::array_t<float>>(x)) return f(float{});
  if (py::isinstance<py::array_t<double>>(x)) return f(double{});
  throw py::type_error("expected a float32 or float64 array");
}

// The KV cache format asked for by kv_cache_dtype ("float32": the model's dtype, "bf16": float32
// models only) for a model of dtype model_dtype; ValueError/TypeError naming kv_cache_dtype.
KVFormat kv_format(py::handle kv_cache_dtype, const std::string& model_dtype);

// Token ids from any 1-D sequence of integers, range-checked against the vocabulary.
std::vector<int32_t> token_ids(py::handle obj, int n_vocab, const std::string& what);

// Raises the pending Python exception (KeyboardInterrupt on Ctrl-C) if a signal arrived; called
// without the GIL between the steps of a long call.
void check_signals();

}  // namespace gpt2gen::bindings
