// fa-lra's data files (apps/lra, docs/lra.md) as token shards, so that the
// Long Range Arena tasks train through --task classify unchanged:
// --data lra:DIR reads DIR/train.bin and DIR/val.bin. Plain C++.
#pragma once

#include <string>

#include "shards.h"

namespace fatrain {

inline constexpr const char* kLraPrefix = "lra:";

// True when --data names fa-lra files ("lra:DIR").
bool is_lra_data(const std::string& data);

// One fa-lra file as a shard: one document per example (its real tokens,
// then eos), its label. An LRA token keeps its id; the special ids follow
// the file's vocabulary V: pad = V, bos ([CLS]) = V + 1, eos = V + 2,
// [MASK] = V + 3; the shard's vocabulary is V + 4. Throws
// std::runtime_error naming the file.
Shard lra_shard(const std::string& path);

// The image side in an fa-lra file's header (0: not an image task).
std::uint32_t lra_image_size(const std::string& path);

}  // namespace fatrain
