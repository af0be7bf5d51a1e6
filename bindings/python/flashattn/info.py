"""python -m flashattn.info [--json]: how this flashattn package was built
(version, commit, CUDA backend and architectures, CUDA operators, the CPU
kernels picked here, compiler, torch). flashattn.build_info() returns the
same as a dict."""
import sys

from ._info import main

if __name__ == "__main__":
    sys.exit(main())
