// The _testing module: each kernel on its own and the token-choice distribution, for the tests
// against the NumPy reference and transformers. Not part of the public API.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "backend.hpp"
#include "common.hpp"
#include "forward_pass.hpp"
#include "generation.hpp"
#include "params.hpp"
#include "sampling.hpp"
#include "thread_governor.hpp"

namespace gpt2gen::bindings {

namespace {

// run(sampler, logits) on a Sampler set up with options, the prompt and the output so far.
template <typename Run>
auto with_sampler(py::handle logits_obj, py::handle prompt_obj, py::handle output_obj,
                  const GenerationOptions& options, Run&& run) {
  return dispatch_array(logits_obj, [&](auto t) {
    using T = decltype(t);
    if (py::reinterpret_borrow<py::array>(logits_obj).ndim() != 1)
      throw py::value_error("logits must be 1-D");
    auto logits = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(logits_obj);
    const int n_vocab = static_cast<int>(logits.size());
    if (n_vocab == 0) throw py::value_error("logits must not be empty");
    options.sampling.validate(n_vocab);
    Sampler sampler(options.sampling, n_vocab, token_ids(prompt_obj, n_vocab, "prompt_ids"));
    for (int32_t token : token_ids(output_obj, n_vocab, "output_ids")) sampler.observe(token);
    return run(sampler, logits.data());
  });
}

// The distribution sampling draws from after every processor, for tests against transformers.
py::array processed_probabilities(py::handle logits_obj, py::handle prompt_obj,
                                  py::handle output_obj, const GenerationOptions& options) {
  return with_sampler(logits_obj, prompt_obj, output_obj, options,
                      [](Sampler& sampler, const auto* logits) {
                        const std::vector<double> probs = sampler.probabilities(logits);
                        return py::array(py::ssize_t(probs.size()), probs.data());
                      });
}

// The token the scheduler would choose from these logits.
int32_t choose_token(py::handle logits_obj, py::handle prompt_obj, py::handle output_obj,
                     const GenerationOptions& options) {
  return with_sampler(logits_obj, prompt_obj, output_obj, options,
                      [](Sampler& sampler, const auto* logits) {
                        return sampler.choose(logits, -1, nullptr, nullptr);
                      });
}

// --- kernels, one by one, for the tests against the NumPy reference -------------------------

template <typename T>
py::array_t<T> as_array(py::handle obj, const char* name, int ndim) {
  if (!py::isinstance<py::array_t<T>>(obj))
    throw py::type_error(std::string(name) + " must be a " + dtype_name<T>() + " array");
  auto arr = py::reinterpret_borrow<py::array_t<T>>(obj);
  if (!(arr.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + " must be C-contiguous");
  if (arr.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D");
  return arr;
}

void require(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}

void bind_kernels(py::module_& m) {
  m.def("layer_norm", [](py::handle x_obj, py::handle g_obj, py::handle b_obj) {
    return dispatch_array(x_obj, [&](auto t) -> py::object {
      using T = decltype(t);
      auto x = as_array<T>(x_obj, "x", 2), g = as_array<T>(g_obj, "g", 1),
           b = as_array<T>(b_obj, "b", 1);
      const int n = x.shape(0), d = x.shape(1);
      require(d > 0 && g.shape(0) == d && b.shape(0) == d, "g and b must have x.shape[1] elements");
      py::array_t<T> out({n, d});
      T* o = out.mutable_data();
      py::gil_scoped_release release;
      backend().kernels<T>().layer_norm(x.data(), n, d, {g.data(), b.data()}, o);
      return out;
    });
  });
  m.def("gelu", [](py::handle x_obj) {
    return dispatch_array(x_obj, [&](auto t) -> py::object {
      using T = decltype(t);
      auto x = as_array<T>(x_obj, "x", 1);
      py::array_t<T> out(x.size());
      std::copy(x.data(), x.data() + x.size(), out.mutable_data());
      backend().kernels<T>().gelu(out.mutable_data(), out.size());
      return out;
    });
  });
  m.def("softmax", [](py::handle x_obj) {
    return dispatch_array(x_obj, [&](auto t) -> py::object {
      using T = decltype(t);
      auto x = as_array<T>(x_obj, "x", 1);
      require(x.size() > 0, "x must not be empty");
      py::array_t<T> out(x.size());
      std::copy(x.data(), x.data() + x.size(), out.mutable_data());
      backend().kernels<T>().softmax(out.mutable_data(), out.size());
      return out;
    });
  });
  m.def("linear", [](py::handle x_obj, py::handle w_obj, py::handle b_obj) {
    return dispatch_array(x_obj, [&](auto t) -> py::object {
      using T = decltype(t);
      auto x = as_array<T>(x_obj, "x", 2), w = as_array<T>(w_obj, "w", 2),
           b = as_array<T>(b_obj, "b", 1);
      const int n = x.shape(0), d_in = x.shape(1), d_out = w.shape(1);
      require(w.shape(0) == d_in && b.shape(0) == d_out,
              "shapes must be x[n, in], w[in, out], b[out]");
      py::array_t<T> out({n, d_out});
      T* o = out.mutable_data();
      py::gil_scoped_release release;
      backend().kernels<T>().linear(x.data(), n, {w.data(), b.data(), d_in, d_out}, o);
      return out;
    });
  });
  // linear's float32 kernels with w in any format: lin = {"w": array or packed dict, "b": array}.
  m.def("packed_linear", [](py::array_t<float> x, py::handle lin, int d_out) {
    require(x.ndim() == 2 && (x.flags() & py::array::c_style), "x must be a C-contiguous [n, in]");
    const int n = x.shape(0), d_in = x.shape(1);
    py::list keep_alive;
    const LinearWeights<float> weights = read_linear(lin, d_in, d_out, keep_alive);
    py::array_t<float> out({n, d_out});
    float* o = out.mutable_data();
    py::gil_scoped_release release;
    backend().kernels<float>().linear(x.data(), n, weights, o);
    return out;
  });
  m.def("unembed", [](py::handle x_obj, py::handle wte_obj) {
    return dispatch_array(x_obj, [&](auto t) -> py::object {
      using T = decltype(t);
      auto x = as_array<T>(x_obj, "x", 2), wte = as_array<T>(wte_obj, "wte", 2);
      const int n = x.shape(0), d = x.shape(1), n_vocab = wte.shape(0);
      require(wte.shape(1) == d, "shapes must be x[n, d], wte[n_vocab, d]");
      py::array_t<T> out({n, n_vocab});
      T* o = out.mutable_data();
      py::gil_scoped_release release;
      backend().kernels<T>().unembed(x.data(), n, wte.data(), Packed{}, n_vocab, d, o);
      return out;
    });
  });
  m.def("embedding", [](py::handle wte_obj, py::handle wpe_obj, py::handle ids_obj, int pos0) {
    return dispatch_array(wte_obj, [&](auto t) -> py::object {
      using T = decltype(t);
      auto wte = as_array<T>(wte_obj, "wte", 2), wpe = as_array<T>(wpe_obj, "wpe", 2);
      const int d = wte.shape(1);
      require(wpe.shape(1) == d, "wte and wpe must have the same width");
      const std::vector<int32_t> ids = token_ids(ids_obj, wte.shape(0), "ids");
      require(pos0 >= 0 && pos0 + ids.size() <= size_t(wpe.shape(0)), "positions exceed wpe");
      py::array_t<T> out({py::ssize_t(ids.size()), py::ssize_t(d)});
      backend().kernels<T>().embedding(wte.data(), Packed{}, wpe.data(), d, ids.data(), ids.size(),
                                       pos0, out.mutable_data());
      return out;
    });
  });
  m.def(
      "attention",
      [](py::handle qkv_obj, int n_head, py::handle kv_cache_dtype) {
        return dispatch_array(qkv_obj, [&](auto t) -> py::object {
          using T = decltype(t);
          auto qkv = as_array<T>(qkv_obj, "qkv", 2);
          const int n = qkv.shape(0), d = qkv.shape(1) / 3;
          require(n > 0 && n_head > 0 && qkv.shape(1) == 3 * d && d % n_head == 0,
                  "qkv must be [n, 3 * n_embd] with n_head dividing n_embd");
          const KVFormat format = kv_format(kv_cache_dtype, dtype_name<T>());
          py::array_t<T> out({n, d});
          T* o = out.mutable_data();
          py::gil_scoped_release release;
          const size_t bytes = size_t(n) * d * (format == KVFormat::bf16 ? 2 : sizeof(T));
          std::vector<unsigned char> keys(bytes), values(bytes);
          std::vector<T> scores(size_t(n_head) * n);
          const KVLayer cache{keys.data(), values.data(), n, format};
          const Kernels<T>& k = backend().kernels<T>();
          k.kv_cache_append(qkv.data(), n, d, n_head, 0, cache);
          k.causal_attention(qkv.data(), n, d, n_head, 0, cache, scores.data(), o);
          return out;
        });
      },
      py::arg("qkv"), py::arg("n_head"), py::arg("kv_cache_dtype") = "float32");
}

// Greedy decoding through forward_pass with a KV cache, as the scheduler runs it: the logits
// [n_steps, n_vocab] each token was chosen from (the prompt's in chunks of chunk_rows).
py::array cached_decode_logits(const Model& model, py::handle prompt_obj, int n_steps,
                               int chunk_rows) {
  return model.visit([&](const auto& w) -> py::array {
    using T = typename std::decay_t<decltype(w)>::value_type;
    std::vector<int32_t> tokens = token_ids(prompt_obj, w.n_vocab, "prompt");
    require(!tokens.empty() && n_steps >= 1 && chunk_rows >= 1 &&
                tokens.size() + n_steps <= size_t(w.n_ctx),
            "need a prompt, n_steps >= 1 and chunk_rows >= 1 within n_ctx");
    py::array_t<T> out({py::ssize_t(n_steps), py::ssize_t(w.n_vocab)});
    T* logits = out.mutable_data();
    py::gil_scoped_release release;
    const ThreadPoolReleaser caller_thread;  // as the engine's own whole-sequence calls
    KVCache<T> cache(w, static_cast<int>(tokens.size()) + n_steps);
    Workspace<T> workspace(w, chunk_rows, cache.capacity);
    for (int step = 0; step < n_steps; ++step) {
      T* row = logits + size_t(step) * w.n_vocab;
      while (cache.length < int(tokens.size())) {
        Chunk<T> chunk{&cache, tokens.data() + cache.length,
                       std::min(chunk_rows, int(tokens.size()) - cache.length)};
        const int last = chunk.n - 1;
        forward_pass(w, &chunk, 1, workspace, &last, 1, row);
      }
      tokens.push_back(int32_t(std::max_element(row, row + w.n_vocab) - row));
    }
    return out;
  });
}

}  // namespace

}  // namespace gpt2gen::bindings

using namespace gpt2gen;
using namespace gpt2gen::bindings;

PYBIND11_MODULE(_testing, m) {
  m.doc() = "gpt2gen's kernels one by one, for tests and benchmarks";
  py::module_::import("gpt2gen._core");  // GenerationOptions
  m.def("processed_probabilities", &processed_probabilities, py::arg("logits"),
        py::arg("prompt_ids"), py::arg("output_ids"), py::arg("options"));
  m.def("choose_token", &choose_token, py::arg("logits"), py::arg("prompt_ids"),
        py::arg("output_ids"), py::arg("options"));
  m.def("cached_decode_logits", &cached_decode_logits, py::arg("model"), py::arg("prompt"),
        py::arg("n_steps"), py::arg("chunk_rows") = 256);
  bind_kernels(m);
  py::class_<ThreadGovernor>(m, "ThreadGovernor",
                             "The thread-count logic alone, fed synthetic step times.")
      .def(py::init<int>(), py::arg("first_guess") = 0)
      .def("choose", &ThreadGovernor::choose, py::arg("rows"), py::arg("allowed"))
      .def("record", &ThreadGovernor::record, py::arg("rows"), py::arg("threads"),
           py::arg("seconds"))
      .def_property_readonly("current", &ThreadGovernor::current);
}
