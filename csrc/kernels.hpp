// The math of GPT-2, one function per piece, each the twin of a function in
// python/gpt2gen/reference.py. Compiled once per instruction set (see isa.hpp); the files that
// define them are listed in csrc/README.md.
#pragma once

#include <cstdint>

#include "backend.hpp"
#include "isa.hpp"
#include "model.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

// --- pointwise.cpp

// out[t] = wte[ids[t]] + wpe[pos0 + t]  (wte read from wte_packed when packed)
template <typename T>
void embedding(const T* wte, Packed wte_packed, const T* wpe, int n_embd, const int32_t* ids, int n,
               int pos0, T* out);

// Per row: g·(x − mean)/√(var + 1e-5) + b, biased variance.
template <typename T>
void layer_norm(const T* x, int n, int d, LayerNormWeights<T> ln, T* out);

// In place, tanh form: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
template <typename T>
void gelu(T* x, int64_t n);

// In place, exp(x − max x) / Σ exp(x − max x).
template <typename T>
void softmax(T* x, int n);

// x += y
template <typename T>
void residual_add(T* x, const T* y, int64_t n);

// --- linear.cpp

// out[n, d_out] = x[n, d_in]·w + b, w in any weight format.
template <typename T>
void linear(const T* x, int n, LinearWeights<T> lin, T* out);

// --- unembed.cpp

// Logits against the tied embedding: out[n, n_vocab] = x[n, d]·wteᵀ (wte_packed when packed).
template <typename T>
void unembed(const T* x, int n, const T* wte, Packed wte_packed, int n_vocab, int d, T* out);

// --- attention.cpp
// One layer's cache (KVLayer): keys and values [n_head][capacity][head_dim] in the cache's
// format. qkv[n, 3·n_embd] is c_attn's output for n new positions pos0, pos0 + 1, ...: per row
// the queries, keys and values of every head (head h at columns h·head_dim of each third).

// Writes the new positions' keys and values into the cache at positions pos0 .. pos0 + n − 1
// (bf16: rounded to nearest even).
template <typename T>
void kv_cache_append(const T* qkv, int n, int n_embd, int n_head, int pos0, KVLayer cache);

// Causal multi-head attention of the new positions over the cache, which must hold positions
// 0 .. pos0 + n − 1: out[i, head h] = softmax(q_i·kᵀ/√head_dim)·v over positions 0 .. pos0 + i,
// with k and v as stored (widened to T). scores: scratch for n_head·capacity values.
template <typename T>
void causal_attention(const T* qkv, int n, int n_embd, int n_head, int pos0, KVLayer cache,
                      T* scores, T* out);

// --- forward.cpp

template <typename T>
void transformer(const Weights<T>& w, const Chunk<T>* chunks, int n_chunks, Workspace<T>& ws);

template <typename T>
void lm_head(const Weights<T>& w, const T* x, int n, Workspace<T>& ws, T* logits);

// --- backend_table.cpp

const Backend& get_backend();

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
