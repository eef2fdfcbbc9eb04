// The autoregressive loop: each prompt is processed once (prefill), then every step costs one
// position per sequence, all sequences of a batch going through each matrix product together.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "model.hpp"
#include "sampling.hpp"

namespace gpt2gen {

enum class FinishReason { none, length, eos, stopped, cancelled };
const char* to_string(FinishReason reason);

struct GenerationOptions {
  int max_new_tokens = 0;
  SamplingOptions sampling;             // sampling.seed is each sequence's seed unless seeds set
  std::vector<uint64_t> seeds;          // one per prompt (optional)
  std::vector<int32_t> eos_token_ids;   // stop a sequence when it produces one of these
  int top_logprobs = -1;                // >= 0: record log-probabilities (and this many top ones)
  bool slide_context = false;           // past n_ctx: drop the oldest half and recompute
};

// One sequence of a generation.
template <typename T>
struct Sequence {
  std::vector<int32_t> tokens;  // the model's current context (prompt and output, after slides)
  std::vector<int32_t> generated;
  std::vector<TokenLogprob> logprobs;            // per generated token, if asked
  std::vector<std::vector<TokenLogprob>> top_logprobs;
  Sampler sampler;
  KVCache<T> cache;
  FinishReason finish = FinishReason::none;

  bool active() const { return finish == FinishReason::none; }
};

// A generation over one or more prompts, advanced one token per sequence per step().
template <typename T>
class BatchGenerator {
 public:
  BatchGenerator(const Weights<T>& weights, const std::vector<std::vector<int32_t>>& prompts,
                 const GenerationOptions& options);

  // Gives every active sequence its next token; returns the indices of the sequences that got
  // one (the first step also processes the prompts).
  std::vector<int> step();
  bool done() const;
  void stop(int sequence, FinishReason reason);  // e.g. a stop string matched (Python side)
  const Sequence<T>& sequence(int i) const { return *sequences_[i]; }
  // The logits sequence i's last token was chosen from (before any processor); valid until the
  // next step.
  const T* logits(int i) const { return last_logits_[i]; }
  int size() const { return static_cast<int>(sequences_.size()); }

 private:
  void choose(int i, const T* logits);
  void slide(int i);

  Weights<T> weights_;
  const Kernels<T>& kernels_;
  GenerationOptions options_;
  std::vector<std::unique_ptr<Sequence<T>>> sequences_;
  Workspace<T> workspace_;
  std::vector<T> logits_;        // row i: sequence i's logits after a prefill or a slide
  std::vector<T> batch_logits_;  // row j: the j-th sequence of a batched step
  std::vector<const T*> last_logits_;
  std::vector<Chunk<T>> segments_;
  std::vector<int> stepped_, batched_;
  bool prefilled_ = false;
};

// Refuses (std::length_error, saying how much) a generation whose KV caches and scratch would
// not fit in this machine's memory, before anything is allocated.
template <typename T>
void check_memory(const Weights<T>& weights, const std::vector<size_t>& prompt_lengths,
                  const GenerationOptions& options);

// Runs a generation to the end without calling back into Python unless on_token is set
// (on_token(sequence, token) returning false stops that sequence). cancel, if set, is checked
// before every step.
template <typename T>
std::vector<std::vector<int32_t>> generate(
    const Weights<T>& weights, const std::vector<std::vector<int32_t>>& prompts,
    const GenerationOptions& options,
    const std::function<bool(int, int32_t)>& on_token = nullptr,
    const std::atomic<bool>* cancel = nullptr);

// Logits [n, n_vocab] of every position of ids, in one pass.
template <typename T>
void forward(const Weights<T>& weights, const std::vector<int32_t>& ids, T* logits);

// log p(ids[i + 1] | ids[..i]) for every i, from one forward pass.
template <typename T>
std::vector<double> score(const Weights<T>& weights, const std::vector<int32_t>& ids);

}  // namespace gpt2gen
