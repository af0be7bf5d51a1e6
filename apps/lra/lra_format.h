// The binary format of the generated data sets (docs/lra.md, "Format"):
// a 64-byte little-endian header, then fixed-size records, so example i is
// at a known offset and a reader can pick examples at random.
//
//   record = int32 label, uint32 length (real tokens; the rest is padding),
//            seq_len tokens of bytes_per_token bytes each.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace lra {

enum class Task : uint32_t { listops = 1, pathfinder = 2 };
enum class Split : uint32_t { train = 0, val = 1, test = 2 };

const char* task_name(Task t);
const char* split_name(Split s);
// Throw std::invalid_argument for an unknown name.
Task parse_task(const std::string& name);
Split parse_split(const std::string& name);

inline constexpr char kMagic[8] = {'F', 'A', 'L', 'R', 'A', 'D', 'S', '1'};
inline constexpr uint32_t kVersion = 1;
inline constexpr uint32_t kHeaderBytes = 64;
inline constexpr uint32_t kNoPad = 0xffffffffu;

struct Header {
  Task task = Task::listops;
  uint64_t count = 0;           // number of examples
  uint32_t seq_len = 0;         // tokens per record (padded)
  uint32_t image_size = 0;      // side of the square image; 0 for sequences
  uint32_t vocab_size = 0;      // token ids are < vocab_size
  uint32_t num_classes = 0;     // labels are in [0, num_classes)
  uint32_t bytes_per_token = 1; // 1 or 2
  uint32_t pad_id = kNoPad;     // the padding token, or kNoPad when records are never padded
  uint64_t seed = 0;            // the generator's --seed
  Split split = Split::train;

  uint64_t record_bytes() const { return 8 + uint64_t(seq_len) * bytes_per_token; }
};

// Writes a header (count patched at close), then records in order.
class Writer {
 public:
  Writer(const std::string& path, const Header& header);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  // tokens: header.seq_len ids (already padded), each < vocab_size.
  void add(int32_t label, uint32_t length, const uint8_t* tokens);
  void add(int32_t label, uint32_t length, const uint16_t* tokens);
  // Flushes, writes the final count and closes; throws on an I/O error.
  void close();
  uint64_t count() const { return header_.count; }

 private:
  void write_record(int32_t label, uint32_t length, const void* data);
  std::string path_;
  Header header_;
  std::FILE* file_ = nullptr;
  std::vector<uint8_t> buffer_;
};

// Reads and checks the header; examples by index.
class Reader {
 public:
  explicit Reader(const std::string& path);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  const Header& header() const { return header_; }
  // tokens is resized to seq_len.
  void read(uint64_t index, std::vector<uint16_t>& tokens, int32_t& label, uint32_t& length);

 private:
  std::string path_;
  Header header_;
  std::FILE* file_ = nullptr;
  std::vector<uint8_t> buffer_;
};

// Encodes / decodes the 64 header bytes (exposed for tests).
void encode_header(const Header& h, uint8_t out[kHeaderBytes]);
// Throws std::runtime_error naming `what` for a bad magic, version or field.
Header decode_header(const uint8_t in[kHeaderBytes], const std::string& what);

}  // namespace lra
