// Chooses the per-instruction-set kernel table at run time and holds the thread-count knob.
#include "backend.hpp"

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

#include "openmp.hpp"

namespace gpt2gen {

#define GPT2GEN_DECLARE_ISA(isa)  \
  namespace isa_##isa {           \
    const Backend& get_backend(); \
  }
GPT2GEN_DECLARE_ISA(generic)
#if GPT2GEN_HAVE_AVX2
GPT2GEN_DECLARE_ISA(avx2)
#endif
#if GPT2GEN_HAVE_AVX512
GPT2GEN_DECLARE_ISA(avx512)
#endif

namespace {

// Fastest first.
std::vector<const Backend*> usable_backends() {
  std::vector<const Backend*> out;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
#if GPT2GEN_HAVE_AVX512
  // VNNI (Ice Lake, Cascade Lake, Zen 4 and later) for the quantized formats' dot products;
  // AVX-512 machines without it (Skylake-SP) run the AVX2 copy.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma"))
    out.push_back(&isa_avx512::get_backend());
#endif
#if GPT2GEN_HAVE_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    out.push_back(&isa_avx2::get_backend());
#endif
#endif
  out.push_back(&isa_generic::get_backend());
  return out;
}

const Backend* find_backend(const std::string& name) {
  for (const Backend* b : usable_backends())
    if (name == b->name) return b;
  std::string names;
  for (const std::string& n : supported_backends()) names += (names.empty() ? "" : ", ") + n;
  throw std::invalid_argument("backend '" + name +
                              "' is not available on this CPU (available: " + names + ")");
}

const Backend* initial_backend() {
  const char* forced = std::getenv("GPT2GEN_ISA");
  if (forced && *forced) return find_backend(forced);
  return usable_backends().front();
}

std::atomic<const Backend*> current_backend{nullptr};

// OMP_NUM_THREADS if set; otherwise the physical cores among the CPUs this process may run on
// (SMT siblings share a core's FMA units and its memory bandwidth, so a second thread per core
// only adds contention); omp_get_max_threads() if the topology cannot be read.
int physical_cores() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  std::set<std::pair<long, long>> cores;  // (package, core)
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    long package = -1, core = -1;
    std::ifstream p(dir + "physical_package_id"), c(dir + "core_id");
    if (!(p >> package) || !(c >> core)) return 0;
    cores.emplace(package, core);
  }
  return static_cast<int>(cores.size());
#else
  return 0;
#endif
}

int default_threads() {
#ifndef _OPENMP
  return 1;  // built without OpenMP: every parallel region runs on the calling thread
#endif
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (env && *env) return omp_get_max_threads();
  static const int cores = physical_cores();
  return cores > 0 ? cores : omp_get_max_threads();
}

std::atomic<int> thread_count{0};
thread_local int thread_limit = 0;  // set_thread_limit

// After fork() the child's one thread is a copy of the forking one. If that thread had run
// OpenMP regions, libgomp's pool still lists the parent's worker threads, which do not exist in
// the child, and the next parallel region would wait for them forever. That thread therefore runs
// single-threaded in the child (results do not depend on the thread count); threads started in
// the child, such as a new scheduler's, get fresh pools and all the threads.
thread_local bool openmp_pool_is_stale = false;
const int fork_handler = pthread_atfork(nullptr, nullptr, [] { openmp_pool_is_stale = true; });

}  // namespace

const Backend& backend() {
  const Backend* b = current_backend.load();
  if (!b) {
    b = initial_backend();
    current_backend.store(b);
  }
  return *b;
}

std::vector<std::string> supported_backends() {
  std::vector<std::string> names;
  for (const Backend* b : usable_backends()) names.emplace_back(b->name);
  return names;
}

void set_backend(const std::string& name) { current_backend.store(find_backend(name)); }

int threads_allowed() {
  if (openmp_pool_is_stale) return 1;
  int n = thread_count.load();
  if (n <= 0) {
    n = default_threads();
    thread_count.store(n);
  }
  return n;
}

void set_thread_limit(int n) { thread_limit = n; }

int num_threads() {
  const int allowed = threads_allowed();
  return thread_limit > 0 ? std::min(thread_limit, allowed) : allowed;
}

void set_num_threads(int n) { thread_count.store(n > 0 ? n : default_threads()); }

void release_thread_pool() {
#ifdef _OPENMP
  // A forked child's stale pool lists workers that do not exist: freeing it would wait for them.
  if (!openmp_pool_is_stale) omp_pause_resource_all(omp_pause_soft);
#endif
}

}  // namespace gpt2gen
