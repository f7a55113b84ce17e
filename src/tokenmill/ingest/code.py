"""Source code files as documents, one file each, the programming language kept in `metadata["language"]`.

The language comes from the file extension (names as in GitHub Linguist, which The Stack uses), so a code
domain can be mixed in and filtered by language downstream. Ambiguous extensions (`.m`: MATLAB or
Objective-C; `.pl`: Perl or Prolog) are read as their common meaning; `.h` is counted as C.
"""

from __future__ import annotations

from pathlib import Path

LANGUAGES: dict[str, str] = {
    ".py": "Python", ".pyi": "Python", ".ipy": "Python",
    ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript", ".jsx": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript",
    ".java": "Java", ".kt": "Kotlin", ".kts": "Kotlin", ".scala": "Scala", ".groovy": "Groovy",
    ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".hpp": "C++", ".hh": "C++", ".hxx": "C++",
    ".cu": "Cuda", ".cs": "C#", ".go": "Go", ".rs": "Rust", ".swift": "Swift", ".m": "Objective-C",
    ".rb": "Ruby", ".php": "PHP", ".pl": "Perl", ".pm": "Perl", ".lua": "Lua", ".r": "R", ".jl": "Julia",
    ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell", ".ps1": "PowerShell",
    ".hs": "Haskell", ".ml": "OCaml", ".mli": "OCaml", ".fs": "F#", ".ex": "Elixir", ".exs": "Elixir",
    ".erl": "Erlang", ".clj": "Clojure", ".lisp": "Common Lisp", ".el": "Emacs Lisp", ".scm": "Scheme",
    ".dart": "Dart", ".zig": "Zig", ".nim": "Nim", ".f90": "Fortran", ".f": "Fortran", ".sql": "SQL",
    ".cmake": "CMake", ".mk": "Makefile",
}


def language_of(path: Path) -> str | None:
    return LANGUAGES.get(path.suffix.lower()) if path.suffix else None
