// float -> f16 / bf16 storage for the tools' random inputs, round to
// nearest even, with no dependence on compiler support for _Float16 /
// __bf16. The tools use the library's public API only; this is their own
// copy of the host conversions (the library's are internal).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tools {

inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

inline std::uint16_t float_to_f16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // overflow (>= 65520) -> inf
  if (a < 0x38800000u) {                        // below the smallest normal 2^-14
    float m;
    std::memcpy(&m, &a, 4);
    m *= 16777216.0f;  // in units of 2^-24
    return sign | static_cast<std::uint16_t>(std::nearbyint(m));
  }
  std::uint32_t r = a - 0x38000000u;  // rebias 127 -> 15 (shifted by 13)
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<std::uint16_t>(r >> 13);
}

}  // namespace tools
