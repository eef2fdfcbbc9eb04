// The parameters: a picoGPT-layout dict of NumPy arrays, checked array by array and read in
// place (never copied).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "model.hpp"

namespace gpt2gen::bindings {

namespace py = pybind11;

// A GPT-2 whose weights are views of the caller's arrays, which it keeps alive.
class Model {
 public:
  Model(py::object params, py::object n_head);

  template <typename F>
  auto visit(F&& f) const {
    return std::visit(std::forward<F>(f), weights_);
  }
  py::dict addresses() const;
  std::string dtype() const;

 private:
  template <typename T>
  void init(py::handle params, int n_head);

  std::variant<Weights<float>, Weights<double>> weights_;
  py::list arrays_;
  std::vector<std::pair<std::string, uintptr_t>> addresses_;
};

// A float32 linear {"w": array or packed dict, "b": array} of [d_in, d_out] read in place, as
// Model reads a block's (the testing module's kernel tests); keep_alive holds its arrays.
LinearWeights<float> read_linear(py::handle lin, int d_in, int d_out, py::list& keep_alive);

}  // namespace gpt2gen::bindings
