"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported, and transformers imports it (through its
attention-mask utilities) for any test module that imports the scorer, in whichever folder is collected
first: so it is set here, before any test module of the suite is imported. Only triton reads it; the
kernels' automatic dispatch still picks "chunked" for CPU tensors.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
