"""Turning the user's path specs (files, folders, globs, pkg://) into a sorted list of files.

Inside a folder or glob, hidden files and folders (`.git`, `.cache`, `.DS_Store`) and version-control
folders are skipped; a file named explicitly is read whatever its name. A file reached by several specs
(or links) is read once.
"""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path
from typing import Callable

VCS_FOLDERS = {"CVS", "_darcs", "RCS"}  # the others (.git, .hg, .svn, .bzr) are hidden anyway


def _hidden(path: Path, base: Path) -> bool:
    parts = path.relative_to(base).parts if path.is_relative_to(base) else path.parts
    return any(part.startswith(".") or part in VCS_FOLDERS for part in parts)


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
        return path, [p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)]
    matches = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
    if not matches:
        raise FileNotFoundError(f"{spec}: no such file, folder or matching glob")
    base = Path(glob.escape(spec).split("*")[0].split("?")[0].split("[")[0])
    base = base if base.is_dir() else base.parent
    return base, [p for p in matches if not _hidden(p, base)]


def resolve_inputs(specs: list[str], readable: Callable[[str], bool], known: str) -> list[tuple[Path, str]]:
    """(file, id) for every file the specs name that `readable` accepts by name, sorted by id; `known`
    describes the readable types for the error when there are none."""
    files: dict[Path, str] = {}
    for spec in specs:
        base, matches = _expand(spec)
        for f in matches:
            if readable(f.name):
                # Ids are relative to the spec's base so that they (and the seeded split) do not depend on
                # where the corpus lies on disk; a linked file keeps its name in the folder, not its target's.
                files.setdefault(f.resolve(), str(f.absolute().relative_to(base.absolute())))
    if not files:
        raise FileNotFoundError(f"{specs}: no readable files (known types: {known})")
    return sorted(files.items(), key=lambda item: item[1])
