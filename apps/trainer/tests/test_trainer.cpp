// fa-train's tests on the CPU: training makes the loss fall (GPT-2, MLM
// encoder, classification head), flashattn and standard attention agree on
// the loss and every gradient, resume is bit-identical, bad configurations
// are rejected with the flag named, the file formats round-trip, and
// fa-lra's files train through --task classify.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "config.h"
#include "lra_data.h"
#include "lra_format.h"
#include "model.h"
#include "safetensors.h"
#include "shards.h"
#include "trainer.h"

namespace fatrain {
namespace {

namespace fs = std::filesystem;

std::string out_dir(const std::string& name) {
  const fs::path p = fs::path(FATRAIN_TEST_OUT) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

TrainConfig tiny(const std::string& preset, std::vector<std::string> extra) {
  std::vector<std::string> a = {"--model", preset, "--data", FATRAIN_TEST_DATA, "--context", "32", "--batch", "8",
                                "--lr", "3e-3", "--warmup", "3", "--threads", "1", "--quiet", "--eval-every", "0",
                                "--log-every", "1", "--eval-batches", "4"};
  a.insert(a.end(), extra.begin(), extra.end());
  return parse_args(a);
}

std::string config_error(const std::vector<std::string>& args, bool run = false);

double mean_last(const TrainResult& r, std::size_t n) {
  double s = 0;
  for (std::size_t i = r.train_loss.size() - n; i < r.train_loss.size(); ++i) s += r.train_loss[i].second;
  return s / n;
}

// ---------------------------------------------------------- loss falls ---

TEST(Training, Gpt2TinyLossFalls) {
  auto r = train(tiny("gpt2-tiny", {"--steps", "25"}));
  ASSERT_EQ(r.train_loss.size(), 25u);
  const double first = r.train_loss.front().second;
  // Random init predicts ~uniformly: ln(vocab) (vocab <= 300).
  EXPECT_NEAR(first, std::log(300.0), 0.5);
  EXPECT_LT(mean_last(r, 5), first - 1.0);
  ASSERT_EQ(r.evals.size(), 1u);
  EXPECT_LT(r.evals[0].loss, first - 1.0);
  EXPECT_NEAR(r.evals[0].ppl, std::exp(r.evals[0].loss), 1e-6 * r.evals[0].ppl);
}

// bf16 autocast on the CPU: every attention switch trains (standard
// attention once threw when masking bf16 scores with float's lowest value),
// and flashattn and standard agree on the losses within bf16 rounding.
TEST(Training, Bf16AutocastEveryAttention) {
  std::vector<TrainResult> runs;
  for (const char* att : {"flashattn", "standard", "sdpa-flash"}) {
    SCOPED_TRACE(att);
    runs.push_back(train(tiny("gpt2-tiny", {"--steps", "8", "--precision", "bf16", "--attention", att})));
    ASSERT_EQ(runs.back().train_loss.size(), 8u);
    for (const auto& [step, loss] : runs.back().train_loss) EXPECT_TRUE(std::isfinite(loss)) << "step " << step;
    EXPECT_LT(mean_last(runs.back(), 3), runs.back().train_loss.front().second);
  }
  for (std::size_t i = 0; i < runs[0].train_loss.size(); ++i)
    EXPECT_NEAR(runs[0].train_loss[i].second, runs[1].train_loss[i].second, 0.05) << "step " << i + 1;
}

TEST(Training, EncoderTinyMlmLossFalls) {
  auto r = train(tiny("encoder-tiny", {"--steps", "30"}));
  const double first = r.train_loss.front().second;
  EXPECT_NEAR(first, std::log(300.0), 0.5);
  EXPECT_LT(mean_last(r, 5), first - 0.8);
  EXPECT_LT(r.evals.back().loss, first - 0.8);
}

TEST(Training, EncoderClassificationHeadLearns) {
  // The test corpus has two topics (farm / sea words); label = topic.
  auto r = train(tiny("encoder-tiny", {"--task", "classify", "--steps", "30", "--batch", "16"}));
  EXPECT_NEAR(r.train_loss.front().second, std::log(2.0), 0.3);
  EXPECT_LT(mean_last(r, 5), 0.3);
  EXPECT_GE(r.evals.back().accuracy, 0.9);
}

// --pool mean: the mean over each row's tokens only (padding rows excluded,
// whatever they hold), through the same pooler and classifier as cls.
TEST(Model, MeanPoolingSkipsPadding) {
  ModelConfig m = preset("encoder-tiny");
  m.vocab = 20;
  m.num_classes = 3;
  m.pool = "mean";
  torch::manual_seed(2);
  Transformer t(m, AttnOptions{});
  torch::NoGradGuard ng;
  const std::vector<std::int32_t> lengths = {5, 2, 8};
  auto pad = make_padding(lengths, 8, torch::kCPU);
  auto h = torch::randn({3, 8, m.width});
  auto got = t->cls_logits(h, &pad);
  for (int b = 0; b < 3; ++b) {
    auto want = t->classifier(torch::tanh(t->pooler(h[b].narrow(0, 0, lengths[b]).mean(0))));
    EXPECT_TRUE(torch::allclose(got[b], want, 1e-5, 1e-6)) << "row " << b;
  }
  auto h2 = h.clone();
  h2[1].narrow(0, 2, 6).fill_(1e3);  // padding rows changed
  EXPECT_TRUE(torch::allclose(t->cls_logits(h2, &pad), got));
  // cls reads position 0 only.
  t->cfg.pool = "cls";
  EXPECT_TRUE(torch::allclose(t->cls_logits(h, &pad)[0], t->classifier(torch::tanh(t->pooler(h[0][0])))));
}

TEST(Training, MeanPoolingClassifierLearns) {
  auto r = train(tiny("encoder-tiny", {"--task", "classify", "--pool", "mean", "--steps", "30", "--batch", "16"}));
  EXPECT_LT(mean_last(r, 5), 0.3);
  EXPECT_GE(r.evals.back().accuracy, 0.9);
  EXPECT_EQ(config_error({"--data", FATRAIN_TEST_DATA, "--model", "encoder-tiny", "--pool", "mean"}),
            "--pool: pools for the classification head; needs --task classify, got mlm");
  EXPECT_EQ(config_error({"--data", FATRAIN_TEST_DATA, "--pool", "max"}).rfind("--pool: expected one of", 0), 0u);
}

// ------------------------------------------- flashattn == standard attention ---

ModelConfig small_model(const std::string& preset) {
  ModelConfig m = fatrain::preset(preset);
  m.vocab = 97;
  m.layers = 2;
  return m;
}

struct Grads {
  double loss;
  std::map<std::string, torch::Tensor> grad, param;
};

// The loss of one fixed batch and the gradient of every parameter, for a
// model built from `seed` with the given attention.
Grads run_batch(const ModelConfig& m, AttnKind kind, bool causal, const torch::Tensor& tokens,
                const torch::Tensor& labels, const std::vector<std::int32_t>& lengths,
                const SparseOptions& sparse = {}) {
  torch::manual_seed(11);
  AttnOptions a;
  a.kind = kind;
  a.sparse = sparse;
  a.causal = causal;
  Transformer model(m, a);
  model->train();  // dropout is 0 in these presets; train mode runs the training path
  Padding pad;
  const Padding* p = nullptr;
  if (!lengths.empty()) pad = make_padding(lengths, tokens.size(1), torch::kCPU), p = &pad;
  auto h = model->hidden(tokens, p);
  torch::Tensor loss;
  if (m.arch == "gpt2") {
    loss = torch::nn::functional::cross_entropy(model->lm_logits(h).reshape({-1, m.vocab}), labels.reshape({-1}));
  } else {
    auto flat = labels.reshape({-1});
    auto sel = (flat != -100).nonzero().squeeze(1);
    loss = torch::nn::functional::cross_entropy(model->mlm_logits(h.reshape({-1, m.width}).index_select(0, sel)),
                                                flat.index_select(0, sel));
  }
  loss.backward();
  Grads g;
  g.loss = loss.item<double>();
  for (const auto& kv : model->named_parameters()) {
    g.grad[kv.key()] = kv.value().grad().clone();
    g.param[kv.key()] = kv.value().detach().clone();
  }
  return g;
}

void expect_same(const Grads& a, const Grads& b, const char* what) {
  EXPECT_NEAR(a.loss, b.loss, 1e-5 * std::abs(b.loss)) << what;
  for (const auto& [name, gb] : b.grad) {
    ASSERT_TRUE(torch::equal(a.param.at(name), b.param.at(name))) << what << ": parameters differ: " << name;
    const auto& ga = a.grad.at(name);
    const double scale = gb.abs().max().item<double>();
    const double diff = (ga - gb).abs().max().item<double>();
    EXPECT_LE(diff, 1e-4 * scale + 1e-7) << what << ": gradient of " << name << " (max |g| " << scale << ")";
  }
}

TEST(Attention, FlashattnMatchesStandardGpt2LossAndGradients) {
  const auto m = small_model("gpt2-tiny");
  torch::manual_seed(3);
  auto tokens = torch::randint(m.vocab, {3, 48}, torch::kLong);
  auto labels = torch::randint(m.vocab, {3, 48}, torch::kLong);
  auto f = run_batch(m, AttnKind::flashattn, true, tokens, labels, {});
  auto s = run_batch(m, AttnKind::standard, true, tokens, labels, {});
  expect_same(f, s, "flashattn vs standard (causal)");
  auto d = run_batch(m, AttnKind::sdpa_flash, true, tokens, labels, {});
  expect_same(d, s, "sdpa (CPU) vs standard (causal)");
  // The comparison can fail: without the causal mask the loss differs.
  auto nc = run_batch(m, AttnKind::flashattn, false, tokens, labels, {});
  EXPECT_GT(std::abs(nc.loss - s.loss), 1e-3);
  // Gradients are not trivially zero.
  EXPECT_GT(s.grad.at("h.0.attn_c_attn.weight").abs().max().item<double>(), 1e-6);
}

TEST(Attention, FlashattnVarlenMatchesStandardMaskEncoder) {
  const auto m = small_model("encoder-tiny");
  const std::int64_t S = 40;
  const std::vector<std::int32_t> lengths = {40, 23, 7, 1};
  torch::manual_seed(5);
  auto tokens = torch::randint(5, m.vocab, {4, S}, torch::kLong);
  auto labels = torch::full({4, S}, -100, torch::kLong);
  for (int b = 0; b < 4; ++b) {
    tokens[b].narrow(0, lengths[b], S - lengths[b]).fill_(3);  // pad id
    for (int t = 0; t < lengths[b]; t += 3) labels[b][t] = (b * 7 + t) % m.vocab;
  }
  auto f = run_batch(m, AttnKind::flashattn, false, tokens, labels, lengths);
  auto s = run_batch(m, AttnKind::standard, false, tokens, labels, lengths);
  expect_same(f, s, "flashattn varlen vs standard key-padding mask");
  auto d = run_batch(m, AttnKind::sdpa_flash, false, tokens, labels, lengths);
  expect_same(d, s, "sdpa (CPU) vs standard key-padding mask");
  // Padding really is masked: a different token in the padding changes nothing.
  auto tokens2 = tokens.clone();
  tokens2[2][20] = 42;
  auto f2 = run_batch(m, AttnKind::flashattn, false, tokens2, labels, lengths);
  auto s2 = run_batch(m, AttnKind::standard, false, tokens2, labels, lengths);
  EXPECT_EQ(f2.loss, f.loss);
  EXPECT_NEAR(s2.loss, s.loss, 1e-6 * std::abs(s.loss));
  // ... while the same change inside a sequence does.
  tokens2[2][3] = tokens[2][3].item<std::int64_t>() == 42 ? 43 : 42;
  EXPECT_GT(std::abs(run_batch(m, AttnKind::flashattn, false, tokens2, labels, lengths).loss - f.loss), 1e-6);
}

// flashattn-sparse: a pattern that keeps every block gives dense flashattn's
// loss and gradients (causal, and encoder with key padding through varlen);
// a real pattern gives another loss.
TEST(Attention, SparseKeepingEveryBlockMatchesDense) {
  SparseOptions all;
  all.block = 8;
  all.local = 1;
  all.global = 100;  // local_global's local blocks end at the diagonal: global covers the rest
  SparseOptions fly = all;
  fly.pattern = "butterfly";
  fly.width = 8;  // one super-block holds all 48 / 8 = 6 blocks
  SparseOptions real = all;
  real.global = 0;
  real.local = 2;
  {
    const auto m = small_model("gpt2-tiny");
    torch::manual_seed(3);
    auto tokens = torch::randint(m.vocab, {3, 48}, torch::kLong);
    auto labels = torch::randint(m.vocab, {3, 48}, torch::kLong);
    auto d = run_batch(m, AttnKind::flashattn, true, tokens, labels, {});
    expect_same(run_batch(m, AttnKind::flashattn_sparse, true, tokens, labels, {}, all), d, "local_global all (causal)");
    expect_same(run_batch(m, AttnKind::flashattn_sparse, true, tokens, labels, {}, fly), d, "butterfly all (causal)");
    EXPECT_GT(std::abs(run_batch(m, AttnKind::flashattn_sparse, true, tokens, labels, {}, real).loss - d.loss), 1e-4);
  }
  {
    const auto m = small_model("encoder-tiny");
    const std::vector<std::int32_t> lengths = {40, 23, 7, 1};
    torch::manual_seed(5);
    auto tokens = torch::randint(5, m.vocab, {4, 40}, torch::kLong);
    auto labels = torch::full({4, 40}, -100, torch::kLong);
    for (int b = 0; b < 4; ++b) {
      tokens[b].narrow(0, lengths[b], 40 - lengths[b]).fill_(3);
      for (int t = 0; t < lengths[b]; t += 3) labels[b][t] = (b * 7 + t) % m.vocab;
    }
    auto d = run_batch(m, AttnKind::flashattn, false, tokens, labels, lengths);
    expect_same(run_batch(m, AttnKind::flashattn_sparse, false, tokens, labels, lengths, all), d, "all, varlen");
    expect_same(run_batch(m, AttnKind::flashattn_sparse, false, tokens, labels, lengths, fly), d, "butterfly all, varlen");
    EXPECT_GT(std::abs(run_batch(m, AttnKind::flashattn_sparse, false, tokens, labels, lengths, real).loss - d.loss), 1e-4);
  }
}

// The FLOP count's attention term follows the blocks a pattern keeps: 48
// tokens in blocks of 8 are 6 x 6 blocks; local 2 keeps the diagonal and
// the block before it (1 for the first query block): 11 of 36.
TEST(Attention, DensityOfTheFlopCount) {
  AttnOptions o;
  EXPECT_EQ(attention_density(o, 48), 1.0);
  o.kind = AttnKind::flashattn_sparse;
  o.sparse.block = 8;
  o.sparse.local = 2;
  o.sparse.global = 0;
  EXPECT_DOUBLE_EQ(attention_density(o, 48), 11.0 / 36.0);
  o.kind = AttnKind::standard;
  EXPECT_EQ(attention_density(o, 48), 1.0);
}

TEST(Training, SparseAttentionTrains) {
  for (const char* pattern : {"local_global", "butterfly"}) {
    SCOPED_TRACE(pattern);
    auto r = train(tiny("encoder-tiny", {"--task", "classify", "--steps", "4", "--attention", "flashattn-sparse",
                                         "--sparse-pattern", pattern, "--sparse-block", "8", "--sparse-local", "1",
                                         "--sparse-global", "1", "--sparse-factors", "1"}));
    ASSERT_EQ(r.train_loss.size(), 4u);
    for (const auto& [s, l] : r.train_loss) EXPECT_TRUE(std::isfinite(l)) << "step " << s;
    EXPECT_NE(r.attention_note.find(pattern), std::string::npos) << r.attention_note;
  }
  auto g = train(tiny("gpt2-tiny", {"--steps", "3", "--attention", "flashattn-sparse", "--sparse-block", "8"}));
  for (const auto& [s, l] : g.train_loss) EXPECT_TRUE(std::isfinite(l)) << "step " << s;
  EXPECT_EQ(config_error({"--data", FATRAIN_TEST_DATA, "--sparse-block", "0"}), "--sparse-block: expected >= 1, got 0");
  EXPECT_EQ(config_error({"--data", FATRAIN_TEST_DATA, "--sparse-pattern", "random"}).rfind("--sparse-pattern: expected one of", 0), 0u);
}

// --------------------------------------------------------------- resume ---

void expect_identical_checkpoints(const std::string& a, const std::string& b) {
  const auto fa = safetensors::read(a), fb = safetensors::read(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  for (const auto& [name, ea] : fa.tensors) {
    const auto& eb = fb.at(name);
    ASSERT_EQ(ea.end - ea.begin, eb.end - eb.begin) << name;
    EXPECT_EQ(0, std::memcmp(fa.data.data() + ea.begin, fb.data.data() + eb.begin, ea.end - ea.begin))
        << "tensor " << name << " differs";
  }
  EXPECT_EQ(fa.metadata.at("step"), fb.metadata.at("step"));
}

void resume_case(const std::string& preset) {
  // Dropout on, so that the generators' states matter; accumulation on, so
  // that more than one micro-batch per step is replayed.
  const std::vector<std::string> common = {"--steps", "8", "--dropout", "0.1", "--attn-dropout", "0.1",
                                           "--accum", "2"};
  auto with = [&](std::vector<std::string> more) {
    auto v = common;
    v.insert(v.end(), more.begin(), more.end());
    return tiny(preset, v);
  };
  const std::string full = out_dir(preset + "-full"), part = out_dir(preset + "-part"),
                    rest = out_dir(preset + "-rest");
  auto a = train(with({"--save", full}));
  auto b1 = train(with({"--save", part, "--stop-after", "4"}));
  EXPECT_EQ(b1.last_step, 4);
  auto b2 = train(with({"--save", rest, "--resume", part + "/last.safetensors"}));
  EXPECT_EQ(b2.first_step, 4);
  ASSERT_EQ(a.train_loss.size(), 8u);
  ASSERT_EQ(b1.train_loss.size() + b2.train_loss.size(), 8u);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(a.train_loss[i], b1.train_loss[i]) << "step " << i + 1;
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(a.train_loss[4 + i], b2.train_loss[i]) << "step " << i + 5;
  expect_identical_checkpoints(full + "/last.safetensors", rest + "/last.safetensors");
  EXPECT_EQ(a.evals.back().loss, b2.evals.back().loss);
  // And the checkpoint is checked against the flags' model.
  try {
    train(tiny(preset, {"--steps", "8", "--width", "32", "--resume", part + "/last.safetensors"}));
    ADD_FAILURE() << "resume into another model was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--resume: the checkpoint's model"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, ResumeIsBitIdenticalGpt2) { resume_case("gpt2-tiny"); }
TEST(Checkpoint, ResumeIsBitIdenticalEncoder) { resume_case("encoder-tiny"); }

// ---------------------------------------------------------- bad configs ---

std::string config_error(const std::vector<std::string>& args, bool run) {
  try {
    auto c = parse_args(args);
    validate(c);
    if (run) train(c);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Config, BadConfigsNameTheFlag) {
  const std::string d = FATRAIN_TEST_DATA;
  EXPECT_EQ(config_error({"--data", d, "--heads", "5"}).rfind("--heads: 5 heads do not divide --width 64", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--model", "gpt2-small", "--width", "700"}).rfind("--heads: 12 heads", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--context", "256"}).rfind("--context: 256 is longer than --positions 128", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--model", "gpt2-small", "--context", "4096"}).rfind("--context: 4096", 0), 0u);
  EXPECT_EQ(config_error({"--context", "64"}).rfind("--data: required", 0), 0u);
  EXPECT_EQ(config_error({"--data", d + "/missing"}, true).rfind("--data: '", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--context", "2000", "--positions", "4096"}, true).rfind("--context: 2000 tokens need", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--model", "gpt3"}).rfind("--model: expected one of", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--attention", "fast"}).rfind("--attention: expected one of", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--task", "mlm"}).rfind("--task: mlm needs an encoder", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--steps", "x"}).rfind("--steps: expected an integer", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--dropout", "1.5"}).rfind("--dropout: expected a probability", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--bogus", "1"}).rfind("--bogus: unknown flag", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--vocab", "-1"}).rfind("--vocab: expected >= 1", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--vocab", "10"}, true).rfind("--vocab: 10 is smaller than", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--save-every", "5"}).rfind("--save-every: needs --save", 0), 0u);
  EXPECT_EQ(config_error({"--data", d, "--resume", d + "/train.tok"}, true).rfind("--resume: ", 0), 0u);
  // The preset applies first wherever --model stands; later flags override it.
  auto c = parse_args({"--width", "96", "--model", "gpt2-medium", "--context=512"});
  EXPECT_EQ(c.model.width, 96);
  EXPECT_EQ(c.model.layers, 24);
  EXPECT_EQ(c.effective_context(), 512);
}

// --time-attention: each logged step says how long the flashattn operators
// took and their share of the step, a share strictly between 0 and 1.
TEST(Training, TimeAttentionLogsTheShare) {
  const std::string log = out_dir("time-attention") + "/log.jsonl";
  train(tiny("gpt2-tiny", {"--steps", "4", "--time-attention", "--log-json", log}));
  std::ifstream f(log);
  int steps = 0;
  for (std::string line; std::getline(f, line);) {
    if (line.find("\"event\":\"train\"") == std::string::npos) continue;
    ++steps;
    const auto at = line.find("\"attention_share\":");
    ASSERT_NE(at, std::string::npos) << line;
    const double share = std::stod(line.substr(at + 18));
    EXPECT_GT(share, 0.0) << line;
    EXPECT_LT(share, 1.0) << line;
    EXPECT_NE(line.find("\"attention_ms_per_step\":"), std::string::npos) << line;
  }
  EXPECT_EQ(steps, 4);
  EXPECT_EQ(config_error({"--data", FATRAIN_TEST_DATA, "--attention", "standard", "--time-attention"}),
            "--time-attention: times the flashattn operators only; got --attention standard");
}

TEST(Config, PresetShapes) {
  // The parameter counts the presets are named after (GPT-2's vocabulary of
  // 50257, context 1024): 124M and 355M.
  for (auto [name, want] : {std::pair{"gpt2-small", 124.4e6}, {"gpt2-medium", 354.8e6}}) {
    ModelConfig m = preset(name);
    m.vocab = 50257;
    torch::manual_seed(0);
    Transformer t(m, AttnOptions{});
    EXPECT_NEAR(t->num_params(false), want, 0.5e6) << name;
  }
}

TEST(Config, LearningRateSchedules) {
  // Warmup to --lr over 10 steps, then 100 steps of decay to --min-lr: a
  // quarter of the way, the cosine has 0.5 (1 + cos(pi / 4)) of the range
  // left, the line 0.75.
  std::vector<std::string> args = {"--data", FATRAIN_TEST_DATA, "--lr", "1e-3", "--min-lr", "1e-4",
                                   "--warmup", "10", "--steps", "110"};
  auto c = parse_args(args);
  EXPECT_EQ(c.lr_schedule, "cosine");
  EXPECT_DOUBLE_EQ(learning_rate(c, 0), 1e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 9), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(c, 10), 1e-3);
  EXPECT_NEAR(learning_rate(c, 35), 1e-4 + 0.5 * (1 + std::cos(M_PI / 4)) * 9e-4, 1e-15);
  EXPECT_NEAR(learning_rate(c, 110), 1e-4, 1e-15);
  args.insert(args.end(), {"--lr-schedule", "linear"});
  c = parse_args(args);
  EXPECT_DOUBLE_EQ(learning_rate(c, 10), 1e-3);
  EXPECT_NEAR(learning_rate(c, 35), 1e-4 + 0.75 * 9e-4, 1e-15);
  EXPECT_NEAR(learning_rate(c, 60), 5.5e-4, 1e-15);
  EXPECT_NEAR(learning_rate(c, 110), 1e-4, 1e-15);
  EXPECT_EQ(config_error({"--data", FATRAIN_TEST_DATA, "--lr-schedule", "step"}).rfind("--lr-schedule: expected one of", 0), 0u);
}

TEST(Config, MlpRatioSizesTheMlp) {
  // Each block's MLP is width x (ratio width) and back, with biases: from
  // ratio 4 to 2 it loses 2 (2 width^2 + width) parameters a layer.
  const auto c = parse_args({"--data", FATRAIN_TEST_DATA, "--model", "encoder-tiny", "--mlp-ratio", "2"});
  EXPECT_EQ(c.model.mlp_ratio, 2);
  ModelConfig four = c.model, two = c.model;
  four.mlp_ratio = 4;
  four.vocab = two.vocab = 40;
  torch::manual_seed(0);
  const double n4 = Transformer(four, AttnOptions{})->num_params(false);
  const double n2 = Transformer(two, AttnOptions{})->num_params(false);
  const std::int64_t w = c.model.width;
  EXPECT_EQ(n4 - n2, c.model.layers * 2 * (2 * w * w + w));
  EXPECT_EQ(config_error({"--data", FATRAIN_TEST_DATA, "--mlp-ratio", "0"}), "--mlp-ratio: expected >= 1, got 0");
}

// --------------------------------------------------------- file formats ---

TEST(Formats, SafetensorsRoundTrip) {
  const std::string dir = out_dir("st");
  std::vector<float> f = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  std::vector<std::int64_t> l = {42};
  safetensors::write(dir + "/x.safetensors",
                     {{"a.weight", "F32", {2, 3}, f.data(), f.size() * 4}, {"step", "I64", {1}, l.data(), 8}},
                     {{"format", "test \"quoted\""}});
  auto r = safetensors::read(dir + "/x.safetensors");
  EXPECT_EQ(r.metadata.at("format"), "test \"quoted\"");
  const auto& e = r.at("a.weight");
  EXPECT_EQ(e.dtype, "F32");
  EXPECT_EQ(e.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(0, std::memcmp(r.data.data() + e.begin, f.data(), 24));
  EXPECT_EQ(0, std::memcmp(r.data.data() + r.at("step").begin, l.data(), 8));
  EXPECT_THROW(r.at("missing"), std::runtime_error);
  // The 8-byte header length and the JSON header are the format's: check the
  // first bytes as another reader would see them.
  std::ifstream in(dir + "/x.safetensors", std::ios::binary);
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  std::string h(n, ' ');
  in.read(h.data(), n);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(h.rfind("{\"__metadata__\":{\"format\":", 0), 0u) << h;
  EXPECT_NE(h.find("\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}"), std::string::npos) << h;
  // A shape that does not match the bytes is refused.
  EXPECT_THROW(safetensors::write(dir + "/y.safetensors", {{"a", "F32", {4}, f.data(), 8}}, {}), std::runtime_error);
}

TEST(Formats, TokenShardRoundTripAndData) {
  const std::string dir = out_dir("shard");
  Shard s;
  s.vocab_size = 70000;  // > 65536: 4-byte tokens
  s.ids = {1, 2, 3, 4};
  s.tokens = {1, 69999, 2, 5, 6, 2};
  s.doc_starts = {0, 3};
  s.labels = {0, 1};
  write_shard(dir + "/s.tok", s);
  auto r = read_shard(dir + "/s.tok");
  EXPECT_EQ(r.tokens, s.tokens);
  EXPECT_EQ(r.doc_starts, s.doc_starts);
  EXPECT_EQ(r.labels, s.labels);
  EXPECT_EQ(r.doc(1), (std::pair<std::uint64_t, std::uint64_t>{3, 5}));  // without its eos
  // The fixture's shards: SentencePiece BPE ids within the vocabulary, one
  // label per document, documents ending with eos.
  auto t = read_shard(std::string(FATRAIN_TEST_DATA) + "/train.tok");
  EXPECT_GT(t.tokens.size(), 10000u);
  EXPECT_EQ(t.labels.size(), t.num_docs());
  EXPECT_EQ(t.ids.eos, 2);
  EXPECT_EQ(t.tokens.back(), t.ids.eos);
}


// ------------------------------------------------------------- LRA data ---

TEST(Formats, LraFilesAsShards) {
  const std::string dir = out_dir("lra-format");
  lra::Header h;
  h.task = lra::Task::listops;
  h.seq_len = 6;
  h.vocab_size = 16;
  h.num_classes = 10;
  h.pad_id = 0;
  {
    lra::Writer w(dir + "/train.bin", h);
    const std::uint8_t a[6] = {12, 2, 3, 15, 0, 0}, b[6] = {5, 0, 0, 0, 0, 0};
    w.add(2, 4, a);
    w.add(4, 1, b);
    w.close();
  }
  const Shard s = lra_shard(dir + "/train.bin");
  EXPECT_EQ(s.vocab_size, 20u);
  EXPECT_EQ(s.ids.pad, 16);
  EXPECT_EQ(s.ids.bos, 17);
  EXPECT_EQ(s.ids.eos, 18);
  EXPECT_EQ(s.ids.mask, 19);
  // Real tokens only (the file's padding dropped), each document then eos.
  EXPECT_EQ(s.tokens, (std::vector<std::int32_t>{12, 2, 3, 15, 18, 5, 18}));
  EXPECT_EQ(s.doc_starts, (std::vector<std::uint64_t>{0, 5}));
  EXPECT_EQ(s.labels, (std::vector<std::int32_t>{2, 4}));
  EXPECT_EQ(s.doc(1), (std::pair<std::uint64_t, std::uint64_t>{5, 6}));
  EXPECT_TRUE(is_lra_data("lra:" + dir));
  EXPECT_FALSE(is_lra_data(dir));
  EXPECT_THROW(lra_shard(dir + "/none.bin"), std::runtime_error);
}

// A task of the LRA kind the tiny encoder learns in about 100 steps: is token
// 11 anywhere in a sequence of digits? (One token decides, far from
// [CLS]: attention has to find it; four seeds reached accuracy 1.0 by
// step 80 of 120.)
void write_marker_task(const std::string& path, int count, std::uint64_t seed) {
  lra::Header h;
  h.task = lra::Task::listops;
  h.seq_len = 24;
  h.vocab_size = 16;
  h.num_classes = 2;
  h.pad_id = 0;
  lra::Writer w(path, h);
  std::mt19937_64 rng(seed);
  for (int i = 0; i < count; ++i) {
    std::uint8_t t[24] = {};
    const std::uint32_t len = 12 + rng() % 13;
    for (std::uint32_t k = 0; k < len; ++k) t[k] = static_cast<std::uint8_t>(1 + rng() % 10);
    const int label = i % 2;
    if (label) t[rng() % len] = 11;
    w.add(label, len, t);
  }
  w.close();
}

TEST(Training, LraDataTrainsTheClassifier) {
  const std::string dir = out_dir("lra-task");
  write_marker_task(dir + "/train.bin", 512, 1);
  write_marker_task(dir + "/val.bin", 128, 2);
  auto c = tiny("encoder-tiny", {"--task", "classify", "--steps", "120", "--batch", "16", "--context", "25"});
  c.data = "lra:" + dir;
  auto r = train(c);
  ASSERT_FALSE(r.evals.empty());
  EXPECT_GE(r.evals.back().accuracy, 0.9);
  // Another task than classify is refused, naming --data.
  auto m = tiny("encoder-tiny", {"--task", "mlm"});
  m.data = "lra:" + dir;
  try {
    train(m);
    FAIL() << "mlm on LRA data was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--data: lra:"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------- 2-D positions ---

// An image task on a side x side grid (tokens 1..10, one marker pixel 11 in
// the positives), in fa-lra's Pathfinder layout: never padded, image size
// in the header.
void write_image_task(const std::string& path, std::uint32_t side, int count, std::uint64_t seed) {
  lra::Header h;
  h.task = lra::Task::pathfinder;
  h.seq_len = side * side;
  h.image_size = side;
  h.vocab_size = 16;
  h.num_classes = 2;
  lra::Writer w(path, h);
  std::mt19937_64 rng(seed);
  std::vector<std::uint8_t> t(h.seq_len);
  for (int i = 0; i < count; ++i) {
    for (auto& x : t) x = static_cast<std::uint8_t>(1 + rng() % 10);
    if (i % 2) t[rng() % t.size()] = 11;
    w.add(i % 2, h.seq_len, t.data());
  }
  w.close();
}

std::string image_data(std::uint32_t side) {
  const std::string dir = out_dir("image-" + std::to_string(side));
  write_image_task(dir + "/train.bin", side, 64, 1);
  write_image_task(dir + "/val.bin", side, 32, 2);
  return "lra:" + dir;
}

TEST(Model, Positions2dAreRowPlusColumn) {
  ModelConfig m = preset("encoder-tiny");
  m.vocab = 20;
  m.pos_2d = 4;
  m.positions = 17;
  torch::manual_seed(1);
  Transformer t(m, AttnOptions{});
  auto names = t->named_parameters();
  EXPECT_TRUE(names.contains("wpe_row.weight") && names.contains("wpe_col.weight") && names.contains("wpe_cls.weight"));
  EXPECT_FALSE(names.contains("wpe.weight"));
  torch::NoGradGuard ng;
  auto pos = t->positions(17, torch::kCPU);
  ASSERT_EQ(pos.size(0), 17);
  EXPECT_TRUE(torch::equal(pos[0], t->wpe_cls->weight[0]));
  // Token 1 + 4 r + c is pixel (r, c).
  EXPECT_TRUE(torch::allclose(pos[1 + 4 * 2 + 3], t->wpe_row->weight[2] + t->wpe_col->weight[3]));
  EXPECT_EQ(t->num_position_params(), (1 + 4 + 4) * m.width);
}

TEST(Training, Positions2dTrainAndCheckTheData) {
  const std::string d8 = image_data(8);
  auto base = [&](std::vector<std::string> more) {
    std::vector<std::string> a = {"--model", "encoder-tiny", "--task", "classify", "--data", d8, "--batch", "4",
                                  "--steps", "3", "--threads", "1", "--quiet", "--eval-batches", "2", "--eval-every", "0",
                                  "--log-every", "1"};
    a.insert(a.end(), more.begin(), more.end());
    return parse_args(a);
  };
  auto c = base({"--pos-2d", "auto", "--pool", "mean"});
  auto r = train(c);
  ASSERT_EQ(r.train_loss.size(), 3u);
  for (const auto& [s, l] : r.train_loss) EXPECT_TRUE(std::isfinite(l));
  EXPECT_EQ(parse_args({"--model", "encoder-tiny", "--pos-2d", "8"}).model.positions, 65);
  try {
    train(base({"--pos-2d", "16"}));
    ADD_FAILURE() << "a side other than the data's was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "--pos-2d: 16 but the images of --data are 8 x 8");
  }
  EXPECT_EQ(config_error({"--data", d8, "--pos-2d", "4"}).rfind("--pos-2d: 2-D positions are for the encoder", 0), 0u);
  EXPECT_EQ(config_error({"--data", d8, "--pos-2d", "0"}).rfind("--pos-2d: expected an image side", 0), 0u);
}

TEST(Model, InterpolatePositionsAlignsCorners) {
  auto t = torch::tensor({0.0f, 10.0f, 1.0f, 11.0f, 3.0f, 13.0f}).view({3, 2});  // H = 3, W = 2
  auto r = interpolate_positions(t, 5);
  ASSERT_EQ(r.sizes().vec(), (std::vector<std::int64_t>{5, 2}));
  // Source coordinate of output j: j * (3 - 1) / (5 - 1) = j / 2.
  auto want = torch::tensor({0.0f, 10.0f, 0.5f, 10.5f, 1.0f, 11.0f, 2.0f, 12.0f, 3.0f, 13.0f}).view({5, 2});
  EXPECT_TRUE(torch::allclose(r, want)) << r;
}

// Transfer as the Path-X recipe: train at 8 x 8, start 16 x 16 from it with
// the position grid interpolated and every other weight copied.
TEST(Training, InitFromInterpolatesThePositionGrid) {
  const std::string d8 = image_data(8), d16 = image_data(16), dir = out_dir("init-from");
  auto base = [&](const std::string& data, std::vector<std::string> more) {
    std::vector<std::string> a = {"--model", "encoder-tiny", "--task", "classify", "--data", data, "--batch", "4",
                                  "--pos-2d", "auto", "--threads", "1", "--quiet", "--eval-batches", "1",
                                  "--eval-every", "0"};
    a.insert(a.end(), more.begin(), more.end());
    return parse_args(a);
  };
  train(base(d8, {"--steps", "3", "--save", dir}));
  const std::string ckpt = dir + "/last.safetensors";
  ModelConfig m = preset("encoder-tiny");
  m.vocab = 20;
  m.num_classes = 2;
  m.pos_2d = 16;
  m.positions = 257;
  torch::manual_seed(9);
  Transformer t(m, AttnOptions{});
  init_from_checkpoint(ckpt, t);
  const auto f = safetensors::read(ckpt);
  auto saved = [&](const std::string& name) {
    const auto& e = f.at("model." + name);
    auto x = torch::empty(e.shape, torch::kFloat);
    std::memcpy(x.data_ptr(), f.data.data() + e.begin, e.end - e.begin);
    return x;
  };
  for (const auto& p : t->named_parameters()) {
    if (p.key() == "wpe_row.weight" || p.key() == "wpe_col.weight") {
      ASSERT_EQ(p.value().sizes().vec(), (std::vector<std::int64_t>{16, m.width})) << p.key();
      auto src = saved(p.key());
      ASSERT_EQ(src.size(0), 8);
      EXPECT_TRUE(torch::allclose(p.value()[0], src[0], 0, 1e-6)) << p.key();
      EXPECT_TRUE(torch::allclose(p.value()[15], src[7], 0, 1e-6)) << p.key();
      EXPECT_TRUE(torch::allclose(p.value(), interpolate_positions(src, 16))) << p.key();
    } else {
      EXPECT_TRUE(torch::equal(p.value(), saved(p.key()))) << p.key();
    }
  }
  // The four corners of the 16 x 16 grid carry the 8 x 8 grid's corners.
  auto big = t->positions(257, torch::kCPU).detach();
  const std::int64_t corners16[] = {1, 16, 241, 256}, corners8[] = {0, 7, 56, 63};
  auto row8 = saved("wpe_row.weight"), col8 = saved("wpe_col.weight");
  for (int i = 0; i < 4; ++i) {
    const std::int64_t p = corners8[i];
    EXPECT_TRUE(torch::allclose(big[corners16[i]], row8[p / 8] + col8[p % 8], 0, 1e-5)) << "corner " << i;
  }
  // Through the flags: two steps at 16 x 16 from the 8 x 8 checkpoint.
  auto r = train(base(d16, {"--steps", "2", "--init-from", ckpt}));
  EXPECT_EQ(r.first_step, 0);
  for (const auto& [s, l] : r.train_loss) EXPECT_TRUE(std::isfinite(l));
  // A checkpoint of another width is refused, naming the flag and the tensor.
  try {
    train(base(d16, {"--steps", "1", "--width", "32", "--init-from", ckpt}));
    ADD_FAILURE() << "another width was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("--init-from: model.", 0), 0u) << e.what();
  }
  EXPECT_EQ(config_error({"--data", d16, "--init-from", ckpt, "--resume", ckpt}).rfind("--init-from: starts", 0), 0u);
}

}  // namespace
}  // namespace fatrain
