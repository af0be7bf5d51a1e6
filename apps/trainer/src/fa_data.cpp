// fa-data: turns a plain-text corpus (one document per line) into the token
// shards fa-train reads. The tokenizer is SentencePiece BPE (the C++ library
// from Debian's libsentencepiece-dev), trained on the training split only.
// This program never links libtorch (see shards.h for why).
//
//   fa-data prepare --input corpus.txt --out DIR [--labels labels.txt]
//                   [--vocab-size 8000] [--val-every 20] [--max-lines 0] [--threads 2]
//
// Writes DIR/tokenizer.model (+ .vocab), DIR/train.tok, DIR/val.tok and
// DIR/meta.json. Document i (0-based, empty lines skipped) goes to the
// validation split when i % val-every == 0, so both splits cover the whole
// corpus (for the Bible: every book) rather than its tail only.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "shards.h"

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: fa-data prepare --input FILE --out DIR [--labels FILE] [--vocab-size N] [--val-every N]\n"
    "                       [--max-lines N] [--threads N]\n"
    "  --input FILE       text corpus, one document per line (empty lines are skipped)\n"
    "  --labels FILE      optional integer class label per line of --input (same line count)\n"
    "  --out DIR          output folder: tokenizer.model, train.tok, val.tok, meta.json\n"
    "  --vocab-size N     SentencePiece BPE vocabulary size (default 8000)\n"
    "  --val-every N      document i goes to the validation split when i % N == 0 (default 20)\n"
    "  --max-lines N      use only the first N lines (0 = all; default 0)\n"
    "  --threads N        SentencePiece training threads (default 2)\n";

long parse_int(const std::string& flag, const std::string& v, long lo) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo)
    throw UsageError(flag + ": expected an integer >= " + std::to_string(lo) + ", got '" + v + "'");
  return x;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (static_cast<unsigned char>(c) < 0x20) o += ' ';
    else o += c;
  }
  return o;
}

int prepare(const std::map<std::string, std::string>& a) {
  auto need = [&](const char* k) {
    auto it = a.find(k);
    if (it == a.end()) throw UsageError(std::string(k) + ": required");
    return it->second;
  };
  auto opt = [&](const char* k, const char* d) {
    auto it = a.find(k);
    return it == a.end() ? std::string(d) : it->second;
  };
  const std::string input = need("--input"), out = need("--out"), labels_path = opt("--labels", "");
  const long vocab = parse_int("--vocab-size", opt("--vocab-size", "8000"), 16);
  const long val_every = parse_int("--val-every", opt("--val-every", "20"), 2);
  const long max_lines = parse_int("--max-lines", opt("--max-lines", "0"), 0);
  const long threads = parse_int("--threads", opt("--threads", "2"), 1);
  const auto t0 = std::chrono::steady_clock::now();

  std::ifstream in(input);
  if (!in) throw UsageError("--input: cannot read '" + input + "'");
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::vector<std::int32_t> labels;
  if (!labels_path.empty()) {
    std::ifstream lf(labels_path);
    if (!lf) throw UsageError("--labels: cannot read '" + labels_path + "'");
    for (std::string l; std::getline(lf, l);) labels.push_back(static_cast<std::int32_t>(parse_int("--labels", l, 0)));
    if (labels.size() != lines.size())
      throw UsageError("--labels: expected one label per line of --input (" + std::to_string(lines.size()) +
                       " lines), got " + std::to_string(labels.size()));
  }
  if (max_lines > 0 && lines.size() > static_cast<std::size_t>(max_lines)) {
    lines.resize(max_lines);
    if (!labels.empty()) labels.resize(max_lines);
  }
  std::vector<std::string> docs;
  std::vector<std::int32_t> doc_labels;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t\r") == std::string::npos) continue;
    docs.push_back(lines[i]);
    if (!labels.empty()) doc_labels.push_back(labels[i]);
  }
  if (docs.size() < static_cast<std::size_t>(val_every))
    throw UsageError("--input: " + std::to_string(docs.size()) + " non-empty lines; need at least --val-every (" +
                     std::to_string(val_every) + ") for a validation split");

  std::filesystem::create_directories(out);
  const std::string train_txt = out + "/tokenizer-train.txt";
  {
    std::ofstream f(train_txt);
    for (std::size_t i = 0; i < docs.size(); ++i)
      if (i % val_every != 0) f << docs[i] << '\n';
  }
  // Ids fixed so that every shard agrees: unk 0, bos 1 (the encoder's [CLS]),
  // eos 2 (GPT-2's document separator), pad 3, and [MASK] 4 for MLM.
  // hard_vocab_limit=false lets a small test text ask for more pieces than it
  // can give; input_sentence_size=0 uses every sentence (no sampling), so
  // training is deterministic.
  const std::string args = "--input=" + train_txt + " --model_prefix=" + out + "/tokenizer" +
                           " --vocab_size=" + std::to_string(vocab) +
                           " --model_type=bpe --character_coverage=1.0 --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3"
                           " --user_defined_symbols=[MASK] --hard_vocab_limit=false --input_sentence_size=0"
                           " --num_threads=" + std::to_string(threads) + " --minloglevel=2";
  auto st = sentencepiece::SentencePieceTrainer::Train(args);
  if (!st.ok()) throw std::runtime_error("SentencePiece training failed: " + st.ToString());
  std::filesystem::remove(train_txt);

  sentencepiece::SentencePieceProcessor sp;
  st = sp.Load(out + "/tokenizer.model");
  if (!st.ok()) throw std::runtime_error("SentencePiece load failed: " + st.ToString());
  fatrain::SpecialIds ids{sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.PieceToId("[MASK]")};
  fatrain::Shard split[2];  // 0 train, 1 val
  for (auto& s : split) {
    s.vocab_size = static_cast<std::uint64_t>(sp.GetPieceSize());
    s.ids = ids;
  }
  std::vector<int> piece_ids;
  for (std::size_t i = 0; i < docs.size(); ++i) {
    auto& s = split[i % val_every == 0 ? 1 : 0];
    st = sp.Encode(docs[i], &piece_ids);
    if (!st.ok()) throw std::runtime_error("SentencePiece encode failed: " + st.ToString());
    s.doc_starts.push_back(s.tokens.size());
    s.tokens.insert(s.tokens.end(), piece_ids.begin(), piece_ids.end());
    s.tokens.push_back(ids.eos);
    if (!doc_labels.empty()) s.labels.push_back(doc_labels[i]);
  }
  fatrain::write_shard(out + "/train.tok", split[0]);
  fatrain::write_shard(out + "/val.tok", split[1]);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ofstream meta(out + "/meta.json");
  meta << "{\"corpus\": \"" << json_escape(input) << "\", \"tokenizer\": \"sentencepiece-bpe\", \"vocab_size\": "
       << sp.GetPieceSize() << ", \"bos\": " << ids.bos << ", \"eos\": " << ids.eos << ", \"pad\": " << ids.pad
       << ", \"mask\": " << ids.mask << ", \"val_every\": " << val_every << ", \"train_docs\": "
       << split[0].num_docs() << ", \"train_tokens\": " << split[0].tokens.size()
       << ", \"val_docs\": " << split[1].num_docs() << ", \"val_tokens\": " << split[1].tokens.size()
       << ", \"labels\": " << (doc_labels.empty() ? "false" : "true") << "}\n";
  std::printf("fa-data: %s -> %s: vocab %d, train %zu docs / %zu tokens, val %zu docs / %zu tokens (%.1f s)\n",
              input.c_str(), out.c_str(), sp.GetPieceSize(), split[0].num_docs(), split[0].tokens.size(),
              split[1].num_docs(), split[1].tokens.size(), secs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
      std::cout << kUsage;
      return argc < 2 ? 2 : 0;
    }
    if (std::string(argv[1]) != "prepare") throw UsageError("unknown command '" + std::string(argv[1]) + "'");
    std::map<std::string, std::string> a;
    for (int i = 2; i < argc; ++i) {
      const std::string k = argv[i];
      if (k.rfind("--", 0) != 0 || i + 1 >= argc) throw UsageError(k + ": expected '--flag value'");
      a[k] = argv[++i];
    }
    for (const auto& [k, v] : a)
      if (k != "--input" && k != "--out" && k != "--labels" && k != "--vocab-size" && k != "--val-every" &&
          k != "--max-lines" && k != "--threads")
        throw UsageError(k + ": unknown flag");
    return prepare(a);
  } catch (const UsageError& e) {
    std::cerr << "fa-data: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "fa-data: " << e.what() << "\n";
    return 1;
  }
}
