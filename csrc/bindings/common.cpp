#include "common.hpp"

#include <Python.h>

namespace gpt2gen::bindings {

std::string shape_str(const std::vector<py::ssize_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

bool is_mapping(py::handle obj) {
  return py::isinstance(obj, py::module_::import("collections.abc").attr("Mapping"));
}

KVFormat kv_format(py::handle kv_cache_dtype, const std::string& model_dtype) {
  if (!py::isinstance<py::str>(kv_cache_dtype))
    throw py::type_error("kv_cache_dtype must be a str, 'float32' or 'bf16', got " +
                         std::string(py::str(py::type::handle_of(kv_cache_dtype))));
  const std::string name = py::str(kv_cache_dtype);
  if (name == "float32") return KVFormat::native;
  if (name != "bf16")
    throw py::value_error("kv_cache_dtype must be 'float32' or 'bf16', got '" + name + "'");
  if (model_dtype != "float32")
    throw py::value_error("kv_cache_dtype='bf16' needs float32 parameters; this model's are " +
                          model_dtype + " (its KV cache stays " + model_dtype + ")");
  return KVFormat::bf16;
}

std::vector<int32_t> token_ids(py::handle obj, int n_vocab, const std::string& what) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(what + " must be a sequence of integer token ids");
  const char kind = arr.dtype().kind();
  if ((arr.size() > 0 || arr.ndim() == 0) && kind != 'i' && kind != 'u')
    throw py::type_error(what + " must be integer token ids, got dtype " +
                         std::string(py::str(arr.dtype())));
  if (arr.ndim() != 1)
    throw py::value_error(what + " must be 1-D, got shape " +
                          shape_str({arr.shape(), arr.shape() + arr.ndim()}));
  // A fresh contiguous, aligned copy (ids are few): any stride, byte order or alignment reads
  // right.
  py::module_ np = py::module_::import("numpy");
  if (kind == 'u') {  // compare unsigned: uint64 ids above 2^63 would wrap in int64
    auto u = py::array_t<uint64_t>(np.attr("array")(arr, "uint64"));
    for (py::ssize_t i = 0; i < u.size(); ++i)
      if (u.data()[i] >= uint64_t(n_vocab))
        throw py::value_error(what + "[" + std::to_string(i) +
                              "] = " + std::to_string(u.data()[i]) +
                              " is not a token id: the vocabulary "
                              "has ids 0.." +
                              std::to_string(n_vocab - 1));
  }
  auto ids = py::array_t<int64_t>(np.attr("array")(arr, "int64"));
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (py::ssize_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids.data()[i];
    if (id < 0 || id >= n_vocab)
      throw py::value_error(what + "[" + std::to_string(i) + "] = " + std::to_string(id) +
                            " is not a token id: the vocabulary has ids 0.." +
                            std::to_string(n_vocab - 1));
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

void check_signals() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

}  // namespace gpt2gen::bindings
