#include "pathfinder_audit.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

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

double binned_rule_accuracy(const std::vector<std::pair<int64_t, int>>& binned) {
  const size_t half = binned.size() / 2;
  std::map<int64_t, int> votes;  // positives minus negatives
  for (size_t i = 0; i < half; ++i) votes[binned[i].first] += binned[i].second ? 1 : -1;
  size_t right = 0;
  for (size_t i = half; i < binned.size(); ++i) {
    const auto it = votes.find(binned[i].first);
    const int guess = it != votes.end() && it->second > 0 ? 1 : 0;  // unseen or tied bins: negative
    right += guess == binned[i].second;
  }
  return binned.size() > half ? double(right) / double(binned.size() - half) : 0.0;
}

PathfinderAudit audit_pathfinder(const PathfinderParams& p, uint64_t seed, Split split, uint64_t count, int threads) {
  // Bands of half-width an eighth, a quarter and a half of the distance.
  constexpr double kBands[] = {0.125, 0.25, 0.5};
  constexpr const char* kBandNames[] = {"band 1/8", "band 1/4", "band 1/2"};
  std::vector<std::pair<int64_t, int>> dist(count), line(count), both(count);
  std::vector<std::pair<int64_t, int>> band[3], band_dist[3];
  for (int w = 0; w < 3; ++w) band[w].resize(count), band_dist[w].resize(count);
  PathfinderAudit a;
  generate_pathfinder(p, seed, split, count, threads, [&](uint64_t i, const PathfinderImage& img) {
    // 1-pixel bins of the distance; tenths of the ink fraction (bin -1: none).
    const int64_t d = static_cast<int64_t>(std::floor(marker_distance(img)));
    const double f = straight_line_ink(p, img);
    const int64_t l = f < 0 ? -1 : std::min<int64_t>(9, static_cast<int64_t>(f * 10));
    dist[i] = {d, img.label};
    line[i] = {l, img.label};
    both[i] = {d * 16 + (l + 1), img.label};
    // Fortieths of a band's ink fraction (a contour fills a few tenths of
    // a band at most).
    for (int w = 0; w < 3; ++w) {
      const double g = ink_near_line(p, img, kBands[w]);
      const int64_t b = g < 0 ? -1 : std::min<int64_t>(39, static_cast<int64_t>(g * 40));
      band[w][i] = {b, img.label};
      band_dist[w][i] = {d * 64 + (b + 1), img.label};
    }
    a.contours += img.contours;
    for (uint8_t v : img.pixels) a.ink += v > 127;
  });
  const uint64_t scored = count - count / 2;
  a.cues = {{"marker distance", binned_rule_accuracy(dist), scored},
            {"ink on the straight line", binned_rule_accuracy(line), scored},
            {"both", binned_rule_accuracy(both), scored}};
  for (int w = 0; w < 3; ++w) {
    a.cues.push_back({kBandNames[w], binned_rule_accuracy(band[w]), scored});
    a.cues.push_back({std::string(kBandNames[w]) + " and distance", binned_rule_accuracy(band_dist[w]), scored});
  }
  a.contours /= double(count);
  a.ink /= double(count) * p.size * p.size;
  return a;
}

}  // namespace lra
