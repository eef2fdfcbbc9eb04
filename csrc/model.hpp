// The model's data: weights (viewed, never owned), the KV cache and scratch activations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace gpt2gen {

template <typename T>
struct LayerNormWeights {
  const T* g;
  const T* b;
};

// How a weight matrix is stored. float32 models may pack their matrices once into bf16, int8 or
// int4 (python/gpt2gen/packing.py; int4 with an int6 wte); activations and accumulation stay
// float32.
enum class WeightFormat : uint8_t {
  native,  // the parameters' dtype, read in place
  bf16,    // uint16: the high half of each float32, rounded to nearest even, in panels (below)
  int8,    // quantized (below): q in [-127, 127] stored as the byte q + 128, float16 scales
  int4,    // quantized (below): q in [-8, 7] stored as the nibble q + 8, float16 scales
  int6,    // quantized (below): q in [-32, 31] stored as the 6 bits q + 32, float16 scales (int4's
           // tied wte, as llama.cpp's q4_0 keeps it in q6_K)
};

// Packed matrices are seen as w[d_in, d_out] with the product reducing over d_in (a linear's w;
// the transpose of wte), d_out cut into panels of kPanelColumns columns, each panel stored
// contiguously, padded with zeros (columns to whole panels, d_in as below). A kernel's tile of
// column vectors is one panel, so each tile reads one sequential stream: several interleaved
// short streams (GPT-2's rows) defeat the hardware prefetchers (a core then reads DRAM at about
// half the rate, measured).
//   bf16: [panels][ceil(d_in / 2)][kPanelColumns][2], rows in interleaved pairs (one load widens
//         two rows of a column vector); an odd d_in gets a zero row.
//   int8, int4, int6 (quantized): value(k, j) = q(k, j)·scale(k / kQuantBlock, j); d_in padded to
//         whole blocks; for the integer dot products (four bytes of a column against four bytes of
//         activations), groups of kGroup consecutive k stored as kWords words of four bytes per
//         column:
//     data   [panels][d_in_padded / kGroup][kWords][kPanelColumns][4] bytes, where a column's word
//            holds k = 4g .. 4g + 3 (int8, kGroup = 4, kWords = 1), or k = 8g .. 8g + 3 in its low
//            nibbles and k = 8g + 4 .. 8g + 7 in its high nibbles (int4, kGroup = 8, kWords = 1);
//            int6 (kGroup = 16, kWords = 3): words 0 and 1 hold the low four bits of k = 16g ..
//            16g + 7 and 16g + 8 .. 16g + 15 as int4's word does, and byte i of word 2 the top two
//            bits of k = 16g + i, + 4 + i, + 8 + i, + 12 + i in its bits 0-1, 2-3, 4-5, 6-7;
//     scales [panels][d_in_padded / kQuantBlock][kPanelColumns], float16.
//     Padded columns and rows hold q = 0 and scale 0.
constexpr int kQuantBlock = 32;
constexpr int kPanelColumns = 64;
// A quantized format's kGroup and kWords (above), and the offset q is stored with (q + offset,
// unsigned; q's largest value is offset − 1).
constexpr int quant_group(WeightFormat f) {
  return f == WeightFormat::int8 ? 4 : f == WeightFormat::int4 ? 8 : 16;
}
constexpr int quant_words(WeightFormat f) { return f == WeightFormat::int6 ? 3 : 1; }
constexpr int quant_offset(WeightFormat f) {
  return f == WeightFormat::int8 ? 128 : f == WeightFormat::int4 ? 8 : 32;
}

struct Packed {
  WeightFormat format = WeightFormat::native;
  const void* data = nullptr;    // bf16: uint16 (above); quantized: bytes, above
  const void* scales = nullptr;  // quantized: float16 (as uint16)
};

// y = x·w + b with GPT-2's layout w[d_in, d_out] (w is null when the matrix is packed; b may be
// null: no bias).
template <typename T>
struct LinearWeights {
  const T* w;
  const T* b;
  int d_in;
  int d_out;
  Packed packed{};
};

template <typename T>
struct BlockWeights {
  LayerNormWeights<T> ln_1, ln_2;
  LinearWeights<T> c_attn, attn_proj;  // attn.c_attn, attn.c_proj
  LinearWeights<T> c_fc, mlp_proj;     // mlp.c_fc, mlp.c_proj
};

// How the KV cache stores keys and values. A float32 model may keep them as bf16
// (kv_cache_dtype="bf16"): half the memory, and half the bytes attention reads per token, for a
// rounding of every key and value; attention's arithmetic stays float32.
enum class KVFormat : uint8_t {
  native,  // the model's dtype
  bf16,    // uint16: the high half of each float32, rounded to nearest even
};

// Pointers into the caller's arrays: the engine never copies or frees them.
template <typename T>
struct Weights {
  using value_type = T;
  int n_vocab = 0, n_ctx = 0, n_embd = 0, n_head = 0;
  KVFormat kv_format = KVFormat::native;  // chosen with the model, for every cache it fills
  const T* wte = nullptr;                 // [n_vocab, n_embd], also the output projection (tied)
  Packed wte_packed{};     // when packed (wte is null): as the matrix wteᵀ [n_embd, n_vocab]
  const T* wpe = nullptr;  // [n_ctx, n_embd]
  std::vector<BlockWeights<T>> blocks;
  LayerNormWeights<T> ln_f{};

  int n_layer() const { return static_cast<int>(blocks.size()); }
  int head_dim() const { return n_head > 0 ? n_embd / n_head : 0; }
  int d_ff() const { return blocks.empty() ? 0 : blocks[0].c_fc.d_out; }
};

// One layer's cache as the attention kernels see it: keys and values [n_head][capacity][head_dim],
// stored in `format`.
struct KVLayer {
  void* keys;
  void* values;
  int capacity;
  KVFormat format;
};

// Keys and values of every position processed so far, laid out [layer][head][position][head_dim]
// so that one head's keys are contiguous for the dot products of attention; each value in the
// model's KVFormat.
template <typename T>
struct KVCache {
  int n_head = 0, head_dim = 0, capacity = 0;
  int length = 0;  // positions stored
  KVFormat format;
  std::vector<unsigned char> k, v;  // bytes

  KVCache(const Weights<T>& w, int capacity)
      : n_head(w.n_head),
        head_dim(w.head_dim()),
        capacity(capacity),
        format(w.kv_format),
        k(layer_bytes() * w.n_layer()),
        v(layer_bytes() * w.n_layer()) {}

  static size_t value_size(KVFormat format) { return format == KVFormat::bf16 ? 2 : sizeof(T); }
  static size_t bytes(const Weights<T>& w, int capacity) {
    return 2 * value_size(w.kv_format) * size_t(w.n_layer()) * w.n_embd * capacity;
  }
  size_t layer_bytes() const { return value_size(format) * n_head * capacity * head_dim; }
  KVLayer layer(int l) {
    return {k.data() + l * layer_bytes(), v.data() + l * layer_bytes(), capacity, format};
  }
};

// n consecutive new positions of one sequence (a whole prompt, a part of one, or one decoded
// token), whose keys and values a forward pass writes into the sequence's cache.
template <typename T>
struct Chunk {
  KVCache<T>* cache;
  const int32_t* ids;
  int n;
};

// Activations for up to max_rows positions at once, allocated once per generation so the decode
// loop does not allocate.
template <typename T>
struct Workspace {
  std::vector<T> x, h, h2, qkv, att, mlp, scores;

  Workspace(const Weights<T>& w, int max_rows, int max_capacity)
      : x(size_t(max_rows) * w.n_embd),
        h(x.size()),
        h2(x.size()),
        qkv(3 * x.size()),
        att(x.size()),
        mlp(size_t(max_rows) * w.d_ff()),
        scores(score_count(w, max_capacity)) {}

  static size_t bytes(const Weights<T>& w, int max_rows, int max_capacity) {
    return sizeof(T) *
           (size_t(max_rows) * (7 * size_t(w.n_embd) + w.d_ff()) + score_count(w, max_capacity));
  }

 private:
  // Attention scores, one row of cached positions per head (no blocks: no attention).
  static size_t score_count(const Weights<T>& w, int max_capacity) {
    return size_t(w.n_layer() > 0 ? w.n_head : 0) * max_capacity;
  }
};

}  // namespace gpt2gen
