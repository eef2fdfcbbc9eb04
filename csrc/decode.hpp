// The autoregressive loop: prefill the prompt once, then one position of work per new token.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "backend.hpp"
#include "model.hpp"

namespace gpt2gen {

// Index of the largest logit, ties to the lowest index and the first NaN winning, as np.argmax.
template <typename T>
int32_t argmax(const T* logits, int n);

// One generation: owns its KV cache and scratch; the weights stay the caller's.
template <typename T>
class Generator {
 public:
  Generator(const Weights<T>& weights, std::vector<int32_t> prompt, int max_new_tokens);

  // The next token (the first call processes the prompt). Call at most max_new_tokens times.
  int32_t next();
  int produced() const { return produced_; }
  int max_new_tokens() const { return max_new_tokens_; }
  const std::vector<T>& logits() const { return logits_; }  // those the last token came from

 private:
  Weights<T> weights_;
  const Kernels<T>& kernels_;
  std::vector<int32_t> prompt_;
  int max_new_tokens_;
  KVCache<T> cache_;
  Workspace<T> workspace_;
  std::vector<T> logits_;
  int32_t last_token_ = -1;
  int produced_ = 0;
};

// Greedy generation of up to n_new tokens; on_token (if set) sees each one and may stop the loop
// by returning false.
template <typename T>
std::vector<int32_t> generate(const Weights<T>& weights, const std::vector<int32_t>& prompt,
                              int n_new, const std::function<bool(int32_t)>& on_token = nullptr);

// Logits [n, n_vocab] of every position of ids, in one pass.
template <typename T>
void forward(const Weights<T>& weights, const std::vector<int32_t>& ids, T* logits);

}  // namespace gpt2gen
