#include "pathfinder_cues.h"

#include <algorithm>
#include <cmath>

namespace lra {

double marker_distance(const PathfinderImage& img) {
  return std::hypot(double(img.marker_x[1] - img.marker_x[0]), double(img.marker_y[1] - img.marker_y[0]));
}

double straight_line_ink(const PathfinderParams& p, const PathfinderImage& img) {
  const int n = p.size;
  const double ax = img.marker_x[0], ay = img.marker_y[0], bx = img.marker_x[1], by = img.marker_y[1];
  const double len = std::hypot(bx - ax, by - ay);
  // Points this close to a marker centre lie on its disc or on the line
  // leaving it, inked whatever the label.
  const double skip = p.marker_radius + p.line_radius + 1.0;
  int points = 0, inked = 0;
  for (int s = 0; s <= static_cast<int>(2 * len); ++s) {
    const double t = len > 0 ? s / (2 * len) : 0.0;
    const double x = ax + t * (bx - ax), y = ay + t * (by - ay);
    if (std::hypot(x - ax, y - ay) <= skip || std::hypot(x - bx, y - by) <= skip) continue;
    const int cx = static_cast<int>(std::lround(x)), cy = static_cast<int>(std::lround(y));
    bool ink = false;
    for (int yy = std::max(0, cy - 1); yy <= std::min(n - 1, cy + 1) && !ink; ++yy)
      for (int xx = std::max(0, cx - 1); xx <= std::min(n - 1, cx + 1) && !ink; ++xx)
        ink = img.pixels[size_t(yy) * n + xx] > 127;
    ++points;
    inked += ink;
  }
  return points ? double(inked) / points : -1.0;
}

double ink_near_line(const PathfinderParams& p, const PathfinderImage& img, double half_width) {
  const int n = p.size;
  const double ax = img.marker_x[0], ay = img.marker_y[0], bx = img.marker_x[1], by = img.marker_y[1];
  const double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
  const double width = half_width * std::sqrt(len2), skip = p.marker_radius + p.line_radius + 1.0;
  int pixels = 0, inked = 0;
  // The band's bounding box only.
  const int x0 = std::max(0, static_cast<int>(std::floor(std::min(ax, bx) - width)));
  const int x1 = std::min(n - 1, static_cast<int>(std::ceil(std::max(ax, bx) + width)));
  const int y0 = std::max(0, static_cast<int>(std::floor(std::min(ay, by) - width)));
  const int y1 = std::min(n - 1, static_cast<int>(std::ceil(std::max(ay, by) + width)));
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      if (std::hypot(x - ax, y - ay) <= skip || std::hypot(x - bx, y - by) <= skip) continue;
      const double t = len2 > 0 ? std::clamp(((x - ax) * dx + (y - ay) * dy) / len2, 0.0, 1.0) : 0.0;
      if (std::hypot(ax + t * dx - x, ay + t * dy - y) > width) continue;
      ++pixels;
      inked += img.pixels[size_t(y) * n + x] > 127;
    }
  return pixels ? double(inked) / pixels : -1.0;
}

}  // namespace lra
