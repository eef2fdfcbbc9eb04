// One set of kernels per instruction set, chosen at run time.
//
// The kernels and the forward pass are compiled once per instruction set (see CMakeLists.txt and
// csrc/isa.hpp), each copy in its own namespace; each copy fills a Backend table
// (csrc/backend_table.cpp). The engine calls through the table chosen by the CPU's features, so
// the default build runs on any x86-64. The kernels are declared and documented in kernels.hpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model.hpp"

namespace gpt2gen {

template <typename T>
struct Kernels {
  void (*embedding)(const T* wte, Packed wte_packed, const T* wpe, int n_embd, const int32_t* ids,
                    int n, int pos0, T* out);
  void (*layer_norm)(const T* x, int n, int d, LayerNormWeights<T> ln, T* out);
  void (*gelu)(T* x, int64_t n);
  void (*softmax)(T* x, int n);
  void (*linear)(const T* x, int n, LinearWeights<T> lin, T* out);
  void (*unembed)(const T* x, int n, const T* wte, Packed wte_packed, int n_vocab, int d, T* out);
  void (*kv_cache_append)(const T* qkv, int n, int n_embd, int n_head, int pos0, KVLayer cache);
  void (*causal_attention)(const T* qkv, int n, int n_embd, int n_head, int pos0, KVLayer cache,
                           T* scores, T* out);
  // The new positions of every chunk through the blocks (all chunks' rows go through each matrix
  // product together), writing their keys and values into each chunk's cache at positions
  // cache->length.. (the caller advances length); the final hidden states are left in ws.x.
  void (*transformer)(const Weights<T>& w, const Chunk<T>* chunks, int n_chunks, Workspace<T>& ws);
  // logits[n, n_vocab] = unembed(ln_f(x[n, n_embd])), through ws.h.
  void (*lm_head)(const Weights<T>& w, const T* x, int n, Workspace<T>& ws, T* logits);
};

struct Backend {
  const char* name;
  Kernels<float> f32;
  Kernels<double> f64;

  template <typename T>
  const Kernels<T>& kernels() const;
};

template <>
inline const Kernels<float>& Backend::kernels<float>() const {
  return f32;
}
template <>
inline const Kernels<double>& Backend::kernels<double>() const {
  return f64;
}

// The backend in use: the fastest the CPU supports, or the one named by GPT2GEN_ISA.
const Backend& backend();
std::vector<std::string> supported_backends();
void set_backend(const std::string& name);  // throws std::invalid_argument

// One knob for every parallel region; work is split by output rows/heads, never by a reduction,
// so results do not depend on it.
void set_num_threads(int n);  // n <= 0 restores the default (the number of cores)
// The most the calling thread may use: the knob's value, or 1 on a thread whose OpenMP pool did
// not survive a fork.
int threads_allowed();
// The calling thread's parallel regions use at most n threads (a ThreadGovernor's choice for its
// step, csrc/thread_governor.hpp); n <= 0 lifts the limit.
void set_thread_limit(int n);
// The threads of the calling thread's parallel regions: threads_allowed() under its limit.
int num_threads();

// Frees the calling thread's OpenMP worker threads. libgomp keeps workers for every thread that
// ran a parallel region, and while the process holds more of them than there are CPUs its waits
// barely spin: each region's start and end then sleep and wake (decode on 2 cores measured ~2×
// slower beside one idle pool). Calls that compute on their caller's thread (forward, score)
// free it when they end, and an idle scheduler frees its own, so that only the decode loops
// that run keep workers.
void release_thread_pool();

// release_thread_pool() when the scope ends, however it ends.
struct ThreadPoolReleaser {
  ThreadPoolReleaser() = default;
  ThreadPoolReleaser(const ThreadPoolReleaser&) = delete;
  ThreadPoolReleaser& operator=(const ThreadPoolReleaser&) = delete;
  ~ThreadPoolReleaser() { release_thread_pool(); }
};

}  // namespace gpt2gen
