"""flashattn.build_info() and python -m flashattn.info: the build facts are
consistent with what the package reports elsewhere."""
import json
import os
import subprocess
import sys

import torch

import flashattn

CPU_ISAS = {"generic", "avx2", "avx512"}


def run_info(*args, env=None, tmp_path=None):
    # Outside the source tree, so that bindings/python/flashattn (no operator
    # library) cannot shadow the installed package.
    return subprocess.run([sys.executable, "-m", "flashattn.info", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=True).stdout


def test_build_info_consistent():
    info = flashattn.build_info()
    assert info["version"] == flashattn.__version__ == flashattn.library_version()
    assert info["commit"]
    assert info["cuda_operators"] == flashattn.built_with_cuda()
    # CUDA operators need the library's CUDA backend (and a CUDA torch).
    assert not info["cuda_operators"] or (info["cuda"] and info["torch_cuda"])
    assert bool(info["cuda_architectures"]) == info["cuda"]
    assert info["cpu_isa"] in CPU_ISAS
    assert info["cpu_isa_bf16"] in CPU_ISAS | {"amx"}
    assert info["torch_compiled"].split(".")[:2] == info["torch"].split("+")[0].split(".")[:2]
    assert (info["gpu"] is not None) == torch.cuda.is_available()


def test_info_module_prints_the_build(tmp_path):
    out = run_info(tmp_path=tmp_path)
    info = flashattn.build_info()
    assert out.startswith(f"flashattn {flashattn.__version__}\n")
    for name in ("commit", "CUDA backend", "CUDA operators", "CPU kernels", "build", "torch", "GPU"):
        assert f"\n  {name} " in out, out
    assert ("CUDA backend    on: architectures " in out) == info["cuda"], out
    assert f"CPU kernels     {info['cpu_isa']} (bf16: {info['cpu_isa_bf16']})" in out, out


def test_info_module_json_and_isa_cap(tmp_path):
    env = dict(os.environ, FLASHATTN_CPU_ISA="generic")
    info = json.loads(run_info("--json", env=env, tmp_path=tmp_path))
    assert info["cpu_isa"] == info["cpu_isa_bf16"] == "generic"
    assert info["version"] == flashattn.__version__
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_operators"], bool)
