// Bad input of every class is rejected with flashattn::Error, through
// forward() and backward() and for both algorithms, with a message that
// names the argument and says what was expected and what was given; and a
// rejected call writes nothing.
#include <climits>

#include "test_util.h"

namespace fa_test {
namespace {

using flashattn::BackwardArgs;
using flashattn::ForwardArgs;
using flashattn::Options;

// Everything one call reads, so that a case can break any part of it.
struct Call {
  Tensor q, k, v, o, dout, dq, dk, dv;
  float* lse = nullptr;
  Options options;
  Context ctx;
  ForwardArgs fwd() const {
    ForwardArgs a;
    a.q = q, a.k = k, a.v = v, a.o = o, a.lse = lse, a.options = options;
    return a;
  }
  BackwardArgs bwd() const {
    BackwardArgs a;
    a.q = q, a.k = k, a.v = v, a.o = o, a.dout = dout, a.lse = lse, a.dq = dq, a.dk = dk, a.dv = dv;
    a.options = options;
    return a;
  }
};

enum Which { kForward = 1, kBackward = 2, kBoth = 3 };

class Validation : public ::testing::Test {
 protected:
  // A valid problem: batch 2, sq 5, sk 6, heads 4 / 2 (GQA), head_dim 8.
  static constexpr std::int64_t B = 2, SQ = 5, SK = 6, HQ = 4, HK = 2, D = 8;
  Problem p{DType::f32, B, SQ, SK, HQ, HK, D};
  HostBuffer scratch{DType::f64, 1 << 16};  // room for views of other shapes
  std::int32_t cu_q[4] = {0, 2, 4, 5}, cu_k[4] = {0, 3, 3, 6};
  Varlen varlen;
  // Block mask for (sq 5, sk 6) with blocks 2 x 4: 3 x 2 blocks, [B, HQ] rows.
  std::vector<std::int32_t> count, indices, full_count, full_indices;
  BlockMask block_mask;

  void SetUp() override {
    FA_SEEDED(seed);
    p.randomize(seed);
    varlen.cu_seqlens_q = cu_q;
    varlen.cu_seqlens_k = cu_k;
    varlen.batch = 3;
    varlen.max_seqlen_q = 2;
    varlen.max_seqlen_k = 3;
    const std::int64_t rows = B * HQ * 3;
    count.assign(rows, 1);
    indices.assign(rows * 2, 0);
    full_count.assign(rows, 1);
    full_indices.assign(rows * 2, 1);
    block_mask.block_q = 2;
    block_mask.block_k = 4;
    block_mask.batch = B;
    block_mask.heads = HQ;
    block_mask.num_q_blocks = 3;
    block_mask.num_k_blocks = 2;
    block_mask.kv_count = count.data();
    block_mask.kv_indices = indices.data();
    block_mask.full_kv_count = full_count.data();
    block_mask.full_kv_indices = full_indices.data();
  }

  Call base() {
    Call c;
    c.q = p.q.t, c.k = p.k.t, c.v = p.v.t, c.o = p.o.t, c.dout = p.dout.t;
    c.dq = p.dq.t, c.dk = p.dk.t, c.dv = p.dv.t;
    c.lse = p.lse.data();
    return c;
  }

  // A contiguous view into the scratch buffer (its contents are never read
  // by a rejected call).
  Tensor view(DType dt, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
    EXPECT_LE(b * s * h * d * 8, scratch.size() * 8);
    return Tensor::contiguous(scratch.data(), dt, b, s, h, d);
  }

  // The call `mutate` produces must be rejected by forward and/or backward,
  // with both algorithms, with an Error naming `arg`.
  void expect_rejected(const std::function<void(Call&)>& mutate, const std::string& arg, Which which = kBoth) {
    for (const Algorithm algo : {Algorithm::flash, Algorithm::standard}) {
      for (const Which w : {kForward, kBackward}) {
        if (!(which & w)) continue;
        SCOPED_TRACE(::testing::Message() << (w == kForward ? "forward" : "backward") << " / " << name(algo)
                                          << ", expecting an error about " << arg);
        p.poison_outputs();
        Call c = base();
        c.ctx.algorithm = algo;
        mutate(c);
        try {
          if (w == kForward)
            flashattn::forward(c.fwd(), c.ctx);
          else
            flashattn::backward(c.bwd(), c.ctx);
          ADD_FAILURE() << "no error thrown";
        } catch (const flashattn::Error& e) {
          const std::string msg = e.what();
          EXPECT_NE(msg.find(arg), std::string::npos) << "message does not name the argument: " << msg;
          EXPECT_NE(msg.find("expected"), std::string::npos) << "message lacks the expected value: " << msg;
          EXPECT_NE(msg.find("got"), std::string::npos) << "message lacks the actual value: " << msg;
        } catch (const std::exception& e) {
          ADD_FAILURE() << "not a flashattn::Error: " << e.what();
        }
        // A rejected call writes nothing.
        for (const auto* buf : {&p.o.buf, &p.dq.buf, &p.dk.buf, &p.dv.buf})
          for (std::int64_t i = 0; i < buf->size(); ++i)
            if (!std::isnan(buf->get(i))) {
              ADD_FAILURE() << "an output was written by a rejected call";
              return;
            }
        for (float x : p.lse) ASSERT_TRUE(std::isnan(x)) << "lse written by a rejected call";
      }
    }
  }
};

// The base problem itself is accepted (otherwise every case below would pass
// for the wrong reason).
TEST_F(Validation, BaseProblemIsAccepted) {
  for (const Algorithm algo : {Algorithm::standard, Algorithm::flash}) {
    SCOPED_TRACE(name(algo));
    Call c = base();
    c.ctx.algorithm = algo;
    EXPECT_NO_THROW(flashattn::forward(c.fwd(), c.ctx));
    EXPECT_NO_THROW(flashattn::backward(c.bwd(), c.ctx));
    c.options.varlen = &varlen;
    c.q.batch = c.k.batch = c.v.batch = c.o.batch = c.dout.batch = c.dq.batch = c.dk.batch = c.dv.batch = 1;
    EXPECT_NO_THROW(flashattn::forward(c.fwd(), c.ctx)) << "varlen";
    c = base();
    c.ctx.algorithm = algo;
    c.options.block_mask = &block_mask;
    EXPECT_NO_THROW(flashattn::forward(c.fwd(), c.ctx)) << "block mask";
    EXPECT_NO_THROW(flashattn::backward(c.bwd(), c.ctx)) << "block mask";
  }
}

TEST_F(Validation, MismatchedShapes) {
  expect_rejected([&](Call& c) { c.v = view(DType::f32, B, SK + 1, HK, D); }, "v shape");
  expect_rejected([&](Call& c) { c.o = view(DType::f32, B, SQ + 1, HQ, D); }, "o shape");
  expect_rejected([&](Call& c) { c.o = view(DType::f32, B, SQ, HQ, D / 2); }, "o shape");
  expect_rejected(
      [&](Call& c) {
        c.k = view(DType::f32, 1, SK, HK, D);
        c.v = c.k;
      },
      "k.batch");
  expect_rejected(
      [&](Call& c) {
        c.k = view(DType::f32, B, SK, HK, D / 2);
        c.v = c.k;
      },
      "k.head_dim");
  expect_rejected([&](Call& c) { c.dout = view(DType::f32, B, SQ - 1, HQ, D); }, "dout shape", kBackward);
  expect_rejected([&](Call& c) { c.dq = view(DType::f32, B, SQ, HQ, D / 2); }, "dq shape", kBackward);
  expect_rejected([&](Call& c) { c.dk = view(DType::f32, B, SK, HK + 1, D); }, "dk shape", kBackward);
  expect_rejected([&](Call& c) { c.dv = view(DType::f32, B, SK - 1, HK, D); }, "dv shape", kBackward);
}

TEST_F(Validation, BadSizes) {
  expect_rejected([&](Call& c) { c.q.seqlen = -1; }, "q shape");
  expect_rejected([&](Call& c) { c.k.heads = 0; }, "k.heads");
  expect_rejected([&](Call& c) { c.q.head_dim = 0; }, "q.head_dim");
  expect_rejected([&](Call& c) { c.q.seqlen = std::int64_t{1} << 31; }, "q shape");
}

TEST_F(Validation, HeadsNotMultipleOfKvHeads) {
  expect_rejected(
      [&](Call& c) {
        c.q = view(DType::f32, B, SQ, 3, D);
        c.o = c.q;
        c.dout = c.q;
        c.dq = c.q;
      },
      "q.heads");
}

TEST_F(Validation, DtypeMismatchAndUnsupported) {
  expect_rejected([&](Call& c) { c.k.dtype = DType::f16; }, "k.dtype");
  expect_rejected([&](Call& c) { c.v.dtype = DType::bf16; }, "v.dtype");
  expect_rejected([&](Call& c) { c.o.dtype = DType::f16; }, "o.dtype");
  expect_rejected([&](Call& c) { c.dk.dtype = DType::f16; }, "dk.dtype", kBackward);
  expect_rejected([&](Call& c) { c.q.dtype = c.k.dtype = c.v.dtype = c.o.dtype = static_cast<DType>(7); }, "q.dtype");
  // f64 runs only through the standard algorithm.
  Call c = base();
  HostBuffer big(DType::f64, 4 * B * SK * HQ * D);
  c.q = Tensor::contiguous(big.data(), DType::f64, B, SQ, HQ, D);
  c.o = c.dout = c.dq = c.q;
  c.k = Tensor::contiguous(big.data(), DType::f64, B, SK, HK, D);
  c.v = c.dk = c.dv = c.k;
  c.ctx.algorithm = Algorithm::flash;
  try {
    flashattn::forward(c.fwd(), c.ctx);
    ADD_FAILURE() << "f64 accepted by the flash algorithm";
  } catch (const flashattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("dtype"), std::string::npos) << e.what();
  }
}

TEST_F(Validation, UnsupportedHeadDim) {
  for (const std::int64_t d : {257, 300}) {
    expect_rejected(
        [&](Call& c) {
          c.q = view(DType::f32, 1, 2, 1, d);
          c.k = c.v = c.o = c.dout = c.dq = c.dk = c.dv = c.q;
        },
        "head_dim");
  }
}

TEST_F(Validation, CudaDeviceWithoutCuda) {
#if defined(FLASHATTN_HAS_CUDA)
  GTEST_SKIP() << "this build has the CUDA backend";
#else
  // f16 / head_dim 64 passes every CUDA-side check, so the error must come
  // from the missing backend.
  expect_rejected(
      [&](Call& c) {
        c.q = view(DType::f16, 1, 2, 1, 64);
        c.k = c.v = c.o = c.dout = c.dq = c.dk = c.dv = c.q;
        c.ctx.device = Device::cuda;
      },
      "ctx.device");
  Call c = base();
  c.q = view(DType::f16, 1, 2, 1, 64);
  c.k = c.v = c.o = c.q;
  c.ctx.device = Device::cuda;
  EXPECT_THROW(flashattn::forward_workspace_bytes(c.fwd(), c.ctx), flashattn::Error);
#endif
}

TEST_F(Validation, BadContext) {
  expect_rejected([&](Call& c) { c.ctx.num_threads = -1; }, "ctx.num_threads");
  expect_rejected([&](Call& c) { c.ctx.workspace_bytes = 1024; }, "ctx.workspace");
  expect_rejected([&](Call& c) { c.ctx.device = static_cast<Device>(9); }, "ctx.device");
  // expect_rejected sets the algorithm first; this case overrides it.
  expect_rejected([&](Call& c) { c.ctx.algorithm = static_cast<Algorithm>(5); }, "ctx.algorithm");
}

TEST_F(Validation, BadStrides) {
  expect_rejected([&](Call& c) { c.q.stride_head = D - 1; }, "q.stride_head");
  expect_rejected([&](Call& c) { c.k.stride_head = 1; }, "k.stride_head");
  expect_rejected([&](Call& c) { c.o.stride_head = D / 2; }, "o.stride_head");
  expect_rejected([&](Call& c) { c.dout.stride_head = D - 2; }, "dout.stride_head", kBackward);
  expect_rejected([&](Call& c) { c.v.stride_seq = -8; }, "v strides");
}

TEST_F(Validation, NullPointers) {
  expect_rejected([&](Call& c) { c.q.data = nullptr; }, "q.data");
  expect_rejected([&](Call& c) { c.k.data = nullptr; }, "k.data");
  expect_rejected([&](Call& c) { c.v.data = nullptr; }, "v.data");
  expect_rejected([&](Call& c) { c.o.data = nullptr; }, "o.data");
  expect_rejected([&](Call& c) { c.dout.data = nullptr; }, "dout.data", kBackward);
  expect_rejected([&](Call& c) { c.dq.data = nullptr; }, "dq.data", kBackward);
  expect_rejected([&](Call& c) { c.dk.data = nullptr; }, "dk.data", kBackward);
  expect_rejected([&](Call& c) { c.dv.data = nullptr; }, "dv.data", kBackward);
  expect_rejected([&](Call& c) { c.lse = nullptr; }, "lse", kBackward);
}

TEST_F(Validation, MisalignedPointers) {
  auto shift = [](void* p, int bytes) { return static_cast<void*>(static_cast<char*>(p) + bytes); };
  expect_rejected([&](Call& c) { c.q.data = shift(c.q.data, 1); }, "q.data");
  expect_rejected([&](Call& c) { c.v.data = shift(c.v.data, 2); }, "v.data");
  expect_rejected([&](Call& c) { c.dk.data = shift(c.dk.data, 3); }, "dk.data", kBackward);
  expect_rejected([&](Call& c) { c.lse = reinterpret_cast<float*>(shift(c.lse, 2)); }, "lse");
  expect_rejected(
      [&](Call& c) {
        c.q = view(DType::f16, B, SQ, HQ, D);
        c.q.data = shift(c.q.data, 1);
        c.k = view(DType::f16, B, SK, HK, D);
        c.v = c.k;
        c.o = view(DType::f16, B, SQ, HQ, D);
        c.dout = c.dq = c.o;
        c.dk = c.dv = c.k;
      },
      "q.data");
}

TEST_F(Validation, OffsetsOverflowInt64) {
  expect_rejected([&](Call& c) { c.q.stride_batch = INT64_MAX / 2 + 1; }, "q: expected");
  expect_rejected([&](Call& c) { c.k.stride_seq = INT64_MAX / 4; }, "k: expected");
  // Element offsets fit but byte offsets do not (f32: 4 bytes each).
  expect_rejected([&](Call& c) { c.o.stride_batch = INT64_MAX / 3; }, "o: expected");
}

// Sizes each within the per-dimension limits whose element count wraps
// around 2^64 (2^30 * 2^26 * 1 * 256 = 2^64): the extent check must not be
// fooled into seeing an empty tensor. Asked through the workspace queries,
// which validate exactly like forward / backward but compute nothing, so a
// validation hole fails here instead of crashing the test process.
TEST_F(Validation, ElementCountOverflowIsNotEmpty) {
  Call c = base();
  c.q = Tensor::contiguous(nullptr, DType::f32, std::int64_t{1} << 30, std::int64_t{1} << 26, 1, 256);
  c.o = c.dout = c.dq = c.q;
  c.k = Tensor::contiguous(scratch.data(), DType::f32, std::int64_t{1} << 30, 1, 1, 256);
  c.v = c.dk = c.dv = c.k;
  for (const Algorithm algo : {Algorithm::flash, Algorithm::standard}) {
    SCOPED_TRACE(name(algo));
    c.ctx.algorithm = algo;
    EXPECT_THROW(flashattn::forward_workspace_bytes(c.fwd(), c.ctx), flashattn::Error);
    EXPECT_THROW(flashattn::backward_workspace_bytes(c.bwd(), c.ctx), flashattn::Error);
  }
}

TEST_F(Validation, BadCuSeqlens) {
  auto use_varlen = [&](Call& c) {
    c.options.varlen = &varlen;
    for (Tensor* t : {&c.q, &c.k, &c.v, &c.o, &c.dout, &c.dq, &c.dk, &c.dv}) t->batch = 1;
  };
  expect_rejected([&](Call& c) { c.options.varlen = &varlen; }, "q.batch");  // tensors must be (1, total, ...)
  std::int32_t cq[4], ck[4];
  auto with = [&](std::initializer_list<std::int32_t> q, std::initializer_list<std::int32_t> k) {
    std::copy(q.begin(), q.end(), cq);
    std::copy(k.begin(), k.end(), ck);
    return [&](Call& c) {
      use_varlen(c);
      varlen.cu_seqlens_q = cq;
      varlen.cu_seqlens_k = ck;
    };
  };
  expect_rejected(with({1, 2, 4, 5}, {0, 3, 3, 6}), "varlen.cu_seqlens_q[0]");
  expect_rejected(with({0, 2, 4, 5}, {2, 3, 3, 6}), "varlen.cu_seqlens_k[0]");
  expect_rejected(with({0, 2, 1, 3}, {0, 3, 3, 6}), "varlen.cu_seqlens_q");         // decreasing
  expect_rejected(with({0, 2, 4, 5}, {0, 3, 2, 5}), "varlen.cu_seqlens_k");         // decreasing
  expect_rejected(with({0, 2, 4, 6}, {0, 3, 3, 6}), "varlen.cu_seqlens_q[batch]");  // past total_q = 5
  expect_rejected(with({0, 2, 4, 5}, {0, 3, 4, 7}), "varlen.cu_seqlens_k[batch]");  // past total_k = 6
  expect_rejected(with({0, 3, 4, 5}, {0, 3, 3, 6}), "varlen.cu_seqlens_q");         // length 3 > max_seqlen_q
  varlen.cu_seqlens_q = cu_q;
  varlen.cu_seqlens_k = cu_k;
  expect_rejected(
      [&](Call& c) {
        use_varlen(c);
        varlen.cu_seqlens_k = nullptr;
      },
      "varlen.cu_seqlens_k");
  varlen.cu_seqlens_k = cu_k;
  expect_rejected(
      [&](Call& c) {
        use_varlen(c);
        varlen.max_seqlen_q = SQ + 1;
      },
      "varlen.max_seqlen_q");
  varlen.max_seqlen_q = 2;
  expect_rejected(
      [&](Call& c) {
        use_varlen(c);
        varlen.max_seqlen_k = -1;
      },
      "varlen.max_seqlen_k");
  varlen.max_seqlen_k = 3;
  expect_rejected(
      [&](Call& c) {
        use_varlen(c);
        varlen.batch = -2;
      },
      "varlen.batch");
}

TEST_F(Validation, BadDropout) {
  for (const float pd :
       {-0.1f, 1.0f, 1.5f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(::testing::Message() << "dropout_p " << pd);
    expect_rejected([&](Call& c) { c.options.dropout_p = pd; }, "options.dropout_p");
  }
}

TEST_F(Validation, InconsistentWindow) {
  expect_rejected(
      [&](Call& c) {
        c.options.causal = true;
        c.options.window_right = 2;
      },
      "options.window_right");
  expect_rejected([&](Call& c) { c.options.window_left = -2; }, "options.window_left");
  expect_rejected([&](Call& c) { c.options.window_right = -5; }, "options.window_right");
}

TEST_F(Validation, BadSoftmaxScale) {
  for (const float s : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(::testing::Message() << "softmax_scale " << s);
    expect_rejected([&](Call& c) { c.options.softmax_scale = s; }, "options.softmax_scale");
  }
}

TEST_F(Validation, BadBlockMaskShape) {
  auto with_mask = [&](std::function<void(BlockMask&)> f) {
    return [this, f](Call& c) {
      f(block_mask);
      c.options.block_mask = &block_mask;
    };
  };
  const BlockMask good = block_mask;
  auto check = [&](std::function<void(BlockMask&)> f, const char* arg) {
    block_mask = good;
    expect_rejected(with_mask(f), arg);
  };
  check([](BlockMask& m) { m.block_q = 0; }, "block_mask.block_q");
  check([](BlockMask& m) { m.block_k = -4; }, "block_mask.block_k");
  check([](BlockMask& m) { m.batch = 3; }, "block_mask.batch");
  check([](BlockMask& m) { m.heads = 2; }, "block_mask.heads");
  check([](BlockMask& m) { m.num_q_blocks = 2; }, "block_mask.num_q_blocks");
  check([](BlockMask& m) { m.num_k_blocks = 3; }, "block_mask.num_k_blocks");
  check([](BlockMask& m) { m.block_k = 2; }, "block_mask.num_k_blocks");  // ceil(6 / 2) = 3 != 2
  // A block near 2^63 holds the whole sequence: one block, not an overflow.
  check([](BlockMask& m) { m.block_q = INT64_MAX - 2; }, "ceil(seqlen_q / block_q) = 1, got 3");
  check([](BlockMask& m) { m.kv_count = nullptr; }, "block_mask.kv_count");
  check([](BlockMask& m) { m.kv_indices = nullptr; }, "block_mask.kv_indices");
  check([](BlockMask& m) { m.full_kv_indices = nullptr; }, "block_mask.full_kv_count");
  block_mask = good;
}

TEST_F(Validation, BadBlockMaskContents) {
  auto use_mask = [&](Call& c) { c.options.block_mask = &block_mask; };
  const auto count0 = count, indices0 = indices, full_count0 = full_count, full_indices0 = full_indices;
  auto reset = [&] {
    count = count0, indices = indices0, full_count = full_count0, full_indices = full_indices0;
    block_mask.kv_count = count.data();
    block_mask.kv_indices = indices.data();
    block_mask.full_kv_count = full_count.data();
    block_mask.full_kv_indices = full_indices.data();
  };
  const std::int64_t last_row = B * HQ * 3 - 1;
  reset();
  count[last_row] = 3;  // > num_k_blocks = 2
  expect_rejected(use_mask, "block_mask.kv_count");
  reset();
  count[4] = -1;
  expect_rejected(use_mask, "block_mask.kv_count");
  reset();
  full_count[2] = 5;
  expect_rejected(use_mask, "block_mask.full_kv_count");
  reset();
  indices[last_row * 2] = 2;  // key block out of range
  expect_rejected(use_mask, "block_mask.kv_indices");
  reset();
  indices[6] = -1;
  expect_rejected(use_mask, "block_mask.kv_indices");
  reset();
  full_indices[0] = 7;
  expect_rejected(use_mask, "block_mask.full_kv_indices");
  reset();
  // The same block twice in the partial list.
  full_count[5] = 0;
  count[5] = 2;
  indices[10] = 1, indices[11] = 1;
  expect_rejected(use_mask, "block_mask.kv_indices");
  reset();
  // The same block in the partial and the full list.
  full_indices[3 * 2] = 0;  // row 3: partial {0}, full {0}
  expect_rejected(use_mask, "block_mask.full_kv_indices");
  reset();
}

TEST_F(Validation, WorkspaceQueriesValidateToo) {
  Call c = base();
  c.options.dropout_p = 2.0f;
  EXPECT_THROW(flashattn::forward_workspace_bytes(c.fwd(), c.ctx), flashattn::Error);
  EXPECT_THROW(flashattn::backward_workspace_bytes(c.bwd(), c.ctx), flashattn::Error);
  c = base();
  c.lse = nullptr;
  EXPECT_THROW(flashattn::backward_workspace_bytes(c.bwd(), c.ctx), flashattn::Error);
  EXPECT_NO_THROW(flashattn::forward_workspace_bytes(base().fwd(), c.ctx));
}

TEST_F(Validation, ReferenceValidatesToo) {
  Call c = base();
  c.options.window_left = -3;
  EXPECT_THROW(flashattn::reference::forward(c.fwd()), flashattn::Error);
  EXPECT_THROW(flashattn::reference::backward(c.bwd()), flashattn::Error);
}

TEST(DropoutMaskValidation, BadArguments) {
  std::vector<std::uint8_t> keep(64);
  auto expect_arg = [](const std::function<void()>& f, const std::string& arg) {
    try {
      f();
      ADD_FAILURE() << "no error for " << arg;
    } catch (const flashattn::Error& e) {
      EXPECT_NE(std::string(e.what()).find(arg), std::string::npos) << e.what();
    }
  };
  expect_arg([&] { flashattn::dropout_mask(1, 0, 1.0f, 0, 2, 0, 8, 8, keep.data()); }, "dropout_p");
  expect_arg([&] { flashattn::dropout_mask(1, 0, std::nanf(""), 0, 2, 0, 8, 8, keep.data()); }, "dropout_p");
  expect_arg([&] { flashattn::dropout_mask(1, 0, 0.5f, 0, 2, 2, 8, 8, keep.data()); }, "head");
  expect_arg([&] { flashattn::dropout_mask(1, 0, 0.5f, 0, 0, 0, 8, 8, keep.data()); }, "heads_q");
  expect_arg([&] { flashattn::dropout_mask(1, 0, 0.5f, -1, 2, 0, 8, 8, keep.data()); }, "batch");
  // batch * heads_q past 2^32, and past 2^63 (no wrap-around into range).
  expect_arg([&] { flashattn::dropout_mask(1, 0, 0.5f, 1ll << 31, 2, 0, 8, 8, keep.data()); }, "batch");
  expect_arg([&] { flashattn::dropout_mask(1, 0, 0.5f, 1ll << 62, 4, 0, 8, 8, keep.data()); }, "batch");
  expect_arg([&] { flashattn::dropout_mask(1, 0, 0.5f, 0, 2, 0, -1, 8, keep.data()); }, "rows");
  expect_arg([&] { flashattn::dropout_mask(1, 0, 0.5f, 0, 2, 0, 8, 8, nullptr); }, "keep");
}

}  // namespace
}  // namespace fa_test
