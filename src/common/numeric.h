// Host conversions between the storage dtypes and float, round to nearest
// even, with no dependence on compiler support for _Float16 / __bf16; and
// integer helpers of the validation.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "flashattn/flashattn.h"

namespace flashattn::detail {

// ceil(a / b) for a >= 0, b >= 1, without the overflow of (a + b - 1) / b
// when b is near 2^63 (a block size is a user's int64).
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return a / b + (a % b != 0); }

inline float bits_to_float(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline std::uint32_t float_to_bits(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_float(std::uint16_t h) { return bits_to_float(static_cast<std::uint32_t>(h) << 16); }
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // Subnormal: value = man * 2^-24.
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline std::uint16_t float_to_f16(float f) {
  const std::uint32_t u = float_to_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;              // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;             // overflow (>= 65520) -> inf
  if (a < 0x38800000u) {                                   // below the smallest normal 2^-14
    const float m = bits_to_float(a) * 16777216.0f;        // in units of 2^-24
    return sign | static_cast<std::uint16_t>(std::nearbyint(m));
  }
  std::uint32_t r = a - 0x38000000u;                       // rebias 127 -> 15 (shifted by 13)
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<std::uint16_t>(r >> 13);
}

// OCP FP8 E4M3FN (DType::e4m3). Decoding is a table of the 256 codes,
// built from the format's definition at compile time: value =
// (-1)^s 2^(e-7) (1 + m/8) for e in [1, 15] except the NaN code
// (e = 15, m = 7), and (-1)^s 2^-6 (m/8) for e = 0.
constexpr float e4m3_decode_slow(unsigned code) {
  const unsigned e = (code >> 3) & 0xfu, m = code & 7u;
  float mag = (e == 0 ? 0.0f : 1.0f) + static_cast<float>(m) / 8.0f;
  if (e == 15 && m == 7) mag = std::numeric_limits<float>::quiet_NaN();
  for (int i = 0; i < (e == 0 ? 6 : 7 - static_cast<int>(e)); ++i) mag *= 0.5f;  // exact: powers of two
  for (int i = 0; i < static_cast<int>(e) - 7; ++i) mag *= 2.0f;
  return (code & 0x80u) ? -mag : mag;  // NaN codes keep their sign too
}
struct E4m3Table {
  float v[256];
};
constexpr E4m3Table make_e4m3_table() {
  E4m3Table t{};
  for (unsigned c = 0; c < 256; ++c) t.v[c] = e4m3_decode_slow(c);
  return t;
}
inline constexpr E4m3Table kE4m3Table = make_e4m3_table();

inline float e4m3_to_float(std::uint8_t code) { return kE4m3Table.v[code]; }

// Round to nearest even (flashattn::to_e4m3 documents the rule); the
// overflow of the rounding lands on the NaN code, 0x7f, as in torch.
inline std::uint8_t float_to_e4m3(float f) {
  const std::uint32_t u = float_to_bits(f);
  const auto sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a >= 0x43f00000u) return sign | 0x7fu;               // >= 480, inf, NaN
  if (a < 0x3c800000u) {                                   // below the smallest normal 2^-6
    const float m = bits_to_float(a) * 512.0f;             // in units of 2^-9, exact
    return sign | static_cast<std::uint8_t>(std::nearbyint(m));  // 8 is the code of 2^-6
  }
  std::uint32_t r = a - 0x3c000000u;                       // rebias 127 -> 7 (shifted by 20)
  r += 0x7ffffu + ((r >> 20) & 1u);
  return sign | static_cast<std::uint8_t>(r >> 20);        // at most 0x7f (NaN) for a < 480
}

// Load element i of a buffer of the given dtype as double / store from double.
inline double load_as_double(const void* base, DType t, std::int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[i];
    case DType::f64: return static_cast<const double*>(base)[i];
    case DType::f16: return f16_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case DType::bf16: return bf16_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case DType::e4m3: return e4m3_to_float(static_cast<const std::uint8_t*>(base)[i]);
  }
  return 0.0;
}
inline void store_from_double(void* base, DType t, std::int64_t i, double v) {
  switch (t) {
    case DType::f32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::f64: static_cast<double*>(base)[i] = v; break;
    case DType::f16: static_cast<std::uint16_t*>(base)[i] = float_to_f16(static_cast<float>(v)); break;
    case DType::bf16: static_cast<std::uint16_t*>(base)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::e4m3: static_cast<std::uint8_t*>(base)[i] = float_to_e4m3(static_cast<float>(v)); break;
  }
}

// Element offset of (b, s, h, 0) in a tensor view.
inline std::int64_t offset_of(const Tensor& t, std::int64_t b, std::int64_t s, std::int64_t h) {
  return b * t.stride_batch + s * t.stride_seq + h * t.stride_head;
}

}  // namespace flashattn::detail
