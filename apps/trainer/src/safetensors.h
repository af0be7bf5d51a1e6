// A small writer and reader of the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "string value", ...}}
// padded with spaces to a multiple of 8, then the raw little-endian tensor
// bytes (offsets relative to the end of the header). Plain C++ (no torch) so
// that it can be tested and reused on its own; checkpoint.cpp maps torch
// tensors onto it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fatrain::safetensors {

struct TensorView {  // what the writer streams out (not owned)
  std::string name, dtype;  // dtype: F32, F16, BF16, F64, I64, I32, U8, ...
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
  std::size_t nbytes = 0;
};

// Writes path atomically (path + ".tmp", then rename). Throws
// std::runtime_error naming the file.
void write(const std::string& path, const std::vector<TensorView>& tensors,
           const std::map<std::string, std::string>& metadata);

struct Entry {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::size_t begin = 0, end = 0;  // into File::data
};

struct File {
  std::map<std::string, Entry> tensors;
  std::map<std::string, std::string> metadata;
  std::vector<std::uint8_t> data;  // the byte buffer after the header
  const Entry& at(const std::string& name) const;  // throws naming the tensor
};

File read(const std::string& path);

// Bytes per element of a safetensors dtype string (throws when unknown).
std::size_t dtype_bytes(const std::string& dtype);

}  // namespace fatrain::safetensors
