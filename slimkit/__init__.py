"""slimkit: make large language models small and fast, and serve them."""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed CPU, spinning makes the many
# small ops of generation and training far slower. Set here, before any slimkit module imports torch (it
# takes effect only if torch is not loaded yet); a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
