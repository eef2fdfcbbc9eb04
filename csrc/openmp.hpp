// OpenMP when the build has it (CMakeLists.txt). Without it the `#pragma omp` lines are ignored,
// every parallel region runs on the calling thread, and these stand in for the runtime calls the
// engine makes.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
inline int omp_get_max_threads() { return 1; }
#endif
