// pybind11 bindings: the parameters are read in place from the caller's NumPy arrays (never
// copied), every input is validated into a clear Python exception, and the GIL is released
// around the C++ work.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "backend.hpp"
#include "decode.hpp"
#include "model.hpp"

namespace py = pybind11;
using namespace gpt2gen;

namespace {

std::string shape_str(const std::vector<py::ssize_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

template <typename T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

py::ssize_t blocks_of(py::ssize_t n) { return (n + kQuantBlock - 1) / kQuantBlock; }

bool is_mapping(py::handle obj) {
  return py::isinstance(obj, py::module_::import("collections.abc").attr("Mapping"));
}

// Calls f.template operator()<T>() with T the dtype of x (float32 or float64).
template <typename F>
auto dispatch_array(py::handle x, F&& f) {
  if (py::isinstance<py::array_t<float>>(x)) return f(float{});
  if (py::isinstance<py::array_t<double>>(x)) return f(double{});
  throw py::type_error("expected a float32 or float64 array");
}

// The options of python/gpt2gen/engine.py's sampling_options(), already type-checked there.
SamplingOptions sampling_options(const py::dict& kw) {
  SamplingOptions s;
  s.temperature = kw["temperature"].cast<double>();
  s.top_k = kw["top_k"].cast<int>();
  s.top_p = kw["top_p"].cast<double>();
  s.min_p = kw["min_p"].cast<double>();
  s.repetition_penalty = kw["repetition_penalty"].cast<double>();
  s.presence_penalty = kw["presence_penalty"].cast<double>();
  s.frequency_penalty = kw["frequency_penalty"].cast<double>();
  return s;
}

// Walks the picoGPT parameter dict, checks every array and takes its data pointer.
template <typename T>
class ParamReader {
 public:
  py::list arrays;  // keeps every array alive as long as the model
  std::vector<std::pair<std::string, uintptr_t>> addresses;

  py::object child(py::handle node, const char* key, const std::string& path) {
    const std::string child_path = path.empty() ? key : path + "." + key;
    if (!is_mapping(node))
      throw py::type_error("params" + (path.empty() ? "" : " entry '" + path + "'") +
                           " must be a dict, got " + std::string(py::str(node.get_type())));
    if (!node.contains(key)) throw py::value_error("params is missing '" + child_path + "'");
    return node[key];
  }

  // The array at node[key]: dtype U, the given shape, C-contiguous and aligned, read in place.
  template <typename U>
  const U* typed_array(py::handle node, const char* key, const std::string& path,
                       const std::vector<py::ssize_t>& shape, const std::string& dtype_rule) {
    const std::string name = path.empty() ? key : path + "." + key;
    py::object obj = child(node, key, path);
    if (!py::isinstance<py::array>(obj))
      throw py::type_error("params '" + name + "' must be a NumPy array, got " +
                           std::string(py::str(obj.get_type())));
    py::array arr = py::reinterpret_borrow<py::array>(obj);
    if (!py::isinstance<py::array_t<U>>(arr))
      throw py::type_error("params '" + name + "' has dtype " + std::string(py::str(arr.dtype())) +
                           " but " + dtype_rule);
    std::vector<py::ssize_t> actual(arr.shape(), arr.shape() + arr.ndim());
    if (actual != shape)
      throw py::value_error("params '" + name + "' has shape " + shape_str(actual) +
                            ", expected " + shape_str(shape));
    constexpr int kAligned = 0x0100;  // NPY_ARRAY_ALIGNED
    if (!(arr.flags() & py::array::c_style) || !(arr.flags() & kAligned))
      throw py::type_error("params '" + name +
                           "' is not a C-contiguous aligned array; gpt2gen reads parameters in "
                           "place, so pass np.ascontiguousarray(...) of it");
    arrays.append(arr);
    const U* data = static_cast<const U*>(arr.data());
    addresses.emplace_back(name, reinterpret_cast<uintptr_t>(data));
    return data;
  }

  const T* array(py::handle node, const char* key, const std::string& path,
                 const std::vector<py::ssize_t>& shape) {
    return typed_array<T>(node, key, path, shape,
                          std::string("'wte' has dtype ") + dtype_name<T>() +
                              ": all parameters must share one dtype, float32 or float64 "
                              "(gpt2gen reads them in place and never converts them silently)");
  }

  // node[key] as a matrix [rows, cols]: an array of the parameters' dtype, or a packed dict
  // {"format": "bf16", "data": uint16} / {"format": "int8", "data": int8, "scales": float32
  // scales_shape} made by gpt2gen.pack_params.
  const T* matrix(py::handle node, const char* key, const std::string& path, py::ssize_t rows,
                  py::ssize_t cols, const std::vector<py::ssize_t>& scales_shape, Packed& packed) {
    py::object m = child(node, key, path);
    if (!is_mapping(m)) return array(node, key, path, {rows, cols});
    const std::string p = path.empty() ? key : path + "." + key;
    if (!std::is_same_v<T, float>)
      throw py::type_error("params '" + p + "' is packed, which only float32 parameters can be");
    const std::string format = py::str(child(m, "format", p));
    const std::string rule = "'" + p + "' is packed as " + format;
    if (format == "bf16") {
      packed = {WeightFormat::bf16, typed_array<uint16_t>(m, "data", p, {rows, cols}, rule + ", whose data is uint16"), nullptr};
    } else if (format == "int8") {
      packed = {WeightFormat::int8, typed_array<int8_t>(m, "data", p, {rows, cols}, rule + ", whose data is int8"),
                typed_array<float>(m, "scales", p, scales_shape, rule + ", whose scales are float32")};
    } else {
      throw py::value_error("params '" + p + ".format' is '" + format +
                            "'; packed formats are 'bf16' and 'int8'");
    }
    return nullptr;
  }

  LayerNormWeights<T> layer_norm(py::handle node, const char* key, const std::string& path,
                                 py::ssize_t d) {
    py::object ln = child(node, key, path);
    const std::string p = path.empty() ? key : path + "." + key;
    return {array(ln, "g", p, {d}), array(ln, "b", p, {d})};
  }

  LinearWeights<T> linear(py::handle node, const char* key, const std::string& path,
                          py::ssize_t d_in, py::ssize_t d_out) {
    py::object lin = child(node, key, path);
    const std::string p = path + "." + key;
    LinearWeights<T> out{nullptr, array(lin, "b", p, {d_out}), static_cast<int>(d_in),
                         static_cast<int>(d_out)};
    out.w = matrix(lin, "w", p, d_in, d_out, {blocks_of(d_in), d_out}, out.packed);
    return out;
  }
};

py::ssize_t checked_dim(py::ssize_t d, const char* what) {
  if (d < 1 || d > std::numeric_limits<int32_t>::max())
    throw py::value_error(std::string(what) + " must be between 1 and 2^31 - 1, got " +
                          std::to_string(d));
  return d;
}

template <typename T>
Weights<T> read_weights(py::handle params, int n_head, ParamReader<T>& reader) {
  Weights<T> w;
  // The shapes come from wte (or its packed data) and wpe; every array is then checked by them.
  py::object wte_node = reader.child(params, "wte", "");
  py::object wte_shape = is_mapping(wte_node) ? reader.child(wte_node, "data", "wte") : wte_node;
  py::object wpe_shape = reader.child(params, "wpe", "");
  for (auto [name, obj] : {std::pair{"wte", wte_shape}, std::pair{"wpe", wpe_shape}})
    if (!py::isinstance<py::array>(obj))
      throw py::type_error(std::string("params '") + name + "' must be a NumPy array, got " +
                           std::string(py::str(obj.get_type())));
  py::array wte = wte_shape, wpe = wpe_shape;
  if (wte.ndim() != 2)
    throw py::value_error("params 'wte' must be 2-D [n_vocab, n_embd], got " +
                          std::to_string(wte.ndim()) + "-D");
  if (wpe.ndim() != 2)
    throw py::value_error("params 'wpe' must be 2-D [n_ctx, n_embd], got " +
                          std::to_string(wpe.ndim()) + "-D");
  const py::ssize_t n_vocab = checked_dim(wte.shape(0), "n_vocab (wte.shape[0])");
  const py::ssize_t d = checked_dim(wte.shape(1), "n_embd (wte.shape[1])");
  const py::ssize_t n_ctx = checked_dim(wpe.shape(0), "n_ctx (wpe.shape[0])");
  w.n_vocab = static_cast<int>(n_vocab);
  w.n_embd = static_cast<int>(d);
  w.n_ctx = static_cast<int>(n_ctx);
  w.n_head = n_head;
  w.wte = reader.matrix(params, "wte", "", n_vocab, d, {n_vocab, blocks_of(d)}, w.wte_packed);
  w.wpe = reader.array(params, "wpe", "", {n_ctx, d});
  w.ln_f = reader.layer_norm(params, "ln_f", "", d);

  py::object blocks = reader.child(params, "blocks", "");
  if (!py::isinstance<py::sequence>(blocks) || py::isinstance<py::str>(blocks))
    throw py::type_error("params 'blocks' must be a list of dicts");
  const py::sequence block_list = py::reinterpret_borrow<py::sequence>(blocks);
  if (block_list.size() > 0 && d % n_head != 0)
    throw py::value_error("n_head = " + std::to_string(n_head) + " does not divide n_embd = " +
                          std::to_string(d) + "; attention heads must split n_embd evenly");
  py::ssize_t d_ff = 0;
  for (size_t i = 0; i < block_list.size(); ++i) {
    const std::string path = "blocks[" + std::to_string(i) + "]";
    py::handle node = block_list[i];
    if (d_ff == 0) {
      // The feed-forward width, from the bias (never packed).
      py::object fc_b = reader.child(reader.child(reader.child(node, "mlp", path), "c_fc",
                                                  path + ".mlp"),
                                     "b", path + ".mlp.c_fc");
      if (py::isinstance<py::array>(fc_b) && py::array(fc_b).ndim() == 1)
        d_ff = checked_dim(py::array(fc_b).shape(0), "the feed-forward width (c_fc.b.shape[0])");
      else
        d_ff = 4 * d;  // let array() report the problem against GPT-2's usual shape
    }
    BlockWeights<T> b;
    b.ln_1 = reader.layer_norm(node, "ln_1", path, d);
    py::object attn = reader.child(node, "attn", path);
    b.c_attn = reader.linear(attn, "c_attn", path + ".attn", d, 3 * d);
    b.attn_proj = reader.linear(attn, "c_proj", path + ".attn", d, d);
    b.ln_2 = reader.layer_norm(node, "ln_2", path, d);
    py::object mlp = reader.child(node, "mlp", path);
    b.c_fc = reader.linear(mlp, "c_fc", path + ".mlp", d, d_ff);
    b.mlp_proj = reader.linear(mlp, "c_proj", path + ".mlp", d_ff, d);
    w.blocks.push_back(b);
  }
  return w;
}

// Token ids from any 1-D sequence of integers, range-checked against the vocabulary.
std::vector<int32_t> token_ids(py::handle obj, int n_vocab, const char* what) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(what) + " must be a sequence of integer token ids");
  const char kind = arr.dtype().kind();
  if ((arr.size() > 0 || arr.ndim() == 0) && kind != 'i' && kind != 'u')
    throw py::type_error(std::string(what) + " must be integer token ids, got dtype " +
                         std::string(py::str(arr.dtype())));
  if (arr.ndim() != 1)
    throw py::value_error(std::string(what) + " must be 1-D, got shape " +
                          shape_str({arr.shape(), arr.shape() + arr.ndim()}));
  // A fresh contiguous, aligned copy (ids are few): any stride, byte order or alignment reads right.
  py::module_ np = py::module_::import("numpy");
  if (kind == 'u') {  // compare unsigned: uint64 ids above 2^63 would wrap in int64
    auto u = py::array_t<uint64_t>(np.attr("array")(arr, "uint64"));
    for (py::ssize_t i = 0; i < u.size(); ++i)
      if (u.data()[i] >= uint64_t(n_vocab))
        throw py::value_error(std::string(what) + "[" + std::to_string(i) + "] = " +
                              std::to_string(u.data()[i]) + " is not a token id: the vocabulary "
                              "has ids 0.." + std::to_string(n_vocab - 1));
  }
  auto ids = py::array_t<int64_t>(np.attr("array")(arr, "int64"));
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (py::ssize_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids.data()[i];
    if (id < 0 || id >= n_vocab)
      throw py::value_error(std::string(what) + "[" + std::to_string(i) + "] = " +
                            std::to_string(id) + " is not a token id: the vocabulary has ids 0.." +
                            std::to_string(n_vocab - 1));
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

// A GPT-2 whose weights are views of the caller's arrays.
class Model {
 public:
  Model(py::object params, py::object n_head_obj) {
    if (!py::isinstance<py::int_>(n_head_obj) || py::isinstance<py::bool_>(n_head_obj))
      throw py::type_error("n_head must be an int");
    if (n_head_obj < py::int_(1) || n_head_obj > py::int_(std::numeric_limits<int32_t>::max()))
      throw py::value_error("n_head must be a positive int below 2^31, got " +
                            std::string(py::str(n_head_obj)));
    const long long n_head = n_head_obj.cast<long long>();
    if (!is_mapping(params))
      throw py::type_error("params must be a dict in picoGPT's layout (wte, wpe, blocks, ln_f)");
    py::object wte = py::none();
    if (params.contains("wte")) wte = params["wte"];
    if (is_mapping(wte))  // packed (bf16 / int8) weights belong to float32 models
      init<float>(params, static_cast<int>(n_head));
    else if (py::isinstance<py::array_t<float>>(wte))
      init<float>(params, static_cast<int>(n_head));
    else if (py::isinstance<py::array_t<double>>(wte))
      init<double>(params, static_cast<int>(n_head));
    else if (py::isinstance<py::array>(wte))
      throw py::type_error("params 'wte' has dtype " +
                           std::string(py::str(py::array(wte).dtype())) +
                           "; gpt2gen reads float32 or float64 parameters in place, convert "
                           "them once (e.g. arr.astype(np.float32))");
    else
      init<float>(params, static_cast<int>(n_head));  // reports the missing/non-array 'wte'
  }

  py::array forward(py::handle inputs) {
    return std::visit(
        [&](auto& w) -> py::array {
          using T = typename std::decay_t<decltype(w)>::value_type;
          const std::vector<int32_t> ids = token_ids(inputs, w.n_vocab, "inputs");
          check_length(w, ids.size(), 0);
          py::array_t<T> logits({py::ssize_t(ids.size()), py::ssize_t(w.n_vocab)});
          T* out = logits.mutable_data();
          {
            py::gil_scoped_release release;
            gpt2gen::forward<T>(w, ids, out);
          }
          return logits;
        },
        weights_);
  }

  // Generation options, already type-checked by python/gpt2gen/engine.py; ranges are checked in
  // C++ (SamplingOptions::validate, BatchGenerator) and arrive as ValueError.
  struct Request {
    std::vector<std::vector<int32_t>> prompts;
    GenerationOptions options;
  };

  template <typename W>
  Request request(const W& w, const py::list& prompts, int max_new_tokens, const py::dict& kw) const {
    Request r;
    GenerationOptions& o = r.options;
    o.max_new_tokens = max_new_tokens;
    o.slide_context = kw["slide_context"].cast<bool>();
    std::vector<size_t> lengths;  // a hopeless request fails before its prompts are converted
    for (py::handle p : prompts) lengths.push_back(py::hasattr(p, "__len__") ? py::len(p) : 0);
    check_memory(w, lengths, o);
    for (size_t i = 0; i < prompts.size(); ++i)
      r.prompts.push_back(token_ids(prompts[i], w.n_vocab,
                                    prompts.size() > 1 ? ("inputs[" + std::to_string(i) + "]").c_str()
                                                       : "inputs"));
    o.sampling = sampling_options(kw);
    o.seeds = kw["seeds"].cast<std::vector<uint64_t>>();
    o.eos_token_ids = kw["eos_token_ids"].cast<std::vector<int32_t>>();
    for (int32_t eos : o.eos_token_ids)
      if (eos < 0 || eos >= w.n_vocab)
        throw py::value_error("eos_token_id " + std::to_string(eos) +
                              " is not a token id: the vocabulary has ids 0.." +
                              std::to_string(w.n_vocab - 1));
    o.top_logprobs = kw["top_logprobs"].cast<int>();
    return r;
  }

  py::list generate(const py::list& prompts, int max_new_tokens, const py::dict& kw,
                    py::object on_token, py::object cancel);

  py::object start(const py::list& prompts, int max_new_tokens, const py::dict& kw);

  py::array score(py::handle inputs) {
    return std::visit(
        [&](auto& w) -> py::array {
          using T = typename std::decay_t<decltype(w)>::value_type;
          const std::vector<int32_t> ids = token_ids(inputs, w.n_vocab, "inputs");
          check_length(w, ids.size(), 0);
          std::vector<double> logprobs;
          {
            py::gil_scoped_release release;
            logprobs = gpt2gen::score<T>(w, ids);
          }
          return py::array(py::ssize_t(logprobs.size()), logprobs.data());
        },
        weights_);
  }

  py::dict addresses() const {
    py::dict out;
    for (const auto& [name, address] : addresses_) out[py::str(name)] = address;
    return out;
  }

  std::string dtype() const {
    return std::holds_alternative<Weights<float>>(weights_) ? "float32" : "float64";
  }

  template <typename F>
  auto with_weights(F&& f) const {
    return std::visit([&](const auto& w) { return f(w); }, weights_);
  }

 private:
  template <typename T>
  void init(py::handle params, int n_head) {
    ParamReader<T> reader;
    weights_ = read_weights<T>(params, n_head, reader);
    arrays_ = reader.arrays;
    addresses_ = reader.addresses;
  }

  template <typename W>
  static void check_length(const W& w, size_t n_prompt, int n_new) {
    if (n_prompt == 0)
      throw py::value_error(
          "inputs is empty: generation needs at least one prompt token (GPT-2 models "
          "conventionally start from <|endoftext|>, id 50256)");
    if (n_prompt + size_t(n_new) > size_t(w.n_ctx))
      throw py::value_error("the prompt has " + std::to_string(n_prompt) + " tokens and " +
                            std::to_string(n_new) + " more are asked for: " +
                            std::to_string(n_prompt + n_new) + " positions exceed n_ctx = " +
                            std::to_string(w.n_ctx));
  }

  std::variant<Weights<float>, Weights<double>> weights_;
  py::list arrays_;
  std::vector<std::pair<std::string, uintptr_t>> addresses_;
};

constexpr int kMaxThreads = 1024;  // beyond any machine; OpenMP fails on absurd team sizes

// Set from any thread; a running generate() checks it before every step.
struct CancelToken {
  std::atomic<bool> cancelled{false};
};

std::atomic<long> live_generations{0};

// A generation stepped from Python (streaming, stop strings): one token per sequence per step().
// Calls from several threads are serialised by a mutex, taken without the GIL held.
class Generation {
 public:
  template <typename T>
  Generation(std::unique_ptr<BatchGenerator<T>> g) : generator_(std::move(g)) {
    ++live_generations;
  }
  ~Generation() { --live_generations; }
  Generation(const Generation&) = delete;

  // [(sequence, token)] for every sequence that advanced; [] once all are finished.
  std::vector<std::pair<int, int32_t>> step() {
    return std::visit(
        [this](auto& g) {
          std::vector<std::pair<int, int32_t>> out;
          py::gil_scoped_release release;
          std::lock_guard<std::mutex> lock(mutex_);
          if (g->done()) return out;
          for (int i : g->step()) out.emplace_back(i, g->sequence(i).generated.back());
          return out;
        },
        generator_);
  }

  void stop(int i) {
    auto lock = locked();
    std::visit([&](auto& g) { g->stop(checked(i), FinishReason::stopped); }, generator_);
  }
  bool done() const {
    auto lock = locked();
    return std::visit([](const auto& g) { return g->done(); }, generator_);
  }
  int size() const {
    return std::visit([](const auto& g) { return g->size(); }, generator_);
  }
  std::vector<int32_t> generated(int i) const {
    auto lock = locked();
    return std::visit([&](const auto& g) { return g->sequence(checked(i)).generated; }, generator_);
  }
  std::string finish_reason(int i) const {
    auto lock = locked();
    return std::visit([&](const auto& g) { return std::string(to_string(g->sequence(checked(i)).finish)); },
                      generator_);
  }
  py::array logits(int i) const {
    auto lock = locked();
    return std::visit(
        [&](const auto& g) -> py::array {
          const auto* row = g->logits(checked(i));
          if (!row) throw py::value_error("sequence " + std::to_string(i) + " has no token yet");
          return py::array(py::ssize_t(g->sequence(i).sampler.n_vocab()), row);
        },
        generator_);
  }

  // [(token, logprob, [(alternative, logprob), ...])] per generated token, if asked for.
  py::list logprobs(int i) const {
    auto lock = locked();
    return std::visit(
        [&](const auto& g) {
          const auto& s = g->sequence(checked(i));
          py::list out;
          for (size_t k = 0; k < s.logprobs.size(); ++k) {
            py::list top;
            for (const TokenLogprob& t : s.top_logprobs[k]) top.append(py::make_tuple(t.token, t.logprob));
            out.append(py::make_tuple(s.logprobs[k].token, s.logprobs[k].logprob, top));
          }
          return out;
        },
        generator_);
  }

 private:
  int checked(int i) const {
    if (i < 0 || i >= size()) throw py::index_error("no sequence " + std::to_string(i));
    return i;
  }

  // Held while reading or changing the generator, with the GIL released so that a thread
  // waiting here never blocks one that is stepping.
  std::unique_lock<std::mutex> locked() const {
    py::gil_scoped_release release;
    return std::unique_lock<std::mutex>(mutex_);
  }

  std::variant<std::unique_ptr<BatchGenerator<float>>, std::unique_ptr<BatchGenerator<double>>>
      generator_;
  mutable std::mutex mutex_;
};

py::list Model::generate(const py::list& prompts, int max_new_tokens, const py::dict& kw,
                         py::object on_token, py::object cancel) {
  return std::visit(
      [&](auto& w) -> py::list {
        using T = typename std::decay_t<decltype(w)>::value_type;
        Request r = request(w, prompts, max_new_tokens, kw);
        std::function<bool(int, int32_t)> callback;
        if (!on_token.is_none())
          callback = [&on_token](int i, int32_t token) {
            py::gil_scoped_acquire gil;
            py::object keep_going = on_token(i, token);
            return keep_going.is_none() || py::bool_(keep_going);
          };
        const std::atomic<bool>* flag = cancel.is_none() ? nullptr : &cancel.cast<CancelToken&>().cancelled;
        std::vector<std::vector<int32_t>> out;
        {
          py::gil_scoped_release release;
          out = gpt2gen::generate<T>(w, r.prompts, r.options, callback, flag);
        }
        return py::cast(out);
      },
      weights_);
}

py::object Model::start(const py::list& prompts, int max_new_tokens, const py::dict& kw) {
  return std::visit(
      [&](auto& w) -> py::object {
        using T = typename std::decay_t<decltype(w)>::value_type;
        Request r = request(w, prompts, max_new_tokens, kw);
        return py::cast(new Generation(std::make_unique<BatchGenerator<T>>(w, r.prompts, r.options)),
                        py::return_value_policy::take_ownership);
      },
      weights_);
}

// The distribution sampling draws from after every processor, for tests against transformers.
py::array processed_probabilities(py::handle logits_obj, py::handle prompt_obj, py::handle output_obj,
                                  const py::dict& kw) {
  return dispatch_array(logits_obj, [&](auto t) -> py::array {
    using T = decltype(t);
    if (py::reinterpret_borrow<py::array>(logits_obj).ndim() != 1)
      throw py::value_error("logits must be 1-D");
    auto logits = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(logits_obj);
    const int n_vocab = static_cast<int>(logits.size());
    if (n_vocab == 0) throw py::value_error("logits must not be empty");
    SamplingOptions o = sampling_options(kw);
    o.validate();
    Sampler sampler(o, n_vocab, token_ids(prompt_obj, n_vocab, "prompt_ids"));
    for (int32_t token : token_ids(output_obj, n_vocab, "output_ids")) sampler.observe(token);
    const std::vector<double> probs = sampler.probabilities(logits.data());
    return py::array(py::ssize_t(probs.size()), probs.data());
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
      require(w.shape(0) == d_in && b.shape(0) == d_out, "shapes must be x[n, in], w[in, out], b[out]");
      py::array_t<T> out({n, d_out});
      T* o = out.mutable_data();
      py::gil_scoped_release release;
      backend().kernels<T>().linear(x.data(), n, {w.data(), b.data(), d_in, d_out}, o);
      return out;
    });
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
      backend().kernels<T>().embedding(wte.data(), Packed{}, wpe.data(), d, ids.data(), ids.size(), pos0,
                                       out.mutable_data());
      return out;
    });
  });
  m.def("attention", [](py::handle qkv_obj, int n_head) {
    return dispatch_array(qkv_obj, [&](auto t) -> py::object {
      using T = decltype(t);
      auto qkv = as_array<T>(qkv_obj, "qkv", 2);
      const int n = qkv.shape(0), d = qkv.shape(1) / 3;
      require(n > 0 && n_head > 0 && qkv.shape(1) == 3 * d && d % n_head == 0,
              "qkv must be [n, 3 * n_embd] with n_head dividing n_embd");
      py::array_t<T> out({n, d});
      T* o = out.mutable_data();
      py::gil_scoped_release release;
      std::vector<T> keys(size_t(n) * d), values(keys.size()), scores(size_t(n_head) * n);
      backend().kernels<T>().attention(qkv.data(), n, d, n_head, 0, keys.data(), values.data(), n,
                                       scores.data(), o);
      return out;
    });
  });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "gpt2gen's C++ engine";

  py::class_<CancelToken>(m, "CancelToken", "Cancels a running generate() from another thread.")
      .def(py::init<>())
      .def("cancel", [](CancelToken& t) { t.cancelled = true; })
      .def_property_readonly("cancelled", [](const CancelToken& t) { return t.cancelled.load(); });

  py::class_<Generation>(m, "Generation", "A generation advanced one token per sequence per step().")
      .def("step", &Generation::step)
      .def("stop", &Generation::stop, py::arg("sequence"))
      .def_property_readonly("done", &Generation::done)
      .def("__len__", &Generation::size)
      .def("generated", &Generation::generated, py::arg("sequence"))
      .def("finish_reason", &Generation::finish_reason, py::arg("sequence"))
      .def("logprobs", &Generation::logprobs, py::arg("sequence"))
      .def("logits", &Generation::logits, py::arg("sequence"),
           "Raw logits sequence's last token was chosen from (a copy).");
  m.def("live_generations", []() { return live_generations.load(); },
        "Generations whose state (KV cache, scratch) is currently allocated.");

  py::class_<Model>(m, "Model",
                    "GPT-2 over the caller's parameter arrays (picoGPT layout), read in place.")
      .def(py::init<py::object, py::object>(), py::arg("params"), py::arg("n_head"))
      .def("forward", &Model::forward, py::arg("inputs"),
           "Logits [len(inputs), n_vocab] of every position.")
      .def("generate", &Model::generate, py::arg("prompts"), py::arg("max_new_tokens"),
           py::arg("options"), py::arg("on_token") = py::none(), py::arg("cancel") = py::none(),
           "Runs a generation to the end in C++; returns the new ids of each prompt.")
      .def("start", &Model::start, py::arg("prompts"), py::arg("max_new_tokens"),
           py::arg("options"), py::keep_alive<0, 1>(), "A Generation to step from Python.")
      .def("score", &Model::score, py::arg("inputs"),
           "log p(inputs[i + 1] | inputs[:i + 1]) for every i.")
      .def("addresses", &Model::addresses,
           "The address of every parameter array the engine reads, by key path.")
      .def_property_readonly("dtype", &Model::dtype)
      .def_property_readonly("n_vocab", [](const Model& m) { return m.with_weights([](const auto& w) { return w.n_vocab; }); })
      .def_property_readonly("n_ctx", [](const Model& m) { return m.with_weights([](const auto& w) { return w.n_ctx; }); })
      .def_property_readonly("n_embd", [](const Model& m) { return m.with_weights([](const auto& w) { return w.n_embd; }); })
      .def_property_readonly("n_head", [](const Model& m) { return m.with_weights([](const auto& w) { return w.n_head; }); })
      .def_property_readonly("n_layer", [](const Model& m) { return m.with_weights([](const auto& w) { return w.n_layer(); }); });

  m.def("backend", []() { return std::string(backend().name); },
        "The instruction set whose kernels are in use.");
  m.def("supported_backends", &supported_backends);
  m.def("set_backend", [](const std::string& name) {
    try {
      set_backend(name);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  });
  m.def("processed_probabilities", &processed_probabilities, py::arg("logits"),
        py::arg("prompt_ids"), py::arg("output_ids"), py::arg("options"));
  m.def("num_threads", &num_threads);
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 0 || n > kMaxThreads)
          throw py::value_error("set_num_threads takes 1.." + std::to_string(kMaxThreads) +
                                " (0 restores the default), got " + std::to_string(n));
        set_num_threads(n);
      },
      py::arg("n"), "Threads for every parallel region; 0 restores the default (the cores).");

  py::module_ kernels = m.def_submodule("kernels", "Single kernels, for tests and benchmarks.");
  bind_kernels(kernels);
}
