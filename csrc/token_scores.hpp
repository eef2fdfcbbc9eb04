// A token's log-probability under the model's raw distribution (a row of logits), and the most
// likely alternatives: log p(t) = logit_t − max − log Σ exp(logit − max), in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "request.hpp"

namespace gpt2gen {

template <typename T>
ScoredToken score_token(const T* logits, int n_vocab, int32_t token, int n_top) {
  const double m = *std::max_element(logits, logits + n_vocab);
  double sum = 0;
  for (int v = 0; v < n_vocab; ++v) sum += std::exp(double(logits[v]) - m);
  const double log_sum = std::log(sum);
  ScoredToken scored{{token, double(logits[token]) - m - log_sum}, {}};
  if (n_top > 0) {
    std::vector<int32_t> order(n_vocab);
    for (int v = 0; v < n_vocab; ++v) order[v] = v;
    const int n = std::min(n_top, n_vocab);
    std::partial_sort(order.begin(), order.begin() + n, order.end(),
                      [logits](int32_t a, int32_t b) {
                        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
                      });
    for (int i = 0; i < n; ++i)
      scored.top.push_back({order[i], double(logits[order[i]]) - m - log_sum});
  }
  return scored;
}

}  // namespace gpt2gen
