"""The CUDA operators (skipped unless this build serves CUDA tensors and a
GPU is present): results against the float64 reference computed on the CPU,
the current-stream contract, and torch.compile."""
import pytest
import torch

import flashattn
from conftest import assert_close, grads_of, rand_qkv, sdpa_reference, visible

pytestmark = [
    pytest.mark.skipif(not (flashattn.built_with_cuda() and torch.cuda.is_available()),
                       reason="this build has no CUDA operators, or no GPU is present"),
    pytest.mark.filterwarnings("ignore:Dropout mask should only be used for testing"),
]


def on_gpu(*ts):
    return [t.detach().cuda().requires_grad_() for t in ts]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_dense_against_reference(dtype, causal, dropout_p):
    b, sq, sk, hq, hk, d = 2, 100, 130, 4, 2, 64
    q, k, v = rand_qkv(b, sq, sk, hq, hk, d, dtype, seed=1)
    qc, kc, vc = on_gpu(q, k, v)
    seed = 1234
    out = flashattn.flash_attn_func(qc, kc, vc, dropout_p=dropout_p, causal=causal, seed=seed)
    keep = None
    if dropout_p:
        keep = torch.stack([torch.stack([flashattn.dropout_mask(seed, 0, dropout_p, bi, hq, h, sq, sk)
                                         for h in range(hq)]) for bi in range(b)])
    ref = sdpa_reference(q, k, v, visible(sq, sk, causal=causal), dropout_p=dropout_p, keep=keep)
    atol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    assert_close(out.cpu(), ref, atol, "out")
    dout = torch.randn(out.shape, dtype=torch.float64)
    for name, g, w in zip("qkv", grads_of(out, (qc, kc, vc), dout.to(dtype).cuda()), grads_of(ref, (q, k, v), dout)):
        assert_close(g.cpu(), w, 5 * atol, "d" + name)


def test_varlen_and_block_sparse_match_cpu():
    lens = [37, 0, 64]
    cu = torch.tensor([0, 37, 37, 101], dtype=torch.int32)
    q = torch.randn(101, 4, 64, dtype=torch.float16)
    k = torch.randn(101, 2, 64, dtype=torch.float16)
    v = torch.randn(101, 2, 64, dtype=torch.float16)
    cpu = flashattn.flash_attn_varlen_func(q.float(), k.float(), v.float(), cu, cu, 64, 64, causal=True)
    gpu = flashattn.flash_attn_varlen_func(q.cuda(), k.cuda(), v.cuda(), cu.cuda(), cu.cuda(), 64, 64, causal=True)
    assert_close(gpu.cpu(), cpu, 4e-3, "varlen out")
    # CUDA block masks come in the kernels' tile size (128 x 128).
    qd, kd, vd = (torch.randn(1, 256, h, 64, dtype=torch.float16) for h in (4, 2, 2))
    cnt = torch.tensor([[[1, 1]]], dtype=torch.int32)  # query block 1: key block 1 partial, 0 full
    idx = torch.tensor([[[[0, 0], [1, 0]]]], dtype=torch.int32)
    fcnt = torch.tensor([[[0, 1]]], dtype=torch.int32)
    fidx = torch.tensor([[[[0, 0], [0, 0]]]], dtype=torch.int32)
    args = dict(block_size=128, causal=True)
    cpu = flashattn.flash_attn_block_sparse_func(qd.float(), kd.float(), vd.float(), cnt, idx, fcnt, fidx, **args)
    gpu = flashattn.flash_attn_block_sparse_func(qd.cuda(), kd.cuda(), vd.cuda(), cnt.cuda(), idx.cuda(),
                                                 fcnt.cuda(), fidx.cuda(), **args)
    assert_close(gpu.cpu(), cpu, 4e-3, "block-sparse out")


def test_runs_on_the_current_stream():
    q, k, v = (torch.randn(4, 512, 8, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    ref = flashattn.flash_attn_func(q, k, v, causal=True)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        # No synchronisation in between: correct only if the kernels are
        # ordered on s, after the producers of q, k, v on s.
        q2 = q * 1.0
        out = flashattn.flash_attn_func(q2, k, v, causal=True)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(out, ref)


def test_compile_fullgraph_cuda():
    q, k, v = (torch.randn(2, 128, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    f = torch.compile(lambda q, k, v: flashattn.flash_attn_func(q, k, v, causal=True) * 2.0, fullgraph=True)
    out = f(q, k, v)
    ref = flashattn.flash_attn_func(q, k, v, causal=True) * 2.0
    assert_close(out, ref, 1e-2, "compiled out")
    g = torch.autograd.grad(out.float().sum(), (q, k, v))
    g_ref = torch.autograd.grad(ref.float().sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        assert_close(a, b, 5e-2, "compiled grad")
