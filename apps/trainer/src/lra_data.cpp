#include "lra_data.h"

#include <stdexcept>
#include <vector>

#include "lra_format.h"

namespace fatrain {

std::uint32_t lra_image_size(const std::string& path) { return lra::Reader(path).header().image_size; }

bool is_lra_data(const std::string& data) { return data.rfind(kLraPrefix, 0) == 0; }

Shard lra_shard(const std::string& path) {
  lra::Reader r(path);
  const lra::Header& h = r.header();
  const auto V = static_cast<std::int32_t>(h.vocab_size);
  Shard s;
  s.vocab_size = h.vocab_size + 4;
  s.ids = {V + 1, V + 2, V, V + 3};  // bos, eos, pad, mask
  s.tokens.reserve(h.count * (h.seq_len + 1));
  s.doc_starts.reserve(h.count);
  s.labels.reserve(h.count);
  std::vector<std::uint16_t> t;
  std::int32_t label = 0;
  std::uint32_t length = 0;
  for (std::uint64_t i = 0; i < h.count; ++i) {
    r.read(i, t, label, length);
    s.doc_starts.push_back(s.tokens.size());
    s.tokens.insert(s.tokens.end(), t.begin(), t.begin() + length);
    s.tokens.push_back(s.ids.eos);
    s.labels.push_back(label);
  }
  return s;
}

}  // namespace fatrain
