#include "forward_pass.hpp"

#include <algorithm>

#include "backend.hpp"

namespace gpt2gen {

template <typename T>
void forward_pass(const Weights<T>& weights, const Chunk<T>* chunks, int n_chunks, Workspace<T>& ws,
                  const int* rows, int n_rows, T* logits) {
  const Kernels<T>& kernels = backend().kernels<T>();
  kernels.transformer(weights, chunks, n_chunks, ws);
  for (int c = 0; c < n_chunks; ++c) chunks[c].cache->length += chunks[c].n;
  // Gather the rows in front; ascending indices never overwrite a row still to be read.
  const size_t d = weights.n_embd;
  T* x = ws.x.data();
  for (int i = 0; i < n_rows; ++i)
    if (rows[i] != i) std::copy(x + rows[i] * d, x + (rows[i] + 1) * d, x + i * d);
  if (n_rows > 0) kernels.lm_head(weights, x, n_rows, ws, logits);
}

template void forward_pass<float>(const Weights<float>&, const Chunk<float>*, int,
                                  Workspace<float>&, const int*, int, float*);
template void forward_pass<double>(const Weights<double>&, const Chunk<double>*, int,
                                   Workspace<double>&, const int*, int, double*);

}  // namespace gpt2gen
