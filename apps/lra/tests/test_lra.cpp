// fa-lra's generators and file format. The checks of the labels are
// independent of the generators: ListOps values come from a stack parser
// over the token stream, Pathfinder labels from connected components of
// the rendered image.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "listops.h"
#include "lra_format.h"
#include "pathfinder.h"
#include "pathfinder_audit.h"
#include "png.h"

namespace {

// ---- ListOps: an evaluator of its own ----

// Parses the token stream with an explicit stack of open operators and
// returns the value; throws on a malformed stream.
int evaluate_tokens(const std::vector<uint8_t>& t) {
  struct Frame {
    uint8_t op;
    std::vector<int> args;
  };
  std::vector<Frame> stack;
  int result = -1;
  for (size_t k = 0; k < t.size(); ++k) {
    if (result >= 0) throw std::runtime_error("tokens after the expression");
    const uint8_t x = t[k];
    int value = -1;
    if (x >= 1 && x <= 10) {
      value = x - 1;
    } else if (x >= lra::kListOpsMin && x <= lra::kListOpsSm) {
      stack.push_back({x, {}});
      continue;
    } else if (x == lra::kListOpsClose) {
      if (stack.empty()) throw std::runtime_error("unmatched ]");
      Frame f = std::move(stack.back());
      stack.pop_back();
      if (f.args.empty()) throw std::runtime_error("operator without arguments");
      std::vector<int> a = f.args;
      std::sort(a.begin(), a.end());
      if (f.op == lra::kListOpsMin) value = a.front();
      else if (f.op == lra::kListOpsMax) value = a.back();
      else if (f.op == lra::kListOpsSm) {
        long s = 0;
        for (int v : a) s += v;
        value = static_cast<int>(s % 10);
      } else {
        const size_t n = a.size();
        const double med = n % 2 ? a[n / 2] : 0.5 * (a[n / 2 - 1] + a[n / 2]);
        value = static_cast<int>(med);  // numpy.median then int(), as LRA
      }
    } else {
      throw std::runtime_error("bad token " + std::to_string(x));
    }
    if (stack.empty()) result = value;
    else stack.back().args.push_back(value);
  }
  if (!stack.empty() || result < 0) throw std::runtime_error("incomplete expression");
  return result;
}

std::vector<uint8_t> tokenize(const std::string& s) {
  std::vector<uint8_t> t;
  size_t k = 0;
  while (k < s.size()) {
    if (s[k] == ' ') { ++k; continue; }
    size_t e = s.find(' ', k);
    if (e == std::string::npos) e = s.size();
    const std::string w = s.substr(k, e - k);
    if (w.size() == 1 && w[0] >= '0' && w[0] <= '9') t.push_back(static_cast<uint8_t>(1 + (w[0] - '0')));
    else if (w == "[MIN") t.push_back(lra::kListOpsMin);
    else if (w == "[MAX") t.push_back(lra::kListOpsMax);
    else if (w == "[MED") t.push_back(lra::kListOpsMed);
    else if (w == "[SM") t.push_back(lra::kListOpsSm);
    else if (w == "]") t.push_back(lra::kListOpsClose);
    else throw std::runtime_error("bad word " + w);
    k = e;
  }
  return t;
}

struct ListOpsSet {
  std::vector<std::vector<uint8_t>> padded;
  std::vector<int> labels;
  std::vector<uint32_t> lengths;
};

ListOpsSet make_listops(uint64_t seed, lra::Split split, uint64_t count, int threads) {
  ListOpsSet s;
  lra::generate_listops(lra::ListOpsConfig{}, seed, split, count, threads,
                        [&](int32_t label, uint32_t len, const uint8_t* t) {
                          s.padded.emplace_back(t, t + 2000);
                          s.labels.push_back(label);
                          s.lengths.push_back(len);
                        });
  return s;
}

TEST(ListOpsEvaluator, HandWrittenExpressions) {
  EXPECT_EQ(evaluate_tokens(tokenize("[MAX 4 3 [MIN 2 3 ] 1 0 ]")), 4);
  EXPECT_EQ(evaluate_tokens(tokenize("[MIN 4 3 [MAX 2 9 ] 1 5 ]")), 1);
  EXPECT_EQ(evaluate_tokens(tokenize("[SM 9 8 7 ]")), 4);
  EXPECT_EQ(evaluate_tokens(tokenize("[MED 1 9 2 ]")), 2);
  EXPECT_EQ(evaluate_tokens(tokenize("[MED 1 4 ]")), 2);  // int(2.5)
  EXPECT_EQ(evaluate_tokens(tokenize("[SM [MED 7 8 ] [MAX 0 1 ] ]")), 8);
  EXPECT_EQ(evaluate_tokens(tokenize("7")), 7);
  EXPECT_THROW(evaluate_tokens(tokenize("[MAX 4 3")), std::runtime_error);
  EXPECT_THROW(evaluate_tokens(tokenize("[MAX ]")), std::runtime_error);
  EXPECT_EQ(lra::listops_to_string(tokenize("[MAX 4 3 [MIN 2 3 ] 1 0 ]").data(), 10), "[MAX 4 3 [MIN 2 3 ] 1 0 ]");
}

TEST(ListOps, LabelsMatchAnIndependentEvaluator) {
  const ListOpsSet s = make_listops(7, lra::Split::train, 300, 2);
  ASSERT_EQ(s.labels.size(), 300u);
  std::set<int> classes;
  int max_depth = 0;
  for (size_t i = 0; i < s.labels.size(); ++i) {
    const uint32_t len = s.lengths[i];
    ASSERT_GT(len, 500u) << i;
    ASSERT_LT(len, 2000u) << i;
    const std::vector<uint8_t> t(s.padded[i].begin(), s.padded[i].begin() + len);
    for (uint8_t x : t) ASSERT_TRUE(x >= 1 && x < lra::kListOpsVocab) << i;
    for (size_t k = len; k < 2000; ++k) ASSERT_EQ(s.padded[i][k], lra::kListOpsPad) << i;
    ASSERT_EQ(evaluate_tokens(t), s.labels[i]) << i << ": " << lra::listops_to_string(t.data(), t.size());
    classes.insert(s.labels[i]);
    int depth = 0;
    for (uint8_t x : t) {
      if (x >= lra::kListOpsMin && x <= lra::kListOpsSm) max_depth = std::max(max_depth, ++depth);
      if (x == lra::kListOpsClose) --depth;
    }
  }
  // Operators sit at depths 1..9 (depth 10 is digits only).
  EXPECT_LE(max_depth, 9);
  EXPECT_GE(classes.size(), 8u);
}

TEST(ListOps, NoDuplicates) {
  const ListOpsSet s = make_listops(3, lra::Split::val, 400, 2);
  std::set<std::string> unique;
  for (const auto& t : s.padded) unique.emplace(t.begin(), t.end());
  EXPECT_EQ(unique.size(), s.padded.size());
}

TEST(ListOps, SameOutputForAnyThreadCount) {
  const ListOpsSet a = make_listops(11, lra::Split::test, 80, 1);
  const ListOpsSet b = make_listops(11, lra::Split::test, 80, 3);
  EXPECT_EQ(a.padded, b.padded);
  EXPECT_EQ(a.labels, b.labels);
  const ListOpsSet c = make_listops(12, lra::Split::test, 80, 2);
  const ListOpsSet d = make_listops(11, lra::Split::val, 80, 2);
  EXPECT_NE(a.padded, c.padded);
  EXPECT_NE(a.padded, d.padded);
}

// ---- Pathfinder: labels from connected components ----

// 8-connected components of the pixels above 127; -1 for background.
std::vector<int> components(const std::vector<uint8_t>& px, int n) {
  std::vector<int> comp(px.size(), -1);
  int next = 0;
  std::vector<int> queue;
  for (int start = 0; start < n * n; ++start) {
    if (px[start] <= 127 || comp[start] >= 0) continue;
    comp[start] = next;
    queue.assign(1, start);
    while (!queue.empty()) {
      const int k = queue.back();
      queue.pop_back();
      const int x = k % n, y = k / n;
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          const int xx = x + dx, yy = y + dy;
          if (xx < 0 || yy < 0 || xx >= n || yy >= n) continue;
          const int j = yy * n + xx;
          if (px[j] > 127 && comp[j] < 0) {
            comp[j] = next;
            queue.push_back(j);
          }
        }
    }
    ++next;
  }
  return comp;
}

bool markers_connected(const lra::PathfinderImage& img, int n) {
  const std::vector<int> comp = components(img.pixels, n);
  const int a = comp[img.marker_y[0] * n + img.marker_x[0]];
  const int b = comp[img.marker_y[1] * n + img.marker_x[1]];
  if (a < 0 || b < 0) throw std::runtime_error("a marker centre is not ink");
  return a == b;
}

// The marker discs are the only ink blobs wider than a line: the pixel at
// each marker centre has its whole 3x3 neighbourhood inked.
bool marker_is_disc(const lra::PathfinderImage& img, int n, int m) {
  for (int dy = -1; dy <= 1; ++dy)
    for (int dx = -1; dx <= 1; ++dx)
      if (img.pixels[(img.marker_y[m] + dy) * n + img.marker_x[m] + dx] <= 127) return false;
  return true;
}

void check_size(int size, uint64_t count) {
  const lra::PathfinderParams p = lra::pathfinder_params(size);
  int positives = 0;
  double ink = 0;
  lra::generate_pathfinder(p, 5, lra::Split::train, count, 2, [&](uint64_t i, const lra::PathfinderImage& img) {
    ASSERT_EQ(img.pixels.size(), size_t(size) * size);
    ASSERT_EQ(img.label, lra::pathfinder_label(5, lra::Split::train, i));
    ASSERT_EQ(markers_connected(img, size), img.label == 1) << "size " << size << " image " << i;
    ASSERT_TRUE(marker_is_disc(img, size, 0) && marker_is_disc(img, size, 1)) << i;
    ASSERT_GE(img.contours, 2);
    positives += img.label;
    for (uint8_t v : img.pixels) ink += v > 127;
  });
  EXPECT_EQ(positives * 2, static_cast<int>(count));
  const double density = ink / (double(count) * size * size);
  EXPECT_GT(density, 0.02) << size;
  EXPECT_LT(density, 0.35) << size;
}

TEST(Pathfinder, LabelsMatchConnectedComponents32) { check_size(32, 400); }
TEST(Pathfinder, LabelsMatchConnectedComponents64) { check_size(64, 200); }
TEST(Pathfinder, LabelsMatchConnectedComponents128) { check_size(128, 60); }
TEST(Pathfinder, LabelsMatchConnectedComponents256) { check_size(256, 10); }

TEST(Pathfinder, TheComponentCheckCanFail) {
  // Joining the markers of a negative with a straight line makes the check
  // see them connected: it is not vacuous.
  const lra::PathfinderParams p = lra::pathfinder_params(64);
  lra::PathfinderImage img;
  lra::Rng rng(99);
  lra::pathfinder_image(p, rng, 0, img);
  ASSERT_FALSE(markers_connected(img, 64));
  const int steps = 200;
  for (int s = 0; s <= steps; ++s) {
    const double t = double(s) / steps;
    const int x = static_cast<int>(std::lround(img.marker_x[0] + t * (img.marker_x[1] - img.marker_x[0])));
    const int y = static_cast<int>(std::lround(img.marker_y[0] + t * (img.marker_y[1] - img.marker_y[0])));
    img.pixels[y * 64 + x] = 255;
  }
  EXPECT_TRUE(markers_connected(img, 64));
}

TEST(Pathfinder, BalancedLabelsWithoutAPattern) {
  int positives = 0, same_as_previous = 0;
  for (uint64_t i = 0; i < 2000; ++i) {
    const int l = lra::pathfinder_label(1, lra::Split::train, i);
    positives += l;
    if (i > 0) same_as_previous += l == lra::pathfinder_label(1, lra::Split::train, i - 1);
  }
  EXPECT_EQ(positives, 1000);
  // Alternation (0 1 0 1 ...) would give 0; independent coins about 1000.
  EXPECT_GT(same_as_previous, 300);
  EXPECT_LT(same_as_previous, 700);
}

TEST(Pathfinder, SameOutputForAnyThreadCount) {
  const lra::PathfinderParams p = lra::pathfinder_params(32);
  auto run = [&](int threads, uint64_t seed) {
    std::vector<uint8_t> all;
    lra::generate_pathfinder(p, seed, lra::Split::val, 150, threads, [&](uint64_t, const lra::PathfinderImage& img) {
      all.insert(all.end(), img.pixels.begin(), img.pixels.end());
      all.push_back(static_cast<uint8_t>(img.label));
    });
    return all;
  };
  const std::vector<uint8_t> one = run(1, 4);
  EXPECT_EQ(one, run(3, 4));
  EXPECT_NE(one, run(2, 5));
}

// Neither the markers' distance nor the ink on the straight line between
// them may tell the label, alone or together: the ends of one smooth
// contour lie about its length apart and near the chord between them, so a
// generator that leaves them free lets a distance rule score about 0.9 and
// a (distance, ink) rule 0.67 at 32 with no tracing at all. The generator
// matches both (cue matching); bound: chance plus 4 standard errors. The
// band around the line keeps a weaker cue at 32 (docs/lra.md has the
// measured values); a bound above it catches contours made straighter.
void check_matched_cues(int size, uint64_t count) {
  const lra::PathfinderParams p = lra::pathfinder_params(size);
  const lra::PathfinderAudit a = lra::audit_pathfinder(p, 3, lra::Split::test, count, 2);
  const double se = 0.5 / std::sqrt(double(a.cues[0].scored));
  const char* matched[] = {"marker distance", "ink on the straight line", "both"};
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(a.cues[c].name, matched[c]);
    EXPECT_LT(a.cues[c].accuracy, 0.5 + 4 * se) << a.cues[c].name << ", size " << size;
  }
  ASSERT_EQ(a.cues.size(), 9u);
  for (int c = 3; c < 9; ++c) EXPECT_LT(a.cues[c].accuracy, 0.68) << a.cues[c].name << ", size " << size;
}

TEST(PathfinderAudit, MatchedCuesAtChance32) { check_matched_cues(32, 4000); }
TEST(PathfinderAudit, MatchedCuesAtChance64) { check_matched_cues(64, 2000); }
TEST(PathfinderAudit, MatchedCuesAtChance128) { check_matched_cues(128, 600); }

TEST(PathfinderAudit, TheRuleFindsAPlantedCue) {
  // A bin that is the label is read perfectly; bins unrelated to the label
  // score near chance.
  std::vector<std::pair<int64_t, int>> planted, unrelated;
  lra::Rng rng(7);
  for (int i = 0; i < 4000; ++i) {
    const int label = rng.uniform() < 0.5;
    planted.push_back({label ? 11 : 4, label});
    unrelated.push_back({static_cast<int64_t>(rng.uniform() * 20), label});
  }
  EXPECT_EQ(lra::binned_rule_accuracy(planted), 1.0);
  EXPECT_NEAR(lra::binned_rule_accuracy(unrelated), 0.5, 0.05);
}

TEST(PathfinderAudit, CuesOfAHandMadeImage) {
  const lra::PathfinderParams p = lra::pathfinder_params(32);
  lra::PathfinderImage img;
  img.pixels.assign(32 * 32, 0);
  img.marker_x[0] = 4, img.marker_y[0] = 10, img.marker_x[1] = 24, img.marker_y[1] = 10;
  EXPECT_DOUBLE_EQ(lra::marker_distance(img), 20.0);
  EXPECT_DOUBLE_EQ(lra::straight_line_ink(p, img), 0.0);
  EXPECT_DOUBLE_EQ(lra::ink_near_line(p, img), 0.0);
  img.pixels[28 * 32 + 14] = 255;  // 18 pixels below the line: outside its band (a quarter of 20)
  EXPECT_DOUBLE_EQ(lra::ink_near_line(p, img), 0.0);
  for (int x = 4; x <= 24; ++x) img.pixels[10 * 32 + x] = 255;  // a straight contour joins them
  EXPECT_DOUBLE_EQ(lra::straight_line_ink(p, img), 1.0);
  // The band holds the line's 13 pixels outside the discs (x 8 to 20) among
  // many blank ones.
  const double line_in_band = lra::ink_near_line(p, img);
  EXPECT_GT(line_in_band, 13.0 / 300);
  EXPECT_LT(line_in_band, 13.0 / 100);
  for (int y = 4; y <= 16; ++y)
    for (int x = 0; x < 32; ++x) img.pixels[y * 32 + x] = 255;  // the whole band inked
  EXPECT_DOUBLE_EQ(lra::ink_near_line(p, img), 1.0);
  for (int y = 4; y <= 16; ++y)
    for (int x = 0; x < 32; ++x) img.pixels[y * 32 + x] = y == 10 && x >= 4 && x <= 24 ? 255 : 0;
  for (int x = 12; x <= 16; ++x) img.pixels[10 * 32 + x] = 0;   // a gap of 5 pixels in the middle
  const double f = lra::straight_line_ink(p, img);
  EXPECT_GT(f, 0.5);
  EXPECT_LT(f, 1.0);
}

TEST(Pathfinder, UnsupportedSizeIsAnError) { EXPECT_THROW(lra::pathfinder_params(100), std::invalid_argument); }

// ---- the file format ----

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("fa_lra_test_" + std::to_string(::getpid()) + "_" + name)).string();
}

TEST(Format, RoundTrip) {
  const std::string path = temp_path("roundtrip.bin");
  lra::Header h;
  h.task = lra::Task::listops;
  h.seq_len = 5;
  h.vocab_size = 16;
  h.num_classes = 10;
  h.pad_id = 0;
  h.seed = 42;
  h.split = lra::Split::val;
  {
    lra::Writer w(path, h);
    const uint8_t a[5] = {12, 2, 3, 15, 0};
    const uint8_t b[5] = {7, 0, 0, 0, 0};
    w.add(2, 4, a);
    w.add(6, 1, b);
    EXPECT_THROW(w.add(10, 1, b), std::invalid_argument);  // label out of range
    w.close();
  }
  EXPECT_EQ(std::filesystem::file_size(path), 64u + 2 * (8 + 5));
  lra::Reader r(path);
  EXPECT_EQ(r.header().count, 2u);
  EXPECT_EQ(r.header().seed, 42u);
  EXPECT_EQ(r.header().split, lra::Split::val);
  EXPECT_EQ(r.header().pad_id, 0u);
  std::vector<uint16_t> t;
  int32_t label;
  uint32_t len;
  r.read(1, t, label, len);
  EXPECT_EQ(label, 6);
  EXPECT_EQ(len, 1u);
  EXPECT_EQ(t, (std::vector<uint16_t>{7, 0, 0, 0, 0}));
  r.read(0, t, label, len);
  EXPECT_EQ(label, 2);
  EXPECT_EQ(t, (std::vector<uint16_t>{12, 2, 3, 15, 0}));
  EXPECT_THROW(r.read(2, t, label, len), std::out_of_range);
  std::filesystem::remove(path);
}

TEST(Format, TwoByteTokens) {
  const std::string path = temp_path("wide.bin");
  lra::Header h;
  h.seq_len = 3;
  h.vocab_size = 1000;
  h.num_classes = 2;
  h.bytes_per_token = 2;
  {
    lra::Writer w(path, h);
    const uint16_t a[3] = {999, 1, 500};
    w.add(1, 3, a);
    w.close();
  }
  lra::Reader r(path);
  std::vector<uint16_t> t;
  int32_t label;
  uint32_t len;
  r.read(0, t, label, len);
  EXPECT_EQ(t, (std::vector<uint16_t>{999, 1, 500}));
  std::filesystem::remove(path);
}

TEST(Format, RejectsBadFiles) {
  const std::string path = temp_path("bad.bin");
  {
    std::ofstream f(path, std::ios::binary);
    f << std::string(64, 'x');
  }
  EXPECT_THROW({ lra::Reader r(path); }, std::runtime_error);
  // A truncated file: the header promises more records than it holds.
  lra::Header h;
  h.seq_len = 4;
  h.vocab_size = 16;
  h.num_classes = 10;
  {
    lra::Writer w(path, h);
    const uint8_t a[4] = {1, 2, 3, 4};
    w.add(0, 4, a);
    w.add(0, 4, a);
    w.close();
  }
  std::filesystem::resize_file(path, 64 + 12 + 3);
  EXPECT_THROW({ lra::Reader r(path); }, std::runtime_error);
  std::filesystem::remove(path);
}

// ---- PNG ----

TEST(Png, ChecksumsAndLayout) {
  // Known values: CRC-32 and Adler-32 of "123456789".
  const std::string s = "123456789";
  EXPECT_EQ(lra::crc32(reinterpret_cast<const uint8_t*>(s.data()), s.size()), 0xcbf43926u);
  EXPECT_EQ(lra::adler32(reinterpret_cast<const uint8_t*>(s.data()), s.size()), 0x091e01deu);
  // 300 x 300 needs two stored blocks (90,300 bytes of scanlines).
  std::vector<uint8_t> px(300 * 300);
  for (size_t k = 0; k < px.size(); ++k) px[k] = static_cast<uint8_t>(k * 7);
  const std::vector<uint8_t> png = lra::png_encode_gray(px.data(), 300, 300);
  ASSERT_GT(png.size(), px.size());
  EXPECT_EQ(std::vector<uint8_t>(png.begin() + 12, png.begin() + 16), (std::vector<uint8_t>{'I', 'H', 'D', 'R'}));
  // Every chunk's CRC (of type and data) checks out, and the IDAT's stored
  // blocks hold the scanlines.
  size_t pos = 8;
  std::vector<uint8_t> raw;
  while (pos < png.size()) {
    const uint32_t len = (uint32_t(png[pos]) << 24) | (png[pos + 1] << 16) | (png[pos + 2] << 8) | png[pos + 3];
    const uint32_t crc = (uint32_t(png[pos + 8 + len]) << 24) | (png[pos + 9 + len] << 16) |
                         (png[pos + 10 + len] << 8) | png[pos + 11 + len];
    EXPECT_EQ(lra::crc32(png.data() + pos + 4, len + 4), crc);
    if (std::string(png.begin() + pos + 4, png.begin() + pos + 8) == "IDAT") {
      size_t z = pos + 8 + 2;
      for (bool last = false; !last;) {
        last = png[z] & 1;
        const size_t n = png[z + 1] | (png[z + 2] << 8);
        EXPECT_EQ(n ^ 0xffff, size_t(png[z + 3] | (png[z + 4] << 8)));
        raw.insert(raw.end(), png.begin() + z + 5, png.begin() + z + 5 + n);
        z += 5 + n;
      }
    }
    pos += 12 + len;
  }
  ASSERT_EQ(raw.size(), 300u * 301u);
  for (int y = 0; y < 300; ++y) {
    ASSERT_EQ(raw[y * 301], 0);
    ASSERT_TRUE(std::equal(px.begin() + y * 300, px.begin() + (y + 1) * 300, raw.begin() + y * 301 + 1));
  }
}

}  // namespace
