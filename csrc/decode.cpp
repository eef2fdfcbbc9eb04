#include "decode.hpp"

#include "forward_pass.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

namespace gpt2gen {

namespace {

std::string gib(size_t bytes) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f GiB", bytes / double(size_t(1) << 30));
  return buffer;
}

// Positions a sequence's cache must hold.
int capacity(int n_ctx, size_t n_prompt, const GenerationOptions& options) {
  if (options.slide_context) return n_ctx;
  return static_cast<int>(std::min<size_t>(n_ctx, n_prompt + options.max_new_tokens));
}

// The part of a prompt the model sees: all of it, or with a sliding window its last n_ctx tokens.
std::vector<int32_t> context_of(const std::vector<int32_t>& prompt, int n_ctx, bool slide) {
  if (slide && prompt.size() > size_t(n_ctx)) return {prompt.end() - n_ctx, prompt.end()};
  return prompt;
}

// Rows one forward pass may process: a whole prompt, a batch step, or a slide's recomputation.
int max_rows(const std::vector<size_t>& prompt_lengths, int n_ctx, bool slide) {
  size_t rows = prompt_lengths.size();
  for (size_t n : prompt_lengths) rows = std::max(rows, std::min<size_t>(n, n_ctx));
  if (slide) rows = std::max<size_t>(rows, n_ctx / 2);
  return static_cast<int>(rows);
}

}  // namespace

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::none: return "none";
    case FinishReason::length: return "length";
    case FinishReason::eos: return "eos";
    case FinishReason::stopped: return "stop";
    case FinishReason::cancelled: return "cancelled";
  }
  return "none";
}

namespace {

// What a generation may plan to use: physical memory, or less under a memory limit of this
// process's cgroup (a container), where pages past the limit would get the process OOM-killed
// later instead of refused now. ("max", cgroup v2's "no limit", does not parse as a number.)
struct MemoryBudget {
  size_t bytes;
  const char* owner;
};

MemoryBudget memory_budget() {
  const size_t physical = size_t(sysconf(_SC_PHYS_PAGES)) * size_t(sysconf(_SC_PAGE_SIZE));
  MemoryBudget budget{physical, "this machine's"};
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream file(path);
    unsigned long long limit = 0;
    if (file >> limit && limit < budget.bytes) budget = {size_t(limit), "this cgroup's limit of"};
  }
  return budget;
}

}  // namespace

template <typename T>
void check_memory(const Weights<T>& weights, const std::vector<size_t>& prompt_lengths,
                  const GenerationOptions& options) {
  size_t bytes = 0, max_capacity = 0;
  for (size_t n : prompt_lengths) {
    const int cap = capacity(weights.n_ctx, n, options);
    max_capacity = std::max<size_t>(max_capacity, cap);
    bytes += KVCache<T>::bytes(weights, cap) + size_t(weights.n_vocab) * 32;  // + sampler state
  }
  const int rows = max_rows(prompt_lengths, weights.n_ctx, options.slide_context);
  bytes += Workspace<T>::bytes(weights, rows, max_capacity) +
           2 * sizeof(T) * size_t(weights.n_vocab) * prompt_lengths.size();
  static const MemoryBudget budget = memory_budget();  // read once, not at every generation
  if (bytes > budget.bytes)
    throw std::length_error("this generation would need " + gib(bytes) + " for its KV cache and "
                            "activations, more than " + budget.owner + " " + gib(budget.bytes));
}

template <typename T>
BatchGenerator<T>::BatchGenerator(const Weights<T>& weights,
                                  const std::vector<std::vector<int32_t>>& prompts,
                                  const GenerationOptions& options)
    : weights_(weights),
      kernels_(backend().kernels<T>()),
      options_(options),
      workspace_(weights, 0, 0) {
  options_.sampling.validate();
  if (prompts.empty()) throw std::invalid_argument("there must be at least one prompt");
  if (options_.max_new_tokens < 0) throw std::invalid_argument("max_new_tokens must be >= 0");
  if (!options_.seeds.empty() && options_.seeds.size() != prompts.size())
    throw std::invalid_argument("give one seed per prompt (" + std::to_string(prompts.size()) +
                                "), got " + std::to_string(options_.seeds.size()));
  for (size_t i = 0; i < prompts.size(); ++i) {
    const size_t n = prompts[i].size();
    const std::string which = prompts.size() > 1 ? "prompt " + std::to_string(i) : "the prompt";
    if (n == 0)
      throw std::invalid_argument(which + " is empty: generation needs at least one prompt token "
                                  "(GPT-2 models conventionally start from <|endoftext|>)");
    if (!options_.slide_context && n + options_.max_new_tokens > size_t(weights.n_ctx))
      throw std::invalid_argument(
          which + " has " + std::to_string(n) + " tokens and " +
          std::to_string(options_.max_new_tokens) + " more are asked for: " +
          std::to_string(n + options_.max_new_tokens) + " positions exceed n_ctx = " +
          std::to_string(weights.n_ctx) + " (a sliding window can be asked for explicitly)");
  }
  std::vector<size_t> lengths;
  for (const auto& p : prompts) lengths.push_back(p.size());
  check_memory(weights, lengths, options_);

  size_t max_capacity = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SamplingOptions sampling = options_.sampling;
    if (!options_.seeds.empty()) sampling.seed = options_.seeds[i];
    std::vector<int32_t> context = context_of(prompts[i], weights.n_ctx, options_.slide_context);
    const int cap = capacity(weights.n_ctx, context.size(), options_);
    max_capacity = std::max<size_t>(max_capacity, cap);
    sequences_.push_back(std::unique_ptr<Sequence<T>>(new Sequence<T>{
        context, {}, {}, {}, Sampler(sampling, weights.n_vocab, prompts[i]),
        KVCache<T>(weights, cap)}));
    if (options_.max_new_tokens == 0) sequences_.back()->finish = FinishReason::length;
  }
  workspace_ = Workspace<T>(weights, max_rows(lengths, weights.n_ctx, options_.slide_context),
                            static_cast<int>(max_capacity));
  logits_.resize(size_t(weights.n_vocab) * prompts.size());
  batch_logits_.resize(logits_.size());
  last_logits_.assign(prompts.size(), nullptr);
  segments_.reserve(prompts.size());
}

template <typename T>
bool BatchGenerator<T>::done() const {
  for (const auto& s : sequences_)
    if (s->active()) return false;
  return true;
}

template <typename T>
void BatchGenerator<T>::stop(int i, FinishReason reason) {
  if (i < 0 || i >= size()) throw std::out_of_range("no sequence " + std::to_string(i));
  if (sequences_[i]->active()) sequences_[i]->finish = reason;
}

template <typename T>
void BatchGenerator<T>::choose(int i, const T* logits) {
  Sequence<T>& s = *sequences_[i];
  last_logits_[i] = logits;
  TokenLogprob chosen{};
  std::vector<TokenLogprob> top;
  const int32_t token = s.sampler.choose(logits, options_.top_logprobs, &chosen, &top);
  s.generated.push_back(token);
  s.tokens.push_back(token);
  if (options_.top_logprobs >= 0) {
    s.logprobs.push_back(chosen);
    s.top_logprobs.push_back(std::move(top));
  }
  const auto& eos = options_.eos_token_ids;
  if (std::find(eos.begin(), eos.end(), token) != eos.end())
    s.finish = FinishReason::eos;
  else if (int(s.generated.size()) >= options_.max_new_tokens)
    s.finish = FinishReason::length;
}

template <typename T>
void BatchGenerator<T>::slide(int i) {
  Sequence<T>& s = *sequences_[i];
  // Keep the newest half of the window and recompute its cache: the model then sees between
  // n_ctx/2 and n_ctx tokens, and the recomputation happens once every n_ctx/2 tokens.
  const size_t keep = std::max(1, weights_.n_ctx / 2);
  s.tokens.erase(s.tokens.begin(), s.tokens.end() - keep);
  s.cache.length = 0;
  Chunk<T> chunk{&s.cache, s.tokens.data(), static_cast<int>(keep)};
  T* logits = logits_.data() + size_t(i) * weights_.n_vocab;
  const int last = chunk.n - 1;
  forward_pass(weights_, &chunk, 1, workspace_, &last, 1, logits);
  choose(i, logits);
}

template <typename T>
std::vector<int> BatchGenerator<T>::step() {
  stepped_.clear();
  if (!prefilled_) {
    prefilled_ = true;
    for (int i = 0; i < size(); ++i) {
      Sequence<T>& s = *sequences_[i];
      if (!s.active()) continue;
      Chunk<T> chunk{&s.cache, s.tokens.data(), static_cast<int>(s.tokens.size())};
      T* logits = logits_.data() + size_t(i) * weights_.n_vocab;
      const int last = chunk.n - 1;
      forward_pass(weights_, &chunk, 1, workspace_, &last, 1, logits);
      choose(i, logits);
      stepped_.push_back(i);
    }
    return stepped_;
  }
  segments_.clear();
  std::vector<int>& batched = batched_;
  batched.clear();
  for (int i = 0; i < size(); ++i) {
    Sequence<T>& s = *sequences_[i];
    if (!s.active()) continue;
    stepped_.push_back(i);
    if (s.cache.length == s.cache.capacity) {  // only with a sliding window
      slide(i);
      continue;
    }
    segments_.push_back({&s.cache, &s.tokens.back(), 1});
    batched.push_back(i);
  }
  if (!segments_.empty()) {
    std::vector<int> rows(segments_.size());
    for (size_t j = 0; j < rows.size(); ++j) rows[j] = static_cast<int>(j);
    forward_pass(weights_, segments_.data(), static_cast<int>(segments_.size()), workspace_,
                 rows.data(), static_cast<int>(rows.size()), batch_logits_.data());
    for (size_t j = 0; j < batched.size(); ++j)
      choose(batched[j], batch_logits_.data() + j * weights_.n_vocab);
  }
  return stepped_;
}

template <typename T>
std::vector<std::vector<int32_t>> generate(const Weights<T>& weights,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerationOptions& options,
                                           const std::function<bool(int, int32_t)>& on_token,
                                           const std::atomic<bool>* cancel) {
  BatchGenerator<T> generator(weights, prompts, options);
  while (!generator.done()) {
    if (cancel && cancel->load()) {
      for (int i = 0; i < generator.size(); ++i) generator.stop(i, FinishReason::cancelled);
      break;
    }
    for (int i : generator.step())
      if (on_token && !on_token(i, generator.sequence(i).generated.back()))
        generator.stop(i, FinishReason::stopped);
  }
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < generator.size(); ++i) out.push_back(generator.sequence(i).generated);
  return out;
}

template <typename T>
void forward(const Weights<T>& weights, const std::vector<int32_t>& ids, T* logits) {
  const int n = static_cast<int>(ids.size());
  KVCache<T> cache(weights, n);
  Workspace<T> workspace(weights, n, n);
  Chunk<T> chunk{&cache, ids.data(), n};
  std::vector<int> rows(n);
  for (int i = 0; i < n; ++i) rows[i] = i;
  forward_pass(weights, &chunk, 1, workspace, rows.data(), n, logits);
}

template <typename T>
std::vector<double> score(const Weights<T>& weights, const std::vector<int32_t>& ids) {
  std::vector<T> logits(ids.size() * size_t(weights.n_vocab));
  forward(weights, ids, logits.data());
  std::vector<double> out;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const T* row = logits.data() + i * weights.n_vocab;
    const double m = *std::max_element(row, row + weights.n_vocab);
    double sum = 0;
    for (int v = 0; v < weights.n_vocab; ++v) sum += std::exp(double(row[v]) - m);
    out.push_back(double(row[ids[i + 1]]) - m - std::log(sum));
  }
  return out;
}

#define GPT2GEN_INSTANTIATE(T)                                                                 \
  template void check_memory<T>(const Weights<T>&, const std::vector<size_t>&,                 \
                                const GenerationOptions&);                                     \
  template class BatchGenerator<T>;                                                            \
  template std::vector<std::vector<int32_t>> generate<T>(                                      \
      const Weights<T>&, const std::vector<std::vector<int32_t>>&, const GenerationOptions&,   \
      const std::function<bool(int, int32_t)>&, const std::atomic<bool>*);                     \
  template void forward<T>(const Weights<T>&, const std::vector<int32_t>&, T*);                \
  template std::vector<double> score<T>(const Weights<T>&, const std::vector<int32_t>&);
GPT2GEN_INSTANTIATE(float)
GPT2GEN_INSTANTIATE(double)

}  // namespace gpt2gen
