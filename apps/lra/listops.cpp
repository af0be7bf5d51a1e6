#include "listops.h"

#include <algorithm>
#include <stdexcept>
#include <unordered_set>

#include "parallel.h"

namespace lra {

namespace {

// The value of an operator over its arguments (the generator's own
// evaluation; the tests check it with an independent parser).
int apply(uint8_t op, int* args, int n) {
  switch (op) {
    case kListOpsMin: return *std::min_element(args, args + n);
    case kListOpsMax: return *std::max_element(args, args + n);
    case kListOpsSm: {
      int s = 0;
      for (int k = 0; k < n; ++k) s += args[k];
      return s % 10;
    }
    default: {  // MED: int(numpy.median), the mean of the middle two when n is even, truncated
      std::sort(args, args + n);
      return n % 2 ? args[n / 2] : (args[n / 2 - 1] + args[n / 2]) / 2;
    }
  }
}

struct Node {
  uint8_t token = 0;
  int first_child = -1, next_sibling = -1;
};

}  // namespace

bool listops_candidate(const ListOpsConfig& cfg, Rng& rng, std::vector<uint8_t>& tokens, int& value) {
  if (cfg.max_args > 64 || cfg.min_args < 1 || cfg.min_args > cfg.max_args)
    throw std::invalid_argument("listops: bad argument counts");
  // Build the tree first (the operator is drawn after its arguments, as in
  // LRA), then write it in prefix order.
  struct Gen {
    const ListOpsConfig& cfg;
    Rng& rng;
    std::vector<Node>& nodes;
    size_t length = 0;
    bool too_long = false;
    // LRA's generate_tree(depth): a digit with probability leaf_prob
    // (always at max_depth), else an operator over min_args..max_args
    // subtrees; length counts the tokens, the operator's "]" included.
    int build(int depth, int& val) {
      const int id = static_cast<int>(nodes.size());
      nodes.push_back({});
      if (++length > static_cast<size_t>(cfg.max_len)) too_long = true;
      if (too_long) return id;
      const bool leaf = depth >= cfg.max_depth || rng.uniform() < cfg.leaf_prob;
      if (leaf) {
        val = static_cast<int>(rng.below(10));
        nodes[id].token = static_cast<uint8_t>(kListOpsDigit0 + val);
        return id;
      }
      ++length;  // the closing bracket
      const int nargs = rng.range(cfg.min_args, cfg.max_args);
      int args[64];
      int prev = -1;
      for (int k = 0; k < nargs; ++k) {
        const int child = build(depth + 1, args[k]);
        if (too_long) return id;
        if (prev < 0) nodes[id].first_child = child; else nodes[prev].next_sibling = child;
        prev = child;
      }
      const uint8_t op = static_cast<uint8_t>(kListOpsMin + rng.below(4));
      nodes[id].token = op;
      val = apply(op, args, nargs);
      return id;
    }
  };
  thread_local std::vector<Node> nodes;
  nodes.clear();
  Gen g{cfg, rng, nodes};
  int val = 0;
  g.build(1, val);
  if (g.too_long || g.length > static_cast<size_t>(cfg.max_len) || g.length < static_cast<size_t>(cfg.min_len))
    return false;
  tokens.clear();
  // Prefix walk with an explicit stack (deep trees are at most max_depth).
  struct Frame { int node; bool closed; };
  thread_local std::vector<Frame> stack;
  stack.clear();
  stack.push_back({0, false});
  while (!stack.empty()) {
    Frame f = stack.back();
    stack.pop_back();
    if (f.closed) {
      tokens.push_back(kListOpsClose);
      continue;
    }
    const Node& n = nodes[f.node];
    tokens.push_back(n.token);
    if (n.first_child >= 0) {
      stack.push_back({f.node, true});
      // Children pushed in reverse so the first is written first.
      int kids[64];
      int nk = 0;
      for (int c = n.first_child; c >= 0; c = nodes[c].next_sibling) kids[nk++] = c;
      for (int k = nk - 1; k >= 0; --k) stack.push_back({kids[k], false});
    }
  }
  value = val;
  return true;
}

std::string listops_to_string(const uint8_t* tokens, size_t n) {
  std::string s;
  for (size_t k = 0; k < n; ++k) {
    const uint8_t t = tokens[k];
    if (t == kListOpsPad) continue;
    if (!s.empty()) s += ' ';
    if (t >= kListOpsDigit0 && t < kListOpsDigit0 + 10) s += static_cast<char>('0' + (t - kListOpsDigit0));
    else if (t == kListOpsMin) s += "[MIN";
    else if (t == kListOpsMax) s += "[MAX";
    else if (t == kListOpsMed) s += "[MED";
    else if (t == kListOpsSm) s += "[SM";
    else if (t == kListOpsClose) s += "]";
    else s += "?";
  }
  return s;
}

void generate_listops(const ListOpsConfig& cfg, uint64_t seed, Split split, uint64_t count, int threads,
                      const Emit& emit, const Progress& progress) {
  if (cfg.max_len > cfg.seq_len) throw std::invalid_argument("listops: max_len above seq_len");
  struct Candidate {
    std::vector<uint8_t> tokens;
    int value = 0;
    bool ok = false;
    uint64_t hash = 0;
  };
  const uint64_t batch = std::max<uint64_t>(1024, uint64_t(std::max(1, threads)) * 512);
  std::vector<Candidate> cand(batch);
  std::unordered_set<uint64_t> seen;
  seen.reserve(count * 2);
  std::vector<uint8_t> padded(cfg.seq_len, kListOpsPad);
  uint64_t accepted = 0;
  uint64_t next_candidate = 0;
  if (progress) progress(0, count);
  while (accepted < count) {
    const uint64_t base = next_candidate;
    parallel_for(batch, threads, [&](uint64_t k) {
      Candidate& c = cand[k];
      Rng rng(mix_keys(seed, static_cast<uint64_t>(Task::listops), static_cast<uint64_t>(split), base + k));
      c.ok = listops_candidate(cfg, rng, c.tokens, c.value);
      if (c.ok) {
        uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
        for (uint8_t t : c.tokens) h = (h ^ t) * 0x100000001b3ULL;
        c.hash = h;
      }
    });
    next_candidate += batch;
    for (uint64_t k = 0; k < batch && accepted < count; ++k) {
      const Candidate& c = cand[k];
      // A 64-bit hash: a collision of two different expressions only drops
      // one candidate, never admits a duplicate.
      if (!c.ok || !seen.insert(c.hash).second) continue;
      std::copy(c.tokens.begin(), c.tokens.end(), padded.begin());
      std::fill(padded.begin() + c.tokens.size(), padded.end(), kListOpsPad);
      emit(c.value, static_cast<uint32_t>(c.tokens.size()), padded.data());
      ++accepted;
    }
    if (progress) progress(accepted, count);
  }
}

}  // namespace lra
