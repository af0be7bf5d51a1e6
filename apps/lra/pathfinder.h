// Pathfinder as in Linsley et al. 2018 and the Long Range Arena: is there a
// contour joining the two circular markers? Rendered on a square uint8
// canvas; tokens are the pixel intensities, row-major (docs/lra.md,
// "Pathfinder").
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lra_format.h"
#include "rng.h"

namespace lra {

// The per-size parameters (pathfinder_params() holds the table).
struct PathfinderParams {
  int size = 0;                  // image side in pixels
  double segment_length = 0;     // pixels per segment
  double line_radius = 0;        // pixel centres within this distance of a segment are drawn
  double marker_radius = 0;      // pixel centres within this distance of a contour end are drawn
  int contour_segments = 0;      // segments of each of the two target contours
  int distractors = 0;           // distractor contours (fewer when one cannot be placed)
  int distractor_segments = 0;   // segments of a distractor
  double max_turn_deg = 0;       // smoothness prior: turn between segments uniform in +-max_turn
  int gap = 0;                   // pixels of different contours are more than `gap` apart (Chebyshev)
};

// The table for the supported sizes 32, 64, 128 (Path-X) and 256
// (Path-256); throws std::invalid_argument for another size.
PathfinderParams pathfinder_params(int size);

struct PathfinderImage {
  std::vector<uint8_t> pixels;  // size * size, 0 background, 255 ink
  int label = 0;                // 1 when the markers are on the same contour
  int marker_x[2] = {0, 0};     // marker centres (pixel coordinates)
  int marker_y[2] = {0, 0};
  int contours = 0;             // contours drawn, targets included
};

// One image with the given label drawn from the stream `rng`, before cue
// matching (generate_pathfinder keeps or redraws it).
void pathfinder_image(const PathfinderParams& p, Rng& rng, int label, PathfinderImage& out);

// Example i's label: each pair (2k, 2k+1) holds one positive and one
// negative in an order drawn from (seed, split, k), so the labels are
// balanced (exactly, for an even count) with no pattern in the order.
int pathfinder_label(uint64_t seed, Split split, uint64_t index);

using PathfinderEmit = std::function<void(uint64_t index, const PathfinderImage& image)>;
using PathfinderProgress = std::function<void(uint64_t done, uint64_t total)>;

// Images 0..count-1 of (seed, split), each a pure function of (seed,
// split, i) and the parameters, emitted in order whatever `threads` is.
// Each is drawn until cue matching keeps it, so that the markers' distance
// and the ink on the straight line between them have the same joint
// distribution in both labels (pathfinder.cpp, docs/lra.md).
void generate_pathfinder(const PathfinderParams& p, uint64_t seed, Split split, uint64_t count, int threads,
                         const PathfinderEmit& emit, const PathfinderProgress& progress = {});

}  // namespace lra
