// Calls flashattn::forward on a tiny CPU problem through the installed
// headers and library. Two keys with Q = 0 get equal weights, so O is the
// mean of the two value rows, and LSE = log(2).
#include <flashattn/flashattn.h>

#include <cmath>
#include <cstdio>

int main() {
  float q[2] = {0.0f, 0.0f}, k[4] = {1.0f, 2.0f, 3.0f, 4.0f}, v[4] = {1.0f, 2.0f, 5.0f, 6.0f};
  float o[2] = {0.0f, 0.0f}, lse = 0.0f;
  flashattn::ForwardArgs args;
  args.q = flashattn::Tensor::contiguous(q, flashattn::DType::f32, 1, 1, 1, 2);
  args.k = flashattn::Tensor::contiguous(k, flashattn::DType::f32, 1, 2, 1, 2);
  args.v = flashattn::Tensor::contiguous(v, flashattn::DType::f32, 1, 2, 1, 2);
  args.o = flashattn::Tensor::contiguous(o, flashattn::DType::f32, 1, 1, 1, 2);
  args.lse = &lse;
  flashattn::forward(args);
  const bool ok =
      std::abs(o[0] - 3.0f) < 1e-5f && std::abs(o[1] - 4.0f) < 1e-5f && std::abs(lse - std::log(2.0f)) < 1e-5f;
  std::printf("flashattn %s: o = (%g, %g), lse = %g: %s\n", flashattn::version(), o[0], o[1], lse, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
