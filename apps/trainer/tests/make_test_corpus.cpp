// Writes the small text the trainer's tests tokenise and train on, so that
// CI needs neither the Bible corpus nor any download: N lines of simple
// English sentences from a fixed grammar (deterministic), and a label per
// line (0: sentences about the farm, 1: about the sea) for the
// classification head. Structured enough that a tiny model's loss falls
// within a few steps; varied enough that it is not a constant.
//   fatrain_make_test_corpus DIR [LINES]
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: fatrain_make_test_corpus DIR [LINES]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int lines = argc > 2 ? std::atoi(argv[2]) : 1500;
  std::filesystem::create_directories(dir);
  const std::vector<std::vector<std::string>> nouns = {
      {"farmer", "horse", "cow", "field", "barn", "sheep", "dog", "wheat", "goat", "plough"},
      {"sailor", "ship", "whale", "wave", "harbour", "gull", "fish", "anchor", "storm", "island"}};
  const std::vector<std::string> adj = {"old", "young", "great", "small", "quiet", "bright", "grey", "strong"};
  const std::vector<std::string> verb = {"saw", "followed", "called", "found", "watched", "heard", "carried"};
  const std::vector<std::string> tail = {"in the morning", "at night", "before the rain", "after supper",
                                         "by the river", "under the sun", "all day long"};
  std::mt19937 rng(7);
  auto pick = [&](const std::vector<std::string>& v) -> const std::string& { return v[rng() % v.size()]; };
  std::ofstream text(dir + "/corpus.txt"), labels(dir + "/labels.txt");
  for (int i = 0; i < lines; ++i) {
    const int topic = static_cast<int>(rng() % 2);
    std::string s;
    const int clauses = 1 + static_cast<int>(rng() % 3);
    for (int c = 0; c < clauses; ++c) {
      s += (c ? " and the " : "The ") + pick(adj) + " " + pick(nouns[topic]) + " " + pick(verb) + " the " +
           pick(nouns[topic]);
      if (rng() % 2) s += " " + pick(tail);
    }
    text << s << ".\n";
    labels << topic << "\n";
  }
  return text && labels ? 0 : 1;
}
