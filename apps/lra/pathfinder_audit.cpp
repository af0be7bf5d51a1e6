#include "pathfinder_audit.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

namespace lra {

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
