"""Peak memory of `tokenmill merge`: about two models, whatever the number of models it reads.

Averages K = 1, 2, 4 checkpoints of the SmolLM2-135M CPT run of bench/after_cpt.py (fp32, 538 MB each), and
interpolates with the start model, without evaluation sets (the merge alone), each in its own process; the
peak resident memory against the model's size on disk.

    .venv/bin/python bench/after_cpt.py      # first: the run and its checkpoints
    .venv/bin/python bench/merge_memory.py

Writes bench/results/merge_memory.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "after_cpt"


def peak_of(args: list[str]) -> float:
    """Peak resident memory (GiB) of one tokenmill command: a fresh parent runs it and reports its children's."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "tokenmill", *args], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 2**20  # KiB on Linux


def main() -> None:
    run = WORK / "run"
    model_gib = (run / "40_checkpoints" / "final" / "model.safetensors").stat().st_size / 2**30
    baseline = peak_of(["--help"])
    rows = {}
    for k in (1, 2, 4):
        rows[f"average K={k}"] = peak_of(["merge", str(run), "-o", str(WORK / f"mem-avg{k}"), "--method", "average",
                                          "--weights", str(k), "--force"])
    rows["interpolate"] = peak_of(["merge", str(run), "-o", str(WORK / "mem-interp"), "--method", "interpolate",
                                   "--start", str(WORK / "smollm2"), "--weights", "0.5", "--force"])
    result = {"model_gib": model_gib, "python_and_imports_gib": baseline,
              "peak_gib": rows, "peak_in_models": {k: v / model_gib for k, v in rows.items()}}
    (ROOT / "bench" / "results" / "merge_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, peak in rows.items():
        print(f"{name:<16} peak {peak:.2f} GiB = {peak / model_gib:.2f} models of {model_gib:.2f} GiB")


if __name__ == "__main__":
    main()
