#include "memory.hpp"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace gpt2gen {

namespace {

std::string gib(size_t bytes) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f GiB", bytes / double(size_t(1) << 30));
  return buffer;
}

MemoryBudget read_memory_budget() {
  const size_t physical = size_t(sysconf(_SC_PHYS_PAGES)) * size_t(sysconf(_SC_PAGE_SIZE));
  MemoryBudget budget{physical, "this machine's"};
  // cgroup v2, then v1; "max" (v2's "no limit") does not parse as a number.
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream file(path);
    unsigned long long limit = 0;
    if (file >> limit && limit < budget.bytes) budget = {size_t(limit), "this cgroup's limit of"};
  }
  return budget;
}

}  // namespace

const MemoryBudget& memory_budget() {
  static const MemoryBudget budget = read_memory_budget();
  return budget;
}

void refuse_if_over(size_t bytes, const MemoryBudget& budget) {
  if (bytes > budget.bytes)
    throw std::length_error("this generation would need " + gib(bytes) +
                            " for its KV cache and "
                            "activations, more than " +
                            budget.owner + " " + gib(budget.bytes));
}

}  // namespace gpt2gen
