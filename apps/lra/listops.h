// ListOps as in the Long Range Arena (Tay et al. 2020; Nangia & Bowman
// 2018): nested MIN / MAX / MED / SM expressions over the digits 0-9, the
// label being the expression's value (docs/lra.md, "ListOps").
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lra_format.h"
#include "rng.h"

namespace lra {

// Token ids. 0 is padding; a digit d is d + 1; an operator token carries
// its opening bracket ("[MAX"), as in LRA, so a sequence's token count is
// LRA's expression length.
enum ListOpsToken : uint8_t {
  kListOpsPad = 0,
  kListOpsDigit0 = 1,  // .. kListOpsDigit0 + 9
  kListOpsMin = 11,
  kListOpsMax = 12,
  kListOpsMed = 13,
  kListOpsSm = 14,
  kListOpsClose = 15,
};
inline constexpr uint32_t kListOpsVocab = 16;
inline constexpr uint32_t kListOpsClasses = 10;

struct ListOpsConfig {
  int max_depth = 10;       // nodes at this depth are digits
  int min_args = 2;
  int max_args = 10;
  double leaf_prob = 0.75;  // a node above max_depth is a digit with this probability
  int min_len = 501;        // accepted lengths: min_len <= length <= max_len
  int max_len = 1999;
  int seq_len = 2000;       // records are padded to this
};

// One candidate expression from its own stream: appends its tokens to
// `tokens` (cleared first) and returns true with its value when its length
// is within [min_len, max_len]; stops early (false) once it is longer.
bool listops_candidate(const ListOpsConfig& cfg, Rng& rng, std::vector<uint8_t>& tokens, int& value);

// "[MAX 4 3 [MIN 2 3 ] 1 0 ]" for a token sequence (padding ignored).
std::string listops_to_string(const uint8_t* tokens, size_t n);

using Progress = std::function<void(uint64_t done, uint64_t total)>;
using Emit = std::function<void(int32_t label, uint32_t length, const uint8_t* tokens)>;

// `count` distinct expressions for (seed, split): candidate j is a pure
// function of (seed, split, j) and candidates are accepted in order of j
// unless their tokens repeat an accepted one, so the output does not
// depend on `threads`. emit() gets seq_len tokens (padded with 0).
void generate_listops(const ListOpsConfig& cfg, uint64_t seed, Split split, uint64_t count, int threads,
                      const Emit& emit, const Progress& progress = {});

}  // namespace lra
