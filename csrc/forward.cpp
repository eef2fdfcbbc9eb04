// The GPT-2 forward pass, written as the math (pre-LN blocks, as GPT-2; the exercise's prose is
// post-LN). The twin of python/gpt2gen/reference.py's mha / ffn / transformer_block / gpt2, with
// a KV cache: only the n new positions are computed, attending to all cached ones.
#include <algorithm>

#include "kernels.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

// out = c_proj(causal_self_attention(c_attn(x))); each chunk attends over its own cache, to which
// its new keys and values are first appended.
template <typename T>
void mha(const T* x, int rows, const BlockWeights<T>& block, int layer, const Chunk<T>* chunks,
         int n_chunks, Workspace<T>& ws, T* out) {
  const int n_embd = block.c_attn.d_in;
  linear(x, rows, block.c_attn, ws.qkv.data());
  for (int c = 0, row = 0; c < n_chunks; row += chunks[c++].n) {
    KVCache<T>& cache = *chunks[c].cache;
    const T* qkv = ws.qkv.data() + size_t(row) * 3 * n_embd;
    kv_cache_append(qkv, chunks[c].n, n_embd, cache.n_head, cache.length, cache.layer(layer));
    causal_attention(qkv, chunks[c].n, n_embd, cache.n_head, cache.length, cache.layer(layer),
                     ws.scores.data(), ws.att.data() + size_t(row) * n_embd);
  }
  linear(ws.att.data(), rows, block.attn_proj, out);
}

// out = c_proj(gelu(c_fc(x)))
template <typename T>
void ffn(const T* x, int rows, const BlockWeights<T>& block, Workspace<T>& ws, T* out) {
  linear(x, rows, block.c_fc, ws.mlp.data());
  gelu(ws.mlp.data(), int64_t(rows) * block.c_fc.d_out);
  linear(ws.mlp.data(), rows, block.mlp_proj, out);
}

// x = x + mha(ln_1(x)); x = x + ffn(ln_2(x))
template <typename T>
void transformer_block(T* x, int rows, const BlockWeights<T>& block, int layer,
                       const Chunk<T>* chunks, int n_chunks, Workspace<T>& ws) {
  const int n_embd = block.c_attn.d_in;
  T* h = ws.h.data();
  T* delta = ws.h2.data();
  layer_norm(x, rows, n_embd, block.ln_1, h);
  mha(h, rows, block, layer, chunks, n_chunks, ws, delta);
  residual_add(x, delta, int64_t(rows) * n_embd);
  layer_norm(x, rows, n_embd, block.ln_2, h);
  ffn(h, rows, block, ws, delta);
  residual_add(x, delta, int64_t(rows) * n_embd);
}

}  // namespace

// x = the new positions of every chunk through the blocks, each chunk attending over its own
// cache (whose keys and values at positions length.. are written here; the caller advances
// length). Leaves the final hidden states [rows, n_embd] in ws.x.
template <typename T>
void transformer(const Weights<T>& w, const Chunk<T>* chunks, int n_chunks, Workspace<T>& ws) {
  const size_t d = w.n_embd;
  T* x = ws.x.data();
  int rows = 0;
  for (int c = 0; c < n_chunks; rows += chunks[c++].n)
    embedding(w.wte, w.wte_packed, w.wpe, w.n_embd, chunks[c].ids, chunks[c].n,
              chunks[c].cache->length, x + rows * d);
  for (int layer = 0; layer < w.n_layer(); ++layer)
    transformer_block(x, rows, w.blocks[layer], layer, chunks, n_chunks, ws);
}

// logits[n, n_vocab] = unembed(ln_f(x[n, n_embd]))
template <typename T>
void lm_head(const Weights<T>& w, const T* x, int n, Workspace<T>& ws, T* logits) {
  layer_norm(x, n, w.n_embd, w.ln_f, ws.h.data());
  unembed(ws.h.data(), n, w.wte, w.wte_packed, w.n_vocab, w.n_embd, logits);
}

template void transformer<float>(const Weights<float>&, const Chunk<float>*, int,
                                 Workspace<float>&);
template void transformer<double>(const Weights<double>&, const Chunk<double>*, int,
                                  Workspace<double>&);
template void lm_head<float>(const Weights<float>&, const float*, int, Workspace<float>&, float*);
template void lm_head<double>(const Weights<double>&, const double*, int, Workspace<double>&,
                              double*);

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
