// Token shards: the on-disk form of a tokenised corpus, shared by fa-data
// (which writes them, linked with SentencePiece) and fa-train (which reads
// them, linked with libtorch). Plain C++ on purpose: the two programs never
// share a process (libtorch exports its own protobuf, SentencePiece carries
// another), so this header is the whole interface between them.
//
// File layout (little-endian), documented in docs/trainer.md:
//   0  char[8]  magic "FATOKSH1"
//   8  uint32   version (1)
//  12  uint32   bytes per token (2 or 4)
//  16  uint64   number of tokens
//  24  uint64   vocabulary size
//  32  int32    bos id, eos id, pad id, mask id (-1 = none)
//  48  uint64   number of documents
//  56  uint32   flags (bit 0: the shard has one int32 label per document)
//  60  uint32   reserved (0)
//  64  the tokens (uint16 or uint32 each), then one uint64 start offset
//      per document, then (flag bit 0) one int32 label per document
// Every document is `tokens... eos`: the stream form (GPT-2) reads straight
// through, the document form (encoder) uses the offsets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fatrain {

struct SpecialIds {
  std::int32_t bos = -1, eos = -1, pad = -1, mask = -1;
};

struct Shard {
  std::vector<std::int32_t> tokens;
  std::vector<std::uint64_t> doc_starts;  // token offset of each document
  std::vector<std::int32_t> labels;       // empty, or one per document
  std::uint64_t vocab_size = 0;
  SpecialIds ids;

  std::size_t num_docs() const { return doc_starts.size(); }
  // [begin, end) of document i, without its trailing eos.
  std::pair<std::uint64_t, std::uint64_t> doc(std::size_t i) const;
};

// Throws std::runtime_error naming the file and what is wrong.
void write_shard(const std::string& path, const Shard& shard);
Shard read_shard(const std::string& path);

}  // namespace fatrain
