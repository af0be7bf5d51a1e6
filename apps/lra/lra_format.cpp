#include "lra_format.h"

#include <bit>
#include <cstring>
#include <stdexcept>

namespace lra {

static_assert(std::endian::native == std::endian::little, "the format is little-endian; add byte swaps");

const char* task_name(Task t) {
  switch (t) {
    case Task::listops: return "listops";
    case Task::pathfinder: return "pathfinder";
  }
  return "?";
}

const char* split_name(Split s) {
  switch (s) {
    case Split::train: return "train";
    case Split::val: return "val";
    case Split::test: return "test";
  }
  return "?";
}

Task parse_task(const std::string& name) {
  if (name == "listops") return Task::listops;
  if (name == "pathfinder") return Task::pathfinder;
  throw std::invalid_argument("expected listops or pathfinder, got '" + name + "'");
}

Split parse_split(const std::string& name) {
  if (name == "train") return Split::train;
  if (name == "val") return Split::val;
  if (name == "test") return Split::test;
  throw std::invalid_argument("expected train, val or test, got '" + name + "'");
}

namespace {
template <class T>
void put(uint8_t* p, size_t off, T v) { std::memcpy(p + off, &v, sizeof v); }
template <class T>
T get(const uint8_t* p, size_t off) {
  T v;
  std::memcpy(&v, p + off, sizeof v);
  return v;
}
}  // namespace

void encode_header(const Header& h, uint8_t out[kHeaderBytes]) {
  std::memset(out, 0, kHeaderBytes);
  std::memcpy(out, kMagic, 8);
  put<uint32_t>(out, 8, kVersion);
  put<uint32_t>(out, 12, static_cast<uint32_t>(h.task));
  put<uint64_t>(out, 16, h.count);
  put<uint32_t>(out, 24, h.seq_len);
  put<uint32_t>(out, 28, h.image_size);
  put<uint32_t>(out, 32, h.vocab_size);
  put<uint32_t>(out, 36, h.num_classes);
  put<uint32_t>(out, 40, h.bytes_per_token);
  put<uint32_t>(out, 44, h.pad_id);
  put<uint64_t>(out, 48, h.seed);
  put<uint32_t>(out, 56, static_cast<uint32_t>(h.split));
}

Header decode_header(const uint8_t in[kHeaderBytes], const std::string& what) {
  if (std::memcmp(in, kMagic, 8) != 0) throw std::runtime_error(what + ": not an LRA data file (bad magic)");
  const uint32_t version = get<uint32_t>(in, 8);
  if (version != kVersion)
    throw std::runtime_error(what + ": format version " + std::to_string(version) + ", this reader knows " +
                             std::to_string(kVersion));
  Header h;
  const uint32_t task = get<uint32_t>(in, 12);
  if (task != 1 && task != 2) throw std::runtime_error(what + ": unknown task " + std::to_string(task));
  h.task = static_cast<Task>(task);
  h.count = get<uint64_t>(in, 16);
  h.seq_len = get<uint32_t>(in, 24);
  h.image_size = get<uint32_t>(in, 28);
  h.vocab_size = get<uint32_t>(in, 32);
  h.num_classes = get<uint32_t>(in, 36);
  h.bytes_per_token = get<uint32_t>(in, 40);
  h.pad_id = get<uint32_t>(in, 44);
  h.seed = get<uint64_t>(in, 48);
  const uint32_t split = get<uint32_t>(in, 56);
  if (split > 2) throw std::runtime_error(what + ": unknown split " + std::to_string(split));
  h.split = static_cast<Split>(split);
  if (h.bytes_per_token != 1 && h.bytes_per_token != 2)
    throw std::runtime_error(what + ": bytes per token " + std::to_string(h.bytes_per_token) + " (1 or 2)");
  if (h.seq_len == 0 || h.vocab_size == 0 || h.num_classes == 0)
    throw std::runtime_error(what + ": zero sequence length, vocabulary or class count");
  if (h.image_size != 0 && uint64_t(h.image_size) * h.image_size != h.seq_len)
    throw std::runtime_error(what + ": image size squared differs from the sequence length");
  return h;
}

Writer::Writer(const std::string& path, const Header& header) : path_(path), header_(header) {
  if (header_.bytes_per_token != 1 && header_.bytes_per_token != 2)
    throw std::invalid_argument("lra::Writer: bytes per token must be 1 or 2");
  if (header_.bytes_per_token == 1 && header_.vocab_size > 256)
    throw std::invalid_argument("lra::Writer: a vocabulary above 256 needs 2 bytes per token");
  header_.count = 0;
  file_ = std::fopen(path.c_str(), "wb");
  if (!file_) throw std::runtime_error(path + ": cannot open for writing");
  uint8_t h[kHeaderBytes];
  encode_header(header_, h);
  if (std::fwrite(h, 1, kHeaderBytes, file_) != kHeaderBytes) throw std::runtime_error(path + ": write failed");
  buffer_.resize(header_.record_bytes());
}

Writer::~Writer() {
  if (file_) std::fclose(file_);
}

void Writer::write_record(int32_t label, uint32_t length, const void* data) {
  if (label < 0 || uint32_t(label) >= header_.num_classes)
    throw std::invalid_argument("lra::Writer: label " + std::to_string(label) + " out of range");
  if (length > header_.seq_len) throw std::invalid_argument("lra::Writer: length above the sequence length");
  std::memcpy(buffer_.data(), &label, 4);
  std::memcpy(buffer_.data() + 4, &length, 4);
  std::memcpy(buffer_.data() + 8, data, size_t(header_.seq_len) * header_.bytes_per_token);
  if (std::fwrite(buffer_.data(), 1, buffer_.size(), file_) != buffer_.size())
    throw std::runtime_error(path_ + ": write failed");
  ++header_.count;
}

void Writer::add(int32_t label, uint32_t length, const uint8_t* tokens) {
  if (header_.bytes_per_token != 1) throw std::invalid_argument("lra::Writer: the file stores 2-byte tokens");
  write_record(label, length, tokens);
}

void Writer::add(int32_t label, uint32_t length, const uint16_t* tokens) {
  if (header_.bytes_per_token != 2) throw std::invalid_argument("lra::Writer: the file stores 1-byte tokens");
  write_record(label, length, tokens);
}

void Writer::close() {
  if (!file_) return;
  uint8_t h[kHeaderBytes];
  encode_header(header_, h);
  bool ok = std::fseek(file_, 0, SEEK_SET) == 0 && std::fwrite(h, 1, kHeaderBytes, file_) == kHeaderBytes;
  ok = (std::fclose(file_) == 0) && ok;
  file_ = nullptr;
  if (!ok) throw std::runtime_error(path_ + ": write failed");
}

Reader::Reader(const std::string& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "rb");
  if (!file_) throw std::runtime_error(path + ": cannot open");
  uint8_t h[kHeaderBytes];
  if (std::fread(h, 1, kHeaderBytes, file_) != kHeaderBytes) throw std::runtime_error(path + ": shorter than a header");
  header_ = decode_header(h, path);
  if (std::fseek(file_, 0, SEEK_END) != 0) throw std::runtime_error(path + ": cannot seek");
  const long size = std::ftell(file_);
  const uint64_t want = kHeaderBytes + header_.count * header_.record_bytes();
  if (size < 0 || uint64_t(size) != want)
    throw std::runtime_error(path + ": " + std::to_string(size) + " bytes, the header implies " + std::to_string(want));
  buffer_.resize(header_.record_bytes());
}

Reader::~Reader() {
  if (file_) std::fclose(file_);
}

void Reader::read(uint64_t index, std::vector<uint16_t>& tokens, int32_t& label, uint32_t& length) {
  if (index >= header_.count) throw std::out_of_range(path_ + ": example index out of range");
  const uint64_t off = kHeaderBytes + index * header_.record_bytes();
  if (std::fseek(file_, static_cast<long>(off), SEEK_SET) != 0 ||
      std::fread(buffer_.data(), 1, buffer_.size(), file_) != buffer_.size())
    throw std::runtime_error(path_ + ": read failed");
  std::memcpy(&label, buffer_.data(), 4);
  std::memcpy(&length, buffer_.data() + 4, 4);
  tokens.resize(header_.seq_len);
  const uint8_t* p = buffer_.data() + 8;
  if (header_.bytes_per_token == 1) {
    for (uint32_t k = 0; k < header_.seq_len; ++k) tokens[k] = p[k];
  } else {
    std::memcpy(tokens.data(), p, size_t(header_.seq_len) * 2);
  }
}

}  // namespace lra
