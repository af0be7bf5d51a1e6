// Cues of a Pathfinder image that need no contour tracing: what the
// generator's cue matching equalises between the labels (pathfinder.cpp)
// and what the audit scores (pathfinder_audit.h).
#pragma once

#include "pathfinder.h"

namespace lra {

// The cues of one image.
// - marker distance: the Euclidean distance between the marker centres;
// - ink on the straight line: the fraction of points of the straight
//   segment between the markers (every half pixel, outside the marker discs
//   and the line's width around them) with ink within one pixel (Chebyshev);
//   -1 when no point is left (markers nearly touching);
// - ink near the line: the fraction of inked pixels among those within
//   half_width times the markers' distance of the straight segment between
//   them (outside the marker discs and the line's width around them):
//   wider views of the same shortcut, which a gently curved contour
//   between the markers also feeds; -1 when no pixel is left. The audit
//   scores bands of half-width 1/8, 1/4 and 1/2, alone and with the
//   distance.
double marker_distance(const PathfinderImage& img);
double straight_line_ink(const PathfinderParams& p, const PathfinderImage& img);
double ink_near_line(const PathfinderParams& p, const PathfinderImage& img, double half_width = 0.25);

}  // namespace lra
