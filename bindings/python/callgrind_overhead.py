"""Instructions per call of the operator's host path, counted with callgrind.

  python bindings/python/callgrind_overhead.py [--calls 1000] [--seqlen 0] [--only NAME ...]

Wall time on a shared 2-core VM scatters by more than most single changes
to the host path (docs/python.md), instruction counts do not: each loop
below runs in its own process under valgrind --tool=callgrind with
instrumentation off until the loop starts (client requests through a tiny C
helper compiled on the spot, hence cc and valgrind's headers), so torch's
import costs nothing, and the count covers exactly the timed calls. Prints
one JSON object: instructions per call of each loop (1 thread, CPU tensors
of batch 1, one head, head_dim 64, seqlen 0 by default: almost no kernel
work, so the count is the host path). Needs valgrind; a run takes about
30 s per loop.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

# name -> (setup, the call), both Python source run in the child.
LOOPS = {
    "torch_op": ("", "fwd(q, k, v, *args)"),
    "op_default": ("", "fwd_default(q, k, v, *args)"),
    "op_default_no_grad": ("torch.set_grad_enabled(False)", "fwd_default(q, k, v, *args)"),
    "op_boxed": ("h = torch._C._dispatch_find_schema_or_throw('flashattn::fwd', '')",
                 "torch._C._dispatch_call_boxed(h, q, k, v, *args)"),
    "op_requires_grad": ("q, k, v = (t.requires_grad_() for t in (q, k, v))", "fwd(q, k, v, *args)"),
    "flash_attn_func": ("", "flashattn.flash_attn_func(q, k, v)"),
    "flash_attn_func_causal": ("", "flashattn.flash_attn_func(q, k, v, causal=True)"),
    "flash_attn_func_requires_grad": ("q, k, v = (t.requires_grad_() for t in (q, k, v))",
                                      "flashattn.flash_attn_func(q, k, v)"),
    "allocations": ("", "torch.empty_like(q), torch.empty((1, 1, q.shape[1]))"),
    "aten_add": ("", "torch.ops.aten.add(q, k)"),
    "empty_loop": ("", "pass"),
}

HELPER = r"""
#include <valgrind/callgrind.h>
void flashattn_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void flashattn_cg_stop(void) { CALLGRIND_DUMP_STATS_AT("loop"); CALLGRIND_STOP_INSTRUMENTATION; }
"""

CHILD = r"""
import ctypes, sys, torch
torch.set_num_threads(1)
import flashattn
from flashattn._ops import pack_options
cg = ctypes.CDLL(sys.argv[1])
calls, seqlen = int(sys.argv[2]), int(sys.argv[3])
q, k, v = (torch.randn(1, seqlen, 1, 64) for _ in range(3))
args = pack_options()
fwd = torch.ops.flashattn.fwd
fwd_default = fwd.default
{setup}
def loop(n):
    for _ in range(n):
        {call}
loop(200)  # warm-up: first-call setup, caches, specialisation
cg.flashattn_cg_start()
loop(calls)
cg.flashattn_cg_stop()
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--seqlen", type=int, default=0)
    ap.add_argument("--only", nargs="+", choices=sorted(LOOPS), help="these loops only")
    args = ap.parse_args(argv)
    out = dict(calls=args.calls, seqlen=args.seqlen, instructions_per_call={})
    with tempfile.TemporaryDirectory() as tmp:
        helper = os.path.join(tmp, "cg.so")
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-x", "c", "-", "-o", helper], input=HELPER, text=True,
                       check=True)
        for name in args.only or LOOPS:
            setup, call = LOOPS[name]
            script = os.path.join(tmp, f"{name}.py")
            with open(script, "w") as f:
                f.write(CHILD.replace("{setup}", setup).replace("{call}", call))
            prefix = os.path.join(tmp, f"{name}.cg")
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
            subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={prefix}",
                            sys.executable, script, helper, str(args.calls), str(args.seqlen)],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # The dump triggered by the client request (".1"); its summary line counts the loop.
            with open(prefix + ".1") as f:
                total = next(int(line.split()[1]) for line in f if line.startswith("summary:"))
            out["instructions_per_call"][name] = round(total / args.calls)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
