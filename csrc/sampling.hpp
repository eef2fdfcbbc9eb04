// Choosing the next token: the logits processors of transformers' generate() (same order, same
// meaning), OpenAI's presence/frequency penalties, and a portable seeded RNG.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gpt2gen {

struct SamplingOptions {
  double temperature = 0.0;         // 0: greedy (argmax)
  int top_k = 0;                    // 0: off
  double top_p = 1.0;               // 1: off
  double min_p = 0.0;               // 0: off
  double repetition_penalty = 1.0;  // transformers: over prompt and output ids
  double presence_penalty = 0.0;    // OpenAI: over output ids
  double frequency_penalty = 0.0;   // OpenAI: over output ids
  // OpenAI: (token, bias) added to the raw logits before every other processor; bias in
  // [-100, 100] (-100 in effect bans a token, 100 forces it).
  std::vector<std::pair<int32_t, double>> logit_bias;
  uint64_t seed = 0;

  // Throws std::invalid_argument naming the bad option.
  void validate(int n_vocab) const;
  bool greedy() const { return temperature == 0.0; }
  // Whether logit bias or a penalty makes the scores differ from the logits.
  bool changes_logits() const {
    return !logit_bias.empty() || repetition_penalty != 1.0 || presence_penalty != 0.0 ||
           frequency_penalty != 0.0;
  }
};

// xoshiro256** (Blackman & Vigna), seeded through splitmix64: the same stream on every platform
// and standard library, unlike std::uniform_*_distribution.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1), 53 random bits

 private:
  uint64_t s_[4];
};

struct TokenLogprob {
  int32_t token;
  double logprob;
};

// The per-sequence state of token choice: which ids were seen, the RNG, scratch.
class Sampler {
 public:
  Sampler(const SamplingOptions& options, int n_vocab, const std::vector<int32_t>& prompt);

  // Applies the processors to logits and picks a token, recording it as generated. With
  // n_top_logprobs >= 0, also reports the chosen token's log-probability and the n most likely
  // alternatives, from the distribution after penalties and temperature, before truncation.
  template <typename T>
  int32_t choose(const T* logits, int n_top_logprobs, TokenLogprob* chosen,
                 std::vector<TokenLogprob>* top);

  int n_vocab() const { return n_vocab_; }

  // Records token as generated (choose() does this for the tokens it picks).
  void observe(int32_t token);

  // The probabilities sampling draws from (after every processor), for tests against transformers.
  template <typename T>
  std::vector<double> probabilities(const T* logits);

 private:
  template <typename T>
  void penalize(const T* logits);  // scores_ = logits after logit bias and
                                   // repetition/presence/frequency penalties
  void apply_temperature();        // scores_ /= temperature
  void truncate();                 // top-k, top-p, min-p on scores_

  SamplingOptions options_;
  int n_vocab_;
  Rng rng_;
  std::vector<uint8_t> seen_;       // in prompt or output (repetition penalty)
  std::vector<int32_t> generated_;  // count in output (presence/frequency penalties)
  std::vector<int32_t> penalized_;  // ids with seen_ or generated_ set, so a step touches only them
  std::vector<double> scores_, scratch_;
  std::vector<int32_t> order_;
};

}  // namespace gpt2gen
