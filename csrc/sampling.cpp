#include "sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace gpt2gen {

namespace {

constexpr double kMinusInf = -std::numeric_limits<double>::infinity();

std::string str(double x) {
  std::ostringstream s;
  s << x;
  return s.str();
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// Index of the largest score, ties to the lowest index and the first NaN winning, as np.argmax.
template <typename T>
int32_t argmax(const T* scores, int32_t n) {
  int32_t best = 0;
  T best_score = scores[0];
  for (int32_t i = 0; i < n; ++i) {
    if (std::isnan(scores[i])) return i;
    if (scores[i] > best_score) {
      best_score = scores[i];
      best = i;
    }
  }
  return best;
}

double max_finite(const std::vector<double>& scores) {
  double m = kMinusInf;
  for (double s : scores)
    if (s > m) m = s;
  return m;
}

double log_sum_exp(const std::vector<double>& scores) {
  const double m = max_finite(scores);
  if (!std::isfinite(m)) return m;
  double sum = 0;
  for (double s : scores) sum += std::exp(s - m);
  return m + std::log(sum);
}

}  // namespace

void SamplingOptions::validate(int n_vocab) const {
  auto fail = [](const std::string& message) { throw std::invalid_argument(message); };
  for (const auto& [token, bias] : logit_bias) {
    if (token < 0 || token >= n_vocab)
      fail("logit_bias has token id " + std::to_string(token) +
           ", not a token id: the vocabulary "
           "has ids 0.." +
           std::to_string(n_vocab - 1));
    if (!(bias >= -100 && bias <= 100))
      fail("logit_bias values must be in [-100, 100], got " + str(bias) + " for token " +
           std::to_string(token));
  }
  if (!std::isfinite(temperature) || temperature < 0)
    fail("temperature must be a finite number >= 0 (0 means greedy), got " + str(temperature));
  if (top_k < 0) fail("top_k must be >= 0 (0 disables it), got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1))
    fail("top_p must be in (0, 1] (1 disables it), got " + str(top_p));
  if (!(min_p >= 0 && min_p <= 1))
    fail("min_p must be in [0, 1] (0 disables it), got " + str(min_p));
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0)
    fail("repetition_penalty must be a finite number > 0 (1 disables it), got " +
         str(repetition_penalty));
  if (!(presence_penalty >= -2 && presence_penalty <= 2))
    fail("presence_penalty must be in [-2, 2] (0 disables it), got " + str(presence_penalty));
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2))
    fail("frequency_penalty must be in [-2, 2] (0 disables it), got " + str(frequency_penalty));
}

Rng::Rng(uint64_t seed) {
  for (uint64_t& word : s_) word = splitmix64(seed);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(const SamplingOptions& options, int n_vocab, const std::vector<int32_t>& prompt)
    : options_(options),
      n_vocab_(n_vocab),
      rng_(options.seed),
      seen_(n_vocab, 0),
      generated_(n_vocab, 0),
      scores_(n_vocab),
      order_(n_vocab) {
  for (int32_t t : prompt)
    if (!seen_[t]) {
      seen_[t] = 1;
      penalized_.push_back(t);
    }
}

template <typename T>
void Sampler::penalize(const T* logits) {
  for (int v = 0; v < n_vocab_; ++v) scores_[v] = static_cast<double>(logits[v]);
  const SamplingOptions& o = options_;
  for (const auto& [token, bias] : o.logit_bias) scores_[token] += bias;
  for (int32_t t : penalized_) {
    double& s = scores_[t];
    if (seen_[t] && o.repetition_penalty != 1.0)
      s = s < 0 ? s * o.repetition_penalty : s / o.repetition_penalty;
    if (generated_[t] > 0) s -= o.presence_penalty + o.frequency_penalty * generated_[t];
  }
}

void Sampler::apply_temperature() {
  if (options_.temperature != 1.0)
    for (double& s : scores_) s /= options_.temperature;
}

void Sampler::truncate() {
  const SamplingOptions& o = options_;
  if (o.top_k > 0 && o.top_k < n_vocab_) {  // keep every score >= the k-th largest
    std::vector<double>& kth = scratch_;
    kth.assign(scores_.begin(), scores_.end());
    std::nth_element(kth.begin(), kth.begin() + (o.top_k - 1), kth.end(), std::greater<double>());
    const double threshold = kth[o.top_k - 1];
    for (double& s : scores_)
      if (s < threshold) s = kMinusInf;
  }

  if (o.top_p < 1.0) {
    // Keep the most likely tokens until their mass reaches top_p: a token stays if the mass of
    // the tokens ranked above it is < top_p (transformers' "cumulative ascending mass > 1 - p").
    const double m = max_finite(scores_);
    double total = 0;
    int n_finite = 0;
    for (int v = 0; v < n_vocab_; ++v)
      if (scores_[v] > kMinusInf) {
        total += std::exp(scores_[v] - m);
        order_[n_finite++] = v;
      }
    auto by_score = [this](int32_t a, int32_t b) {
      return scores_[a] > scores_[b] || (scores_[a] == scores_[b] && a < b);
    };
    // Sort only as many of the best tokens as the nucleus needs, growing the sorted prefix.
    int sorted = 0, kept = 0;
    double mass_above = 0;
    for (int want = std::min(n_finite, 64); kept == sorted && sorted < n_finite;
         want = std::min(n_finite, want * 8)) {
      std::partial_sort(order_.begin() + sorted, order_.begin() + want, order_.begin() + n_finite,
                        by_score);
      for (; sorted < want; ++sorted) {
        if (kept == sorted && mass_above < o.top_p) ++kept;
        mass_above += std::exp(scores_[order_[sorted]] - m) / total;
      }
    }
    for (int i = std::max(kept, 1); i < n_finite; ++i) scores_[order_[i]] = kMinusInf;
  }

  if (o.min_p > 0.0) {  // drop tokens less likely than min_p times the most likely one
    const double m = max_finite(scores_);
    for (double& s : scores_)
      if (std::exp(s - m) < o.min_p) s = kMinusInf;
  }
}

void Sampler::observe(int32_t token) {
  if (!seen_[token] && generated_[token] == 0) penalized_.push_back(token);
  seen_[token] = 1;
  ++generated_[token];
}

template <typename T>
int32_t Sampler::choose(const T* logits, int n_top_logprobs, TokenLogprob* chosen,
                        std::vector<TokenLogprob>* top) {
  if (options_.greedy() && n_top_logprobs < 0 && !options_.changes_logits()) {
    // The argmax of the logits themselves: the same token, without a pass writing scores_.
    const int32_t token = argmax(logits, n_vocab_);
    observe(token);
    return token;
  }
  penalize(logits);
  if (!options_.greedy()) apply_temperature();

  double lse = 0;
  if (n_top_logprobs >= 0) {  // after penalties and temperature, before truncation
    lse = log_sum_exp(scores_);
    const int n = std::min(n_top_logprobs, n_vocab_);
    for (int v = 0; v < n_vocab_; ++v) order_[v] = v;
    std::partial_sort(order_.begin(), order_.begin() + n, order_.end(),
                      [this](int32_t a, int32_t b) {
                        return scores_[a] > scores_[b] || (scores_[a] == scores_[b] && a < b);
                      });
    top->clear();
    for (int i = 0; i < n; ++i) top->push_back({order_[i], scores_[order_[i]] - lse});
  }

  int32_t token;
  if (options_.greedy()) {
    token = argmax(scores_.data(), n_vocab_);
  } else {
    truncate();
    const double m = max_finite(scores_);
    double total = 0;
    for (double s : scores_) total += std::exp(s - m);
    // The fallback when the scores are not a distribution (NaN).
    token = argmax(scores_.data(), n_vocab_);
    if (std::isfinite(total) && total > 0) {
      // Inverse CDF over the token ids in order.
      const double u = rng_.uniform() * total;
      double cumulative = 0;
      for (int v = 0; v < n_vocab_; ++v) {
        const double w = std::exp(scores_[v] - m);
        if (w == 0) continue;
        token = v;
        cumulative += w;
        if (cumulative > u) break;
      }
    }
  }
  // The chosen token survived truncation, so scores_[token] is still its pre-truncation score.
  if (n_top_logprobs >= 0) *chosen = {token, scores_[token] - lse};
  observe(token);
  return token;
}

template <typename T>
std::vector<double> Sampler::probabilities(const T* logits) {
  penalize(logits);
  std::vector<double> probs(n_vocab_, 0.0);
  if (options_.greedy()) {
    probs[argmax(scores_.data(), n_vocab_)] = 1.0;
    return probs;
  }
  apply_temperature();
  truncate();
  const double m = max_finite(scores_);
  double total = 0;
  for (int v = 0; v < n_vocab_; ++v) total += probs[v] = std::exp(scores_[v] - m);
  for (double& p : probs) p /= total;
  return probs;
}

#define GPT2GEN_INSTANTIATE(T)                                                                   \
  template int32_t Sampler::choose<T>(const T*, int, TokenLogprob*, std::vector<TokenLogprob>*); \
  template std::vector<double> Sampler::probabilities<T>(const T*);
GPT2GEN_INSTANTIATE(float)
GPT2GEN_INSTANTIATE(double)

}  // namespace gpt2gen
