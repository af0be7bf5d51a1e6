#include "safetensors.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace fatrain::safetensors {
namespace {

std::string quote(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (c == '\n') o += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(c));
      o += buf;
    } else o += c;
  }
  return o + "\"";
}

// A minimal JSON reader for the header: objects, arrays, strings, integers.
// (The header never holds floats, booleans or null.)
struct Parser {
  const std::string& s;
  std::size_t i = 0;
  std::string where;
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(where + ": bad safetensors header (" + what + " at byte " + std::to_string(i) + ")");
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) ++i;
  }
  void expect(char c) {
    ws();
    if (i >= s.size() || s[i] != c) fail(std::string("expected '") + c + "'");
    ++i;
  }
  bool peek(char c) {
    ws();
    return i < s.size() && s[i] == c;
  }
  std::string str() {
    expect('"');
    std::string o;
    while (i < s.size() && s[i] != '"') {
      if (s[i] == '\\') {
        if (++i >= s.size()) fail("bad escape");
        const char c = s[i++];
        if (c == 'n') o += '\n';
        else if (c == 't') o += '\t';
        else if (c == 'u') {
          if (i + 4 > s.size()) fail("bad escape");
          const unsigned v = std::stoul(s.substr(i, 4), nullptr, 16);
          i += 4;
          if (v >= 0x80) fail("non-ASCII \\u escape");
          o += static_cast<char>(v);
        } else o += c;
      } else o += s[i++];
    }
    expect('"');
    return o;
  }
  std::int64_t integer() {
    ws();
    std::size_t j = i;
    if (j < s.size() && s[j] == '-') ++j;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    if (j == i) fail("expected an integer");
    const std::int64_t v = std::stoll(s.substr(i, j - i));
    i = j;
    return v;
  }
  std::vector<std::int64_t> int_array() {
    std::vector<std::int64_t> v;
    expect('[');
    if (peek(']')) return ++i, v;
    do v.push_back(integer());
    while (peek(',') && ++i);
    expect(']');
    return v;
  }
  template <class F>
  void object(F&& on_key) {
    expect('{');
    if (peek('}')) return void(++i);
    do {
      std::string k = str();
      expect(':');
      on_key(k);
    } while (peek(',') && ++i);
    expect('}');
  }
};

}  // namespace

std::size_t dtype_bytes(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "U8" || d == "I8" || d == "BOOL") return 1;
  throw std::runtime_error("safetensors: unknown dtype " + d);
}

const Entry& File::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::runtime_error("safetensors: tensor '" + name + "' missing from the checkpoint");
  return it->second;
}

void write(const std::string& path, const std::vector<TensorView>& tensors,
           const std::map<std::string, std::string>& metadata) {
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      h += quote(k) + ":" + quote(v);
      first = false;
    }
    h += "}";
  }
  std::size_t off = 0;
  for (const auto& t : tensors) {
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    if (static_cast<std::size_t>(n) * dtype_bytes(t.dtype) != t.nbytes)
      throw std::runtime_error(path + ": tensor '" + t.name + "' has " + std::to_string(t.nbytes) +
                               " bytes, its shape and dtype need " + std::to_string(n * dtype_bytes(t.dtype)));
    if (h.size() > 1) h += ",";
    h += quote(t.name) + ":{\"dtype\":" + quote(t.dtype) + ",\"shape\":[";
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(t.shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + t.nbytes) + "]}";
    off += t.nbytes;
  }
  h += "}";
  while (h.size() % 8) h += ' ';  // the format's recommended alignment
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error(tmp + ": cannot open for writing");
    const std::uint64_t n = h.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& t : tensors) f.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
    f.flush();
    if (!f) throw std::runtime_error(tmp + ": write failed (disk full?)");
  }
  // Rename last, so a crash mid-write never leaves a truncated checkpoint
  // under the real name.
  std::filesystem::rename(tmp, path);
}

File read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open checkpoint");
  std::uint64_t n = 0;
  if (!f.read(reinterpret_cast<char*>(&n), 8) || n > (1ull << 30))
    throw std::runtime_error(path + ": not a safetensors file");
  std::string h(n, '\0');
  if (!f.read(h.data(), static_cast<std::streamsize>(n))) throw std::runtime_error(path + ": truncated header");
  File out;
  const auto data_start = f.tellg();
  f.seekg(0, std::ios::end);
  const std::size_t data_bytes = static_cast<std::size_t>(f.tellg() - data_start);
  f.seekg(data_start);
  out.data.resize(data_bytes);
  if (!f.read(reinterpret_cast<char*>(out.data.data()), static_cast<std::streamsize>(data_bytes)))
    throw std::runtime_error(path + ": truncated data");
  Parser p{h, 0, path};
  p.object([&](const std::string& key) {
    if (key == "__metadata__") {
      p.object([&](const std::string& k) { out.metadata[k] = p.str(); });
      return;
    }
    Entry e;
    bool have_offsets = false;
    p.object([&](const std::string& field) {
      if (field == "dtype") e.dtype = p.str();
      else if (field == "shape") e.shape = p.int_array();
      else if (field == "data_offsets") {
        auto o = p.int_array();
        if (o.size() != 2 || o[0] < 0 || o[1] < o[0]) p.fail("bad data_offsets");
        e.begin = static_cast<std::size_t>(o[0]);
        e.end = static_cast<std::size_t>(o[1]);
        have_offsets = true;
      } else p.fail("unknown field '" + field + "'");
    });
    std::int64_t numel = 1;
    for (auto d : e.shape) numel *= d;
    if (!have_offsets || e.end > data_bytes || e.end - e.begin != numel * dtype_bytes(e.dtype))
      throw std::runtime_error(path + ": tensor '" + key + "' has inconsistent offsets / shape / dtype");
    out.tensors[key] = e;
  });
  return out;
}

}  // namespace fatrain::safetensors
