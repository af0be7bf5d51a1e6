// Writes sm90_wgmma.inc: the wgmma.mma_async wrappers of ptx/sm90.cuh.
//
// Inline PTX needs one literal operand list per accumulator count (32 to
// 128 registers), which is tedious and error-prone to type by hand, so the
// wrappers are generated. After editing this file, from the repository root:
//   g++ -std=c++20 -o /tmp/gen_wgmma src/cuda/ptx/gen_wgmma.cpp &&
//   /tmp/gen_wgmma > src/cuda/ptx/sm90_wgmma.inc
// The ctest test flashattn_wgmma_inc_is_generated fails when the committed
// file differs from what this program prints.
#include <cstdio>
#include <string>

namespace {

std::string acc_list(int n) {
  std::string s = "{";
  for (int i = 0; i < n; ++i) s += (i ? ", %" : "%") + std::to_string(i);
  return s + "}";
}

std::string acc_constraints(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? ", " : "") + std::string("\"+f\"(d[") + std::to_string(i) + "])";
  return s;
}

// SS: A and B from shared memory. name "wgmma_ss": both K-major
// (imm-trans-a = imm-trans-b = 0); "wgmma_ss_tt": both MN-major (A M-major,
// B N-major; imm-trans-a = imm-trans-b = 1), e.g. dQ = dS K in the backward
// with dS stored keys x queries and K keys x head_dim; "wgmma_ss_bt": A
// K-major, B N-major (imm-trans-b = 1 only), e.g. dV += P^T dO with P^T
// stored keys x queries and dO queries x head_dim.
void emit_ss(const char* name, int trans_a, int trans_b, int n_inst, const char* ctype, const char* ptype) {
  const int n = n_inst / 2;  // accumulator floats a thread holds
  const std::string accs = acc_list(n), cons = acc_constraints(n);
  std::printf("__device__ __forceinline__ void %s(float (&d)[%d], std::uint64_t desc_a, std::uint64_t desc_b, "
              "int scale_d, %s) {\n", name, n, ctype);
  std::printf("  asm volatile(\n");
  std::printf("      \"{\\n.reg .pred p;\\n\"\n");
  std::printf("      \"setp.ne.b32 p, %%%d, 0;\\n\"\n", n + 2);
  std::printf("      \"wgmma.mma_async.sync.aligned.m64n%dk16.f32.%s.%s \"\n", n_inst, ptype, ptype);
  std::printf("      \"%s, \"\n", accs.c_str());
  std::printf("      \"%%%d, %%%d, p, 1, 1, %d, %d;\\n}\\n\"\n", n, n + 1, trans_a, trans_b);
  std::printf("      : %s\n", cons.c_str());
  std::printf("      : \"l\"(desc_a), \"l\"(desc_b), \"r\"(scale_d));\n");
  std::printf("}\n");
}

// RS: A from registers (the m64k16 fragment, 4 registers a thread), B from
// shared memory. name "wgmma_rs_bt": B N-major (imm-trans-b = 1), e.g. P V
// with V stored keys x head_dim; "wgmma_rs": B K-major (imm-trans-b = 0),
// e.g. S^T = K Q^T with Q stored queries x head_dim.
void emit_rs(const char* name, int trans_b, int n_inst, const char* ctype, const char* ptype) {
  const int n = n_inst / 2;  // accumulator floats a thread holds
  const std::string accs = acc_list(n), cons = acc_constraints(n);
  std::printf("__device__ __forceinline__ void %s(float (&d)[%d], const std::uint32_t (&a)[4], "
              "std::uint64_t desc_b, int scale_d, %s) {\n", name, n, ctype);
  std::printf("  asm volatile(\n");
  std::printf("      \"{\\n.reg .pred p;\\n\"\n");
  std::printf("      \"setp.ne.b32 p, %%%d, 0;\\n\"\n", n + 5);
  std::printf("      \"wgmma.mma_async.sync.aligned.m64n%dk16.f32.%s.%s \"\n", n_inst, ptype, ptype);
  std::printf("      \"%s, \"\n", accs.c_str());
  std::printf("      \"{%%%d, %%%d, %%%d, %%%d}, %%%d, p, 1, 1, %d;\\n}\\n\"\n", n, n + 1, n + 2, n + 3, n + 4,
              trans_b);
  std::printf("      : %s\n", cons.c_str());
  std::printf("      : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"l\"(desc_b), \"r\"(scale_d));\n");
  std::printf("}\n");
}

// The e4m3 forms (k32, e4m3 x e4m3 -> f32): as emit_ss / emit_rs, but
// wgmma with 8-bit inputs takes no transpose flags (both operands must be
// K-major), only scale-d and the two input negations (1: none).
void emit_ss_fp8(const char* name, int n_inst) {
  const int n = n_inst / 2;
  const std::string accs = acc_list(n), cons = acc_constraints(n);
  std::printf("__device__ __forceinline__ void %s(float (&d)[%d], std::uint64_t desc_a, std::uint64_t desc_b, "
              "int scale_d, __nv_fp8_e4m3) {\n", name, n);
  std::printf("  asm volatile(\n");
  std::printf("      \"{\\n.reg .pred p;\\n\"\n");
  std::printf("      \"setp.ne.b32 p, %%%d, 0;\\n\"\n", n + 2);
  std::printf("      \"wgmma.mma_async.sync.aligned.m64n%dk32.f32.e4m3.e4m3 \"\n", n_inst);
  std::printf("      \"%s, \"\n", accs.c_str());
  std::printf("      \"%%%d, %%%d, p, 1, 1;\\n}\\n\"\n", n, n + 1);
  std::printf("      : %s\n", cons.c_str());
  std::printf("      : \"l\"(desc_a), \"l\"(desc_b), \"r\"(scale_d));\n");
  std::printf("}\n");
}

void emit_rs_fp8(const char* name, int n_inst) {
  const int n = n_inst / 2;
  const std::string accs = acc_list(n), cons = acc_constraints(n);
  std::printf("__device__ __forceinline__ void %s(float (&d)[%d], const std::uint32_t (&a)[4], "
              "std::uint64_t desc_b, int scale_d, __nv_fp8_e4m3) {\n", name, n);
  std::printf("  asm volatile(\n");
  std::printf("      \"{\\n.reg .pred p;\\n\"\n");
  std::printf("      \"setp.ne.b32 p, %%%d, 0;\\n\"\n", n + 5);
  std::printf("      \"wgmma.mma_async.sync.aligned.m64n%dk32.f32.e4m3.e4m3 \"\n", n_inst);
  std::printf("      \"%s, \"\n", accs.c_str());
  std::printf("      \"{%%%d, %%%d, %%%d, %%%d}, %%%d, p, 1, 1;\\n}\\n\"\n", n, n + 1, n + 2, n + 3, n + 4);
  std::printf("      : %s\n", cons.c_str());
  std::printf("      : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"l\"(desc_b), \"r\"(scale_d));\n");
  std::printf("}\n");
}

void emit(int n_inst, const char* ctype, const char* ptype) {
  emit_ss("wgmma_ss", 0, 0, n_inst, ctype, ptype);
  emit_rs("wgmma_rs_bt", 1, n_inst, ctype, ptype);
}

}  // namespace

int main() {
  std::printf("// Generated by gen_wgmma.cpp (same directory); do not edit by hand.\n");
  std::printf("// Included by sm90.cuh inside namespace flashattn::detail::ptx::sm90.\n");
  const char* types[][2] = {{"__half", "f16"}, {"__nv_bfloat16", "bf16"}};
  for (const auto& t : types)
    for (const int n_inst : {64, 128, 256}) emit(n_inst, t[0], t[1]);
  // The backward's dQ = dS K: one 64-column box of K a warpgroup (N = 64),
  // or two at d = 256 (N = 128).
  for (const auto& t : types)
    for (const int n_inst : {64, 128}) emit_ss("wgmma_ss_tt", 1, 1, n_inst, t[0], t[1]);
  // The d = 256 backward: S^T and dP^T of 32 queries a consumer (N = 32),
  // dV += P^T dO and dK += dS^T Q with P^T / dS^T from shared memory on
  // 128 head_dim columns a consumer (N = 128).
  for (const auto& t : types) {
    emit_ss("wgmma_ss", 0, 0, 32, t[0], t[1]);
    emit_ss("wgmma_ss_bt", 0, 1, 128, t[0], t[1]);
  }
  // The backward's S^T = K Q^T and dP^T = V dO^T at d = 64, K and V held in
  // registers (N = the 64 queries of a tile).
  for (const auto& t : types) emit_rs("wgmma_rs", 0, 64, t[0], t[1]);
  // The FP8 (e4m3) forward: S = Q K^T over 128 keys (d 64, 128) or 64
  // (d 256), and O += P V^T with N = head_dim, P from registers. e4m3
  // wgmma is k32 and reads both operands K-major (no transpose flags).
  for (const int n_inst : {64, 128}) emit_ss_fp8("wgmma_ss", n_inst);
  for (const int n_inst : {64, 128, 256}) emit_rs_fp8("wgmma_rs", n_inst);
  return 0;
}
