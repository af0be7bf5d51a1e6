// A minimal parallel loop on std::thread. Work items are claimed from an
// atomic counter, so which thread runs an item is arbitrary: callers make
// each item a pure function of its index and write it to its own slot.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lra {

template <class F>
void parallel_for(uint64_t n, int threads, F&& fn) {
  const int t = static_cast<int>(std::max<uint64_t>(1, std::min<uint64_t>(n, static_cast<uint64_t>(std::max(1, threads)))));
  if (t == 1) {
    for (uint64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<uint64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    try {
      for (uint64_t i = next++; i < n; i = next++) fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = n;
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (int k = 1; k < t; ++k) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace lra
