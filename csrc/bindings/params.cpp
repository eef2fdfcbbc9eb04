#include "params.hpp"

#include <pybind11/numpy.h>

#include <limits>

#include "common.hpp"

namespace gpt2gen::bindings {

namespace {

py::ssize_t blocks_of(py::ssize_t n) { return (n + kQuantBlock - 1) / kQuantBlock; }

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
                           " must be a dict, got " +
                           std::string(py::str(py::type::handle_of(node))));
    if (!node.contains(key)) throw py::value_error("params is missing '" + child_path + "'");
    return node[key];
  }

  // The array at node[key]: dtype U (or `dtype`), the given shape, C-contiguous and aligned, read
  // in place.
  template <typename U>
  const U* typed_array(py::handle node, const char* key, const std::string& path,
                       const std::vector<py::ssize_t>& shape, const std::string& dtype_rule,
                       const py::dtype& dtype = py::dtype::of<U>()) {
    const std::string name = path.empty() ? key : path + "." + key;
    py::object obj = child(node, key, path);
    if (!py::isinstance<py::array>(obj))
      throw py::type_error("params '" + name + "' must be a NumPy array, got " +
                           std::string(py::str(py::type::handle_of(obj))));
    py::array arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().equal(dtype))
      throw py::type_error("params '" + name + "' has dtype " + std::string(py::str(arr.dtype())) +
                           " but " + dtype_rule);
    std::vector<py::ssize_t> actual(arr.shape(), arr.shape() + arr.ndim());
    if (actual != shape)
      throw py::value_error("params '" + name + "' has shape " + shape_str(actual) + ", expected " +
                            shape_str(shape));
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

  // node[key] as a matrix [rows, cols]: an array of the parameters' dtype, or a packed dict made
  // by gpt2gen.pack_params, {"format": ..., "shape": (rows, cols), "data": ...} in model.hpp's
  // layout: bf16, uint16 data; int8, int4 and int6, uint8 data and float16 "scales". The
  // product reduces over the rows (a linear's w) or, with reduce_rows false, the columns (wte,
  // stored as wteᵀ).
  const T* matrix(py::handle node, const char* key, const std::string& path, py::ssize_t rows,
                  py::ssize_t cols, bool reduce_rows, Packed& packed) {
    py::object m = child(node, key, path);
    if (!is_mapping(m)) return array(node, key, path, {rows, cols});
    const std::string p = path.empty() ? key : path + "." + key;
    if (!std::is_same_v<T, float>)
      throw py::type_error("params '" + p + "' is packed, which only float32 parameters can be");
    const std::string format = py::str(child(m, "format", p));
    const std::string rule = "'" + p + "' is packed as " + format;
    struct Quantized {
      const char* name;
      WeightFormat format;
    };
    static constexpr Quantized kQuantizedFormats[] = {
        {"int8", WeightFormat::int8}, {"int4", WeightFormat::int4}, {"int6", WeightFormat::int6}};
    const Quantized* quantized = nullptr;
    for (const Quantized& q : kQuantizedFormats)
      if (format == q.name) quantized = &q;
    if (!quantized && format != "bf16")
      throw py::value_error("params '" + p + ".format' is '" + format +
                            "'; packed formats are 'bf16', 'int8', 'int4' and 'int6'");
    if (packed_shape(m, p) != std::pair{rows, cols})
      throw py::value_error("params '" + p + ".shape' is " + std::string(py::str(m["shape"])) +
                            ", expected (" + std::to_string(rows) + ", " + std::to_string(cols) +
                            ")");
    const py::ssize_t d_in = reduce_rows ? rows : cols, d_out = reduce_rows ? cols : rows;
    const py::ssize_t panels = (d_out + kPanelColumns - 1) / kPanelColumns;
    if (format == "bf16") {
      packed = {WeightFormat::bf16,
                typed_array<uint16_t>(m, "data", p, {panels, (d_in + 1) / 2, kPanelColumns, 2},
                                      rule + ", whose data is uint16"),
                nullptr};
      return nullptr;
    }
    const py::ssize_t blocks = blocks_of(d_in);
    const py::ssize_t groups = blocks * kQuantBlock / quant_group(quantized->format);
    const std::vector<py::ssize_t> scales_shape{panels, blocks, kPanelColumns};
    packed.format = quantized->format;
    packed.data = typed_array<uint8_t>(
        m, "data", p, {panels, groups, quant_words(quantized->format) * 4 * kPanelColumns},
        rule + ", whose data is uint8");
    packed.scales = typed_array<uint16_t>(
        m, "scales", p, scales_shape, rule + ", whose scales are float16", py::dtype("float16"));
    return nullptr;
  }

  // The (rows, cols) a packed dict's "shape" names: two ints in [1, 2^31 - 1].
  std::pair<py::ssize_t, py::ssize_t> packed_shape(py::handle m, const std::string& path) {
    py::object shape = child(m, "shape", path);
    const std::string rule = "params '" + path + ".shape' must be a pair of ints (rows, cols)";
    if (!py::isinstance<py::sequence>(shape) || py::isinstance<py::str>(shape) ||
        py::len(shape) != 2)
      throw py::type_error(rule);
    py::ssize_t dims[2];
    for (int i = 0; i < 2; ++i) {
      py::object v = py::reinterpret_borrow<py::sequence>(shape)[i];
      if (py::isinstance<py::bool_>(v) || !py::hasattr(v, "__index__")) throw py::type_error(rule);
      py::int_ d(v.attr("__index__")());
      if (d < py::int_(1) || d > py::int_(std::numeric_limits<int32_t>::max()))
        throw py::value_error(rule + " between 1 and 2^31 - 1, got " + std::string(py::str(shape)));
      dims[i] = d.cast<py::ssize_t>();
    }
    return {dims[0], dims[1]};
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
    out.w = matrix(lin, "w", p, d_in, d_out, true, out.packed);
    return out;
  }
};

// The shape of a 2-D array (wte).
std::pair<py::ssize_t, py::ssize_t> array_shape2(py::array a, const char* name) {
  if (a.ndim() != 2)
    throw py::value_error(std::string("params '") + name + "' must be 2-D [n_vocab, n_embd], got " +
                          std::to_string(a.ndim()) + "-D");
  return {a.shape(0), a.shape(1)};
}

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
  const bool packed_wte = is_mapping(wte_node);
  py::object wpe_shape = reader.child(params, "wpe", "");
  for (auto [name, obj] : {std::pair{"wte", wte_node}, std::pair{"wpe", wpe_shape}})
    if (!(py::isinstance<py::array>(obj) || (name == std::string("wte") && packed_wte)))
      throw py::type_error(std::string("params '") + name + "' must be a NumPy array, got " +
                           std::string(py::str(py::type::handle_of(obj))));
  const auto [wte_rows, wte_cols] =
      packed_wte ? reader.packed_shape(wte_node, "wte") : array_shape2(wte_node, "wte");
  py::array wpe = wpe_shape;
  if (wpe.ndim() != 2)
    throw py::value_error("params 'wpe' must be 2-D [n_ctx, n_embd], got " +
                          std::to_string(wpe.ndim()) + "-D");
  const py::ssize_t n_vocab = checked_dim(wte_rows, "n_vocab (wte.shape[0])");
  const py::ssize_t d = checked_dim(wte_cols, "n_embd (wte.shape[1])");
  const py::ssize_t n_ctx = checked_dim(wpe.shape(0), "n_ctx (wpe.shape[0])");
  w.n_vocab = static_cast<int>(n_vocab);
  w.n_embd = static_cast<int>(d);
  w.n_ctx = static_cast<int>(n_ctx);
  w.n_head = n_head;
  w.wte = reader.matrix(params, "wte", "", n_vocab, d, false, w.wte_packed);
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
      py::object fc_b =
          reader.child(reader.child(reader.child(node, "mlp", path), "c_fc", path + ".mlp"), "b",
                       path + ".mlp.c_fc");
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

}  // namespace

Model::Model(py::object params, py::object n_head_obj, py::object kv_cache_dtype) {
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
    init<float>(params, static_cast<int>(n_head), kv_cache_dtype);
  else if (py::isinstance<py::array_t<float>>(wte))
    init<float>(params, static_cast<int>(n_head), kv_cache_dtype);
  else if (py::isinstance<py::array_t<double>>(wte))
    init<double>(params, static_cast<int>(n_head), kv_cache_dtype);
  else if (py::isinstance<py::array>(wte))
    throw py::type_error("params 'wte' has dtype " + std::string(py::str(py::array(wte).dtype())) +
                         "; gpt2gen reads float32 or float64 parameters in place, convert "
                         "them once (e.g. arr.astype(np.float32))");
  else
    init<float>(params, static_cast<int>(n_head),
                kv_cache_dtype);  // reports the missing/non-array 'wte'
}

py::dict Model::addresses() const {
  py::dict out;
  for (const auto& [name, address] : addresses_) out[py::str(name)] = address;
  return out;
}

std::string Model::dtype() const {
  return std::holds_alternative<Weights<float>>(weights_) ? "float32" : "float64";
}

std::string Model::kv_cache_dtype() const {
  return visit([&](const auto& w) { return w.kv_format == KVFormat::bf16 ? "bf16" : dtype(); });
}

template <typename T>
void Model::init(py::handle params, int n_head, py::handle kv_cache_dtype) {
  const KVFormat format = kv_format(kv_cache_dtype, dtype_name<T>());  // before reading anything
  ParamReader<T> reader;
  Weights<T> w = read_weights<T>(params, n_head, reader);
  w.kv_format = format;
  weights_ = std::move(w);
  arrays_ = reader.arrays;
  addresses_ = reader.addresses;
}

LinearWeights<float> read_linear(py::handle lin, int d_in, int d_out, py::list& keep_alive) {
  ParamReader<float> reader;
  py::dict holder;
  holder["linear"] = lin;
  LinearWeights<float> out = reader.linear(holder, "linear", "", d_in, d_out);
  for (py::handle a : reader.arrays) keep_alive.append(a);
  return out;
}

}  // namespace gpt2gen::bindings
