"""What the GPU machine lacks, brought along: the wheels tokenmill's training path needs there (CPython 3.12,
x86-64 Linux), unpacked into bench/gpu/site, which the run puts first on PYTHONPATH. `make gpu-bundle`.

The machine has torch, transformers, peft, tokenizers, safetensors, numpy and pytest, and no network
(../shared/notes/gpu.md). Training needs pydantic (the configs) and, for QLoRA, bitsandbytes. bitsandbytes ships
one library per CUDA release (~20 MB each); only the machine's CUDA 13 builds and the CPU one are kept. The
working tree and the bundle travel together, 64 MiB at most: checked here, and refused above that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SITE = HERE / "site"
WHEELS = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "bitsandbytes"]
PLATFORMS = ["manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
KEEP_CUDA = ("cuda13",)  # the GPU machine's torch is built for CUDA 13
LIMIT = 64 * 2**20


def tree_bytes() -> int:
    """The working tree as the device tool carries it: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return sum((ROOT / p).stat().st_size for p in listed if p and (ROOT / p).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build() -> None:
    shutil.rmtree(SITE, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "--target", str(SITE), "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), *WHEELS]
    subprocess.run(command, check=True)
    for library in (SITE / "bitsandbytes").glob("libbitsandbytes_*.so"):
        if not (library.name.endswith("_cpu.so") or any(k in library.name for k in KEEP_CUDA)):
            library.unlink()
    shutil.rmtree(SITE / "bin", ignore_errors=True)


def main() -> int:
    build()
    tree, site = tree_bytes(), folder_bytes(SITE)
    print(f"[gpu-bundle] {SITE.relative_to(ROOT)}: {site / 2**20:.1f} MiB ({', '.join(WHEELS)}); working tree "
          f"{tree / 2**20:.1f} MiB; together {(tree + site) / 2**20:.1f} MiB of {LIMIT / 2**20:.0f}")
    if tree + site > LIMIT:
        print("[gpu-bundle] too large to carry: drop wheels or files from the tree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
