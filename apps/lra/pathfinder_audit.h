// Shortcuts in Pathfinder data: how well a label can be guessed from cues
// that need no contour tracing (docs/lra.md, "Cues that need no tracing").
// A cue is a number read off an image and its two markers; its rule is the
// majority label of each bin of the cue over the first half of the images,
// scored on the second half. A task worth training on keeps every rule
// near chance (0.5), except the one that follows the contours.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "pathfinder.h"
#include "pathfinder_cues.h"

namespace lra {

struct CueScore {
  std::string name;   // "marker distance", "ink on the straight line", "both", "band 1/8", ...
  double accuracy;    // of the rule on the scoring half
  uint64_t scored;    // images in the scoring half
};

// The rule's accuracy over (bin, label) pairs: each bin's majority label
// over the first half (unseen or tied bins: 0), scored on the second half.
double binned_rule_accuracy(const std::vector<std::pair<int64_t, int>>& binned);

struct PathfinderAudit {
  std::vector<CueScore> cues;
  double contours = 0;  // contours drawn an image, targets included (mean)
  double ink = 0;       // fraction of ink pixels (mean)
};

// The rules of every cue over images 0..count-1 of (seed, split).
PathfinderAudit audit_pathfinder(const PathfinderParams& p, uint64_t seed, Split split, uint64_t count, int threads);

}  // namespace lra
