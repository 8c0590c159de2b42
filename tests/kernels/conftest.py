"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

TRITON_INTERPRET must be set before triton.jit decorates the kernels, i.e. before
slimkit.kernels.triton_kernels is first imported; this conftest is imported before the test modules of
this folder. Only triton reads it; the kernels' automatic dispatch still picks "chunked" for CPU tensors.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
