#include "shards.h"

#include <cstring>
#include <fstream>
#include <stdexcept>

namespace fatrain {
namespace {

constexpr char kMagic[8] = {'F', 'A', 'T', 'O', 'K', 'S', 'H', '1'};

template <class T>
void put(std::ofstream& f, const T& v) {
  f.write(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <class T>
T get(std::ifstream& f, const std::string& path) {
  T v{};
  if (!f.read(reinterpret_cast<char*>(&v), sizeof(T))) throw std::runtime_error(path + ": truncated token shard");
  return v;
}

}  // namespace

std::pair<std::uint64_t, std::uint64_t> Shard::doc(std::size_t i) const {
  const std::uint64_t b = doc_starts[i];
  std::uint64_t e = i + 1 < doc_starts.size() ? doc_starts[i + 1] : tokens.size();
  if (e > b && ids.eos >= 0 && tokens[e - 1] == ids.eos) --e;
  return {b, e};
}

void write_shard(const std::string& path, const Shard& s) {
  if (!s.labels.empty() && s.labels.size() != s.doc_starts.size())
    throw std::runtime_error(path + ": " + std::to_string(s.labels.size()) + " labels for " +
                             std::to_string(s.doc_starts.size()) + " documents");
  // 2 bytes per token when the vocabulary fits (GPT-2's 50257 does), 4 otherwise.
  const std::uint32_t tb = s.vocab_size <= 65536 ? 2 : 4;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw std::runtime_error(path + ": cannot open for writing");
  f.write(kMagic, 8);
  put<std::uint32_t>(f, 1);
  put<std::uint32_t>(f, tb);
  put<std::uint64_t>(f, s.tokens.size());
  put<std::uint64_t>(f, s.vocab_size);
  put(f, s.ids.bos);
  put(f, s.ids.eos);
  put(f, s.ids.pad);
  put(f, s.ids.mask);
  put<std::uint64_t>(f, s.doc_starts.size());
  // Flags (bit 0: labels present) and a reserved word, so the tokens start
  // at offset 64.
  put<std::uint32_t>(f, s.labels.empty() ? 0u : 1u);
  put<std::uint32_t>(f, 0u);
  for (std::int32_t t : s.tokens) {
    if (t < 0 || static_cast<std::uint64_t>(t) >= s.vocab_size)
      throw std::runtime_error(path + ": token id " + std::to_string(t) + " outside the vocabulary of " +
                               std::to_string(s.vocab_size));
    if (tb == 2) put<std::uint16_t>(f, static_cast<std::uint16_t>(t));
    else put<std::uint32_t>(f, static_cast<std::uint32_t>(t));
  }
  for (std::uint64_t d : s.doc_starts) put(f, d);
  for (std::int32_t l : s.labels) put(f, l);
  if (!f) throw std::runtime_error(path + ": write failed");
}

Shard read_shard(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open token shard (run fa-data prepare, or scripts/setup-data)");
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0)
    throw std::runtime_error(path + ": not a token shard (bad magic)");
  Shard s;
  const auto version = get<std::uint32_t>(f, path);
  if (version != 1) throw std::runtime_error(path + ": shard version " + std::to_string(version) + ", expected 1");
  const auto tb = get<std::uint32_t>(f, path);
  if (tb != 2 && tb != 4) throw std::runtime_error(path + ": bytes per token " + std::to_string(tb));
  const auto n = get<std::uint64_t>(f, path);
  s.vocab_size = get<std::uint64_t>(f, path);
  s.ids.bos = get<std::int32_t>(f, path);
  s.ids.eos = get<std::int32_t>(f, path);
  s.ids.pad = get<std::int32_t>(f, path);
  s.ids.mask = get<std::int32_t>(f, path);
  const auto ndocs = get<std::uint64_t>(f, path);
  const auto flags = get<std::uint32_t>(f, path);
  (void)get<std::uint32_t>(f, path);
  s.tokens.resize(n);
  if (tb == 2) {
    std::vector<std::uint16_t> raw(n);
    if (!f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(n * 2)))
      throw std::runtime_error(path + ": truncated token shard");
    for (std::uint64_t i = 0; i < n; ++i) s.tokens[i] = raw[i];
  } else {
    if (!f.read(reinterpret_cast<char*>(s.tokens.data()), static_cast<std::streamsize>(n * 4)))
      throw std::runtime_error(path + ": truncated token shard");
  }
  s.doc_starts.resize(ndocs);
  if (!f.read(reinterpret_cast<char*>(s.doc_starts.data()), static_cast<std::streamsize>(ndocs * 8)))
    throw std::runtime_error(path + ": truncated token shard");
  if (flags & 1u) {
    s.labels.resize(ndocs);
    if (!f.read(reinterpret_cast<char*>(s.labels.data()), static_cast<std::streamsize>(ndocs * 4)))
      throw std::runtime_error(path + ": truncated token shard");
  }
  for (std::uint64_t i = 0; i < ndocs; ++i)
    if (s.doc_starts[i] > n || (i && s.doc_starts[i] < s.doc_starts[i - 1]))
      throw std::runtime_error(path + ": corrupt document offsets");
  return s;
}

}  // namespace fatrain
