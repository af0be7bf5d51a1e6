#include "pathfinder.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numbers>
#include <stdexcept>
#include <string>
#include <tuple>

#include "parallel.h"
#include "pathfinder_cues.h"

namespace lra {

PathfinderParams pathfinder_params(int size) {
  // Contours grow with the image (targets about half its side) so that
  // the distance the model must trace grows with the sequence; distractors
  // have the targets' length and smoothness, as in Linsley et al., so that
  // length does not single out the targets. Lines stay 1-2 pixels wide and
  // the distractor counts keep the ink at 5-7% of the pixels.
  // docs/lra.md has the table and the reasons.
  PathfinderParams p;
  p.size = size;
  p.max_turn_deg = 45;
  switch (size) {
    case 32:
      p.segment_length = 3; p.line_radius = 0.5; p.marker_radius = 1.5;
      p.contour_segments = 6; p.distractors = 2; p.distractor_segments = 6; p.gap = 1;
      break;
    case 64:
      p.segment_length = 4; p.line_radius = 0.5; p.marker_radius = 2.0;
      p.contour_segments = 9; p.distractors = 4; p.distractor_segments = 9; p.gap = 1;
      break;
    case 128:
      p.segment_length = 5; p.line_radius = 0.75; p.marker_radius = 2.5;
      p.contour_segments = 14; p.distractors = 10; p.distractor_segments = 14; p.gap = 2;
      break;
    case 256:
      p.segment_length = 8; p.line_radius = 1.0; p.marker_radius = 4.0;
      p.contour_segments = 16; p.distractors = 20; p.distractor_segments = 16; p.gap = 2;
      break;
    default:
      throw std::invalid_argument("pathfinder: size " + std::to_string(size) + " (supported: 32, 64, 128, 256)");
  }
  return p;
}

int pathfinder_label(uint64_t seed, Split split, uint64_t index) {
  const uint64_t coin = mix_keys(seed, 0x7061697273ULL, static_cast<uint64_t>(split), index / 2) & 1;
  return static_cast<int>((index & 1) ^ coin);
}

namespace {

class Canvas {
 public:
  Canvas(const PathfinderParams& p) : p_(p), n_(p.size), owner_(size_t(n_) * n_, 0) {
    margin_ = p.marker_radius + 1.0;
  }

  void clear() { std::fill(owner_.begin(), owner_.end(), 0); }

  // Grows contour `id` of `segments` segments from a random start, or from
  // `start` (a pixel centre) when given; `mark_start` / `mark_end` add a
  // marker disc at that end. Returns false when no placement was found;
  // the canvas is then as before.
  bool grow(Rng& rng, uint8_t id, int segments, bool mark_start, bool mark_end, double& sx, double& sy, double& ex,
            double& ey, int tries, const int* start = nullptr) {
    const double max_turn = p_.max_turn_deg * std::numbers::pi / 180.0;
    for (int t = 0; t < tries; ++t) {
      added_.clear();
      // Contours start on a pixel centre and markers are centred on one,
      // so a marker disc is symmetric about its pixel.
      double x = start ? start[0] : std::round(margin_ + rng.uniform() * (n_ - 1 - 2 * margin_));
      double y = start ? start[1] : std::round(margin_ + rng.uniform() * (n_ - 1 - 2 * margin_));
      double dir = rng.uniform() * 2 * std::numbers::pi;
      sx = x;
      sy = y;
      bool ok = !mark_start || place_disc(id, x, y, p_.marker_radius);
      for (int s = 0; ok && s < segments; ++s) {
        ok = false;
        for (int attempt = 0; attempt < 8 && !ok; ++attempt) {
          const double d = dir + (2 * rng.uniform() - 1) * max_turn;
          const double nx = x + p_.segment_length * std::cos(d);
          const double ny = y + p_.segment_length * std::sin(d);
          if (nx < margin_ || ny < margin_ || nx > n_ - 1 - margin_ || ny > n_ - 1 - margin_) continue;
          if (place_segment(id, x, y, nx, ny)) {
            x = nx;
            y = ny;
            dir = d;
            ok = true;
          }
        }
      }
      // The end's disc is centred on the pixel nearest the end: within
      // half a pixel (Chebyshev), so it still overlaps the line's last pixels.
      if (ok && mark_end) ok = place_disc(id, std::round(x), std::round(y), p_.marker_radius);
      if (ok) {
        ex = mark_end ? std::round(x) : x;
        ey = mark_end ? std::round(y) : y;
        return true;
      }
      for (size_t k : added_) owner_[k] = 0;
    }
    return false;
  }

  // Whether a marker centred at (x, y) keeps inside the margin that every
  // contour point keeps.
  bool inside(double x, double y) const {
    return x >= margin_ && y >= margin_ && x <= n_ - 1 - margin_ && y <= n_ - 1 - margin_;
  }

  void render(std::vector<uint8_t>& pixels) const {
    pixels.resize(owner_.size());
    for (size_t k = 0; k < owner_.size(); ++k) pixels[k] = owner_[k] ? 255 : 0;
  }

 private:
  // Marks the pixels within `r` of the segment (a disc when a == b) as
  // contour `id`, unless one of them has a pixel of another contour within
  // `gap`: then nothing is marked.
  bool place(uint8_t id, double ax, double ay, double bx, double by, double r) {
    const int x0 = std::max(0, static_cast<int>(std::floor(std::min(ax, bx) - r)));
    const int x1 = std::min(n_ - 1, static_cast<int>(std::ceil(std::max(ax, bx) + r)));
    const int y0 = std::max(0, static_cast<int>(std::floor(std::min(ay, by) - r)));
    const int y1 = std::min(n_ - 1, static_cast<int>(std::ceil(std::max(ay, by) + r)));
    const double dx = bx - ax, dy = by - ay;
    const double len2 = dx * dx + dy * dy;
    pending_.clear();
    for (int y = y0; y <= y1; ++y) {
      for (int x = x0; x <= x1; ++x) {
        double t = len2 > 0 ? ((x - ax) * dx + (y - ay) * dy) / len2 : 0.0;
        t = std::clamp(t, 0.0, 1.0);
        const double ex = ax + t * dx - x, ey = ay + t * dy - y;
        if (ex * ex + ey * ey > r * r) continue;
        const size_t k = size_t(y) * n_ + x;
        if (owner_[k] == id) continue;
        if (!free_around(id, x, y)) return false;
        pending_.push_back(k);
      }
    }
    for (size_t k : pending_) {
      owner_[k] = id;
      added_.push_back(k);
    }
    return true;
  }
  bool place_segment(uint8_t id, double ax, double ay, double bx, double by) {
    return place(id, ax, ay, bx, by, p_.line_radius);
  }
  bool place_disc(uint8_t id, double x, double y, double r) { return place(id, x, y, x, y, r); }

  bool free_around(uint8_t id, int x, int y) const {
    const int g = p_.gap;
    for (int yy = std::max(0, y - g); yy <= std::min(n_ - 1, y + g); ++yy)
      for (int xx = std::max(0, x - g); xx <= std::min(n_ - 1, x + g); ++xx) {
        const uint8_t o = owner_[size_t(yy) * n_ + xx];
        if (o != 0 && o != id) return false;
      }
    return true;
  }

  const PathfinderParams& p_;
  int n_;
  double margin_;
  std::vector<uint8_t> owner_;   // 0 = background, else the contour's id
  std::vector<size_t> added_;    // pixels marked by the contour being grown
  std::vector<size_t> pending_;  // pixels of the shape being placed
};

}  // namespace

void pathfinder_image(const PathfinderParams& p, Rng& rng, int label, PathfinderImage& out) {
  Canvas canvas(p);
  for (int attempt = 0;; ++attempt) {
    if (attempt == 1000) throw std::runtime_error("pathfinder: no image could be placed (size " + std::to_string(p.size) + ")");
    canvas.clear();
    double ax0, ay0, ax1, ay1, bx0, by0, bx1, by1;
    if (label == 1) {
      // Target A with a marker at each end; target B unmarked.
      if (!canvas.grow(rng, 1, p.contour_segments, true, true, ax0, ay0, ax1, ay1, 20)) continue;
      if (!canvas.grow(rng, 2, p.contour_segments, false, false, bx0, by0, bx1, by1, 20)) continue;
    } else {
      // Target A with a marker at its end; target B grown from a marker
      // placed where the far marker of a positive would be. The two ends
      // of one smooth contour lie about its length apart, far more
      // narrowly than the ends of two independent contours: left free,
      // the markers' distance alone tells most labels. So a phantom
      // positive's target (grown alone on the empty canvas, as a
      // positive's A is, then erased) gives the offset between the
      // markers, turned by one of the square's 8 symmetries (distances
      // unchanged) so that B's marker fits inside: the distance has the
      // positives' distribution exactly.
      double px0, py0, px1, py1;
      if (!canvas.grow(rng, 1, p.contour_segments, true, true, px0, py0, px1, py1, 20)) continue;
      canvas.clear();
      const int dx = static_cast<int>(std::lround(px1 - px0)), dy = static_cast<int>(std::lround(py1 - py0));
      if (!canvas.grow(rng, 1, p.contour_segments, false, true, ax0, ay0, ax1, ay1, 20)) continue;
      bool placed = false;
      const int first = static_cast<int>(rng.uniform() * 8);
      for (int k = 0; k < 8 && !placed; ++k) {
        const int sym = (first + k) % 8;
        const int u = sym & 1 ? -dx : dx, v = sym & 2 ? -dy : dy;
        const int start[2] = {static_cast<int>(ax1) + (sym & 4 ? v : u), static_cast<int>(ay1) + (sym & 4 ? u : v)};
        if (!canvas.inside(start[0], start[1])) continue;
        placed = canvas.grow(rng, 2, p.contour_segments, true, false, bx0, by0, bx1, by1, 20, start);
      }
      if (!placed) continue;
    }
    int contours = 2;
    for (int d = 0; d < p.distractors; ++d) {
      double s0, s1, e0, e1;
      if (canvas.grow(rng, static_cast<uint8_t>(3 + d), p.distractor_segments, false, false, s0, s1, e0, e1, 10))
        ++contours;
    }
    canvas.render(out.pixels);
    out.label = label;
    out.contours = contours;
    // Positive: A's two ends; negative: A's end and B's start.
    const double mx0 = label == 1 ? ax0 : ax1, my0 = label == 1 ? ay0 : ay1;
    const double mx1 = label == 1 ? ax1 : bx0, my1 = label == 1 ? ay1 : by0;
    out.marker_x[0] = static_cast<int>(std::lround(mx0));
    out.marker_y[0] = static_cast<int>(std::lround(my0));
    out.marker_x[1] = static_cast<int>(std::lround(mx1));
    out.marker_y[1] = static_cast<int>(std::lround(my1));
    return;
  }
}

namespace {

// The cell of an image's two strongest shortcut cues (pathfinder_cues.h):
// the markers' distance in bins of size / 32 pixels, and the ink on the
// straight line between them in tenths, or "no point left".
constexpr int kDistanceBins = 46;  // distances up to size * sqrt(2)
constexpr int kInkBins = 11;

int cue_cell(const PathfinderParams& p, const PathfinderImage& img) {
  const int d = std::min(kDistanceBins - 1, static_cast<int>(marker_distance(img) / (p.size / 32.0)));
  const double f = straight_line_ink(p, img);
  return d * kInkBins + (f < 0 ? 0 : 1 + std::min(9, static_cast<int>(f * 10)));
}

// Cue matching. A smooth contour's ends lie close to the chord between
// them, so a positive has ink on the straight line between its markers
// far more often than a negative, whose markers end two contours: left
// alone, a rule on (distance, that ink) scores 0.67 at 32 and 0.59 at
// Path-X without tracing anything. So a drawn image of label L in cell c
// is kept with probability min(n_1(c), n_0(c)) / n_L(c), where n_L counts
// the cells of a calibration sample of label L drawn without matching:
// both labels' kept images then have the same cell histogram
// (proportional to min(n_1, n_0)), and one label of every cell is always
// kept. The calibration sample is a pure function of the parameters
// (fixed streams), so the table, and the data, do not depend on threads
// or on the order of calls. docs/lra.md has what it leaves.
class CueBalance {
 public:
  CueBalance(const PathfinderParams& p, int threads) : accept_(2 * kDistanceBins * kInkBins, 0.0) {
    // Fewer at 256, where an image costs 4x. A smaller sample's noisy
    // counts leave a cue of their own (12,000 at Path-X: the combined
    // rule 0.522 against 0.514 with 40,000; docs/journal).
    const uint64_t count = p.size <= 128 ? 40000 : 16000;
    std::vector<int> cells(count);
    parallel_for(count, threads, [&](uint64_t j) {
      Rng rng(mix_keys(0x63616c6962ULL, static_cast<uint64_t>(p.size), 0, j));
      PathfinderImage img;
      pathfinder_image(p, rng, static_cast<int>(j & 1), img);
      cells[j] = cue_cell(p, img);
    });
    std::vector<double> n[2] = {std::vector<double>(accept_.size() / 2), std::vector<double>(accept_.size() / 2)};
    for (uint64_t j = 0; j < count; ++j) n[j & 1][static_cast<size_t>(cells[j])] += 1;
    for (size_t c = 0; c < n[0].size(); ++c)
      for (int l = 0; l < 2; ++l)
        if (n[l][c] > 0) accept_[2 * c + l] = std::min(n[0][c], n[1][c]) / n[l][c];
  }
  double accept(int label, int cell) const { return accept_[2 * static_cast<size_t>(cell) + label]; }

 private:
  std::vector<double> accept_;  // [cell][label]
};

// One table per parameter set and process, made on first use.
const CueBalance& cue_balance(const PathfinderParams& p, int threads) {
  using Key = std::tuple<int, double, double, double, int, int, int, double, int>;
  static std::mutex mutex;
  static std::map<Key, CueBalance> tables;
  const Key key{p.size, p.segment_length, p.line_radius, p.marker_radius, p.contour_segments, p.distractors,
                p.distractor_segments, p.max_turn_deg, p.gap};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = tables.find(key);
  if (it == tables.end()) it = tables.emplace(key, CueBalance(p, threads)).first;
  return it->second;
}

}  // namespace

void generate_pathfinder(const PathfinderParams& p, uint64_t seed, Split split, uint64_t count, int threads,
                         const PathfinderEmit& emit, const PathfinderProgress& progress) {
  if (p.distractors + 2 > 255) throw std::invalid_argument("pathfinder: at most 253 distractors");
  const CueBalance& balance = cue_balance(p, threads);
  const uint64_t batch = std::max<uint64_t>(64, uint64_t(std::max(1, threads)) * 64);
  std::vector<PathfinderImage> images(batch);
  if (progress) progress(0, count);
  for (uint64_t base = 0; base < count; base += batch) {
    const uint64_t n = std::min(batch, count - base);
    parallel_for(n, threads, [&](uint64_t k) {
      const uint64_t i = base + k;
      Rng rng(mix_keys(seed, static_cast<uint64_t>(Task::pathfinder), static_cast<uint64_t>(split), i));
      const int label = pathfinder_label(seed, split, i);
      // Draws from the example's stream until cue matching keeps one.
      for (int draw = 0;; ++draw) {
        if (draw == 10000) throw std::runtime_error("pathfinder: cue matching kept no image in 10000 draws");
        pathfinder_image(p, rng, label, images[k]);
        if (rng.uniform() < balance.accept(label, cue_cell(p, images[k]))) break;
      }
    });
    for (uint64_t k = 0; k < n; ++k) emit(base + k, images[k]);
    if (progress) progress(base + n, count);
  }
}

}  // namespace lra
