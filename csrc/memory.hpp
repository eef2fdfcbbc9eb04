// How much memory a generation may plan to use, so that a hopeless request is refused before
// anything is allocated instead of being OOM-killed later.
#pragma once

#include <cstddef>
#include <string>

namespace gpt2gen {

// Physical memory, or less under a memory limit of this process's cgroup (a container), where
// pages past the limit would get the process OOM-killed. Read once per process.
struct MemoryBudget {
  size_t bytes;
  const char* owner;  // "this machine's", "this cgroup's limit of"
};
const MemoryBudget& memory_budget();

// Throws std::length_error ("this generation would need X GiB for its KV cache and activations,
// more than <owner> Y GiB") when bytes > budget.bytes.
void refuse_if_over(size_t bytes, const MemoryBudget& budget);

}  // namespace gpt2gen
