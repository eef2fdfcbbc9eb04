#include "decode.hpp"

#include <cmath>
#include <stdexcept>

namespace gpt2gen {

template <typename T>
int32_t argmax(const T* logits, int n) {
  int32_t best = 0;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(logits[i])) return i;
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

template <typename T>
Generator<T>::Generator(const Weights<T>& weights, std::vector<int32_t> prompt, int max_new_tokens)
    : weights_(weights),
      kernels_(backend().kernels<T>()),
      prompt_(std::move(prompt)),
      max_new_tokens_(max_new_tokens),
      cache_(weights_, static_cast<int>(prompt_.size()) + max_new_tokens),
      workspace_(weights_, static_cast<int>(prompt_.size()), cache_.capacity),
      logits_(weights_.n_vocab) {
  if (prompt_.empty()) throw std::invalid_argument("the prompt must hold at least one token");
}

template <typename T>
int32_t Generator<T>::next() {
  if (produced_ >= max_new_tokens_) throw std::out_of_range("generation budget exhausted");
  if (produced_ == 0)
    kernels_.forward(weights_, cache_, workspace_, prompt_.data(),
                     static_cast<int>(prompt_.size()), false, logits_.data());
  else
    kernels_.forward(weights_, cache_, workspace_, &last_token_, 1, false, logits_.data());
  last_token_ = argmax(logits_.data(), weights_.n_vocab);
  ++produced_;
  return last_token_;
}

template <typename T>
std::vector<int32_t> generate(const Weights<T>& weights, const std::vector<int32_t>& prompt,
                              int n_new, const std::function<bool(int32_t)>& on_token) {
  std::vector<int32_t> out;
  if (n_new <= 0) return out;
  Generator<T> generator(weights, prompt, n_new);
  out.reserve(n_new);
  while (generator.produced() < n_new) {
    out.push_back(generator.next());
    if (on_token && !on_token(out.back())) break;
  }
  return out;
}

template <typename T>
void forward(const Weights<T>& weights, const std::vector<int32_t>& ids, T* logits) {
  const int n = static_cast<int>(ids.size());
  KVCache<T> cache(weights, n);
  Workspace<T> workspace(weights, n, n);
  backend().kernels<T>().forward(weights, cache, workspace, ids.data(), n, true, logits);
}

#define GPT2GEN_INSTANTIATE(T)                                                               \
  template int32_t argmax<T>(const T*, int);                                                 \
  template class Generator<T>;                                                               \
  template std::vector<int32_t> generate<T>(const Weights<T>&, const std::vector<int32_t>&,  \
                                            int, const std::function<bool(int32_t)>&);       \
  template void forward<T>(const Weights<T>&, const std::vector<int32_t>&, T*);
GPT2GEN_INSTANTIATE(float)
GPT2GEN_INSTANTIATE(double)

}  // namespace gpt2gen
