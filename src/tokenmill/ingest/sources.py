"""Turning the user's path specs (files, folders, globs, pkg://) into a sorted list of files."""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"pkg://{name}: no installed package named {name!r} (pip install it first)")
    return Path(list(spec.submodule_search_locations)[0])


def _expand(spec: str) -> tuple[Path, list[Path]]:
    """(base folder for relative ids, matching files) for one spec."""
    if spec.startswith("pkg://"):
        package, _, rest = spec[len("pkg://"):].partition("/")
        base = package_dir(package)
        spec = str(base / rest) if rest else str(base)
    path = Path(spec)
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        return path, [p for p in path.rglob("*") if p.is_file()]
    matches = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
    if not matches:
        raise FileNotFoundError(f"{spec}: no such file, folder or matching glob")
    base = Path(glob.escape(spec).split("*")[0].split("?")[0].split("[")[0])
    return (base if base.is_dir() else base.parent), matches


def resolve_inputs(specs: list[str], suffixes: tuple[str, ...]) -> list[tuple[Path, str]]:
    files: dict[Path, str] = {}
    for spec in specs:
        base, matches = _expand(spec)
        for f in matches:
            if f.name.endswith(suffixes):
                # Ids are relative to the spec's base so that they (and the seeded split) do not depend on
                # where the corpus lies on disk.
                files.setdefault(f.resolve(), str(f.resolve().relative_to(base.resolve())))
    if not files:
        raise FileNotFoundError(f"{specs}: no readable files (known types: {', '.join(suffixes)})")
    return sorted(files.items(), key=lambda item: item[1])
