#include "optimizers/optimizer.h"
#include <benchmark/benchmark.h>
BENCHMARK_MAIN();
