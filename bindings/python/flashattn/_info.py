"""How this flashattn package was built, and what it uses here: the code
behind `python -m flashattn.info [--json]` (flashattn/info.py) and
flashattn.build_info().

It reports the version, the git commit compiled, whether the library has
its CUDA backend (for which architectures, from which nvcc), whether the
operators serve CUDA tensors (that needs a CUDA torch as well), the CPU
kernels the library picks on this machine (FLASHATTN_CPU_ISA caps them),
the build type and compiler, and the torch it was compiled against and
runs with.
"""
import argparse
import json
import os

import torch

from ._ops import ops

_FLAGS = ("commit_modified", "cuda", "cuda_operators")


def build_info():
    """A dict: version, commit, commit_modified, cuda, cuda_architectures,
    cuda_compiler, cuda_operators, cpu_isa, cpu_isa_bf16, build_type,
    compiler, torch_compiled (from the operator library; flags as bools),
    and torch, torch_cuda, gpu (this process: torch.__version__,
    torch.version.cuda, the current CUDA device's name and compute
    capability or None)."""
    keys, values = ops.build_info()
    info = dict(zip(keys, values))
    for key in _FLAGS:
        info[key] = info[key] == "1"
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["gpu"] = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        info["gpu"] = f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    return info


def _describe(info):
    commit = info["commit"] + (" (tracked files modified)" if info["commit_modified"] else "")
    if info["cuda"]:
        cuda = f"on: architectures {info['cuda_architectures']}, {info['cuda_compiler']}"
    else:
        cuda = "off (CPU-only library)"
    if info["cuda_operators"]:
        ops_cuda = "on"
    elif not info["cuda"]:
        ops_cuda = "off (the library has no CUDA backend)"
    else:
        ops_cuda = "off (torch was built without CUDA)"
    cap = os.environ.get("FLASHATTN_CPU_ISA")
    cpu = f"{info['cpu_isa']} (bf16: {info['cpu_isa_bf16']})"
    if cap:
        cpu += f", capped by FLASHATTN_CPU_ISA={cap}"
    torch_line = f"{info['torch']} (compiled against {info['torch_compiled']}), CUDA {info['torch_cuda'] or 'none'}"
    rows = [("commit", commit), ("CUDA backend", cuda), ("CUDA operators", ops_cuda), ("CPU kernels", cpu),
            ("build", f"{info['build_type']}, {info['compiler']}"), ("torch", torch_line),
            ("GPU", info["gpu"] or "none visible")]
    return "\n".join([f"flashattn {info['version']}"] + [f"  {name:<15} {value}" for name, value in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m flashattn.info",
                                     description="How this flashattn package was built.")
    parser.add_argument("--json", action="store_true", help="print build_info() as JSON")
    args = parser.parse_args(argv)
    info = build_info()
    print(json.dumps(info, indent=2) if args.json else _describe(info))
    return 0
