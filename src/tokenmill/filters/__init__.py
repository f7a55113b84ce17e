"""Filter: the configured filters as a datatrove pipeline; every drop counted by filter and reason.

    tokenmill filter runs/x/00_raw -o runs/x/10_filtered [--executor local|slurm|ray] [--set filter.executor.workers=8]

Pipeline: reader → tally(in) → filter 1 … filter n → tally(out) → writer. Dropped documents go to
`dropped/<filter>/` (metadata.filter_reason says why) so a person can look at what was removed.
Adding a filter: a module with a config class whose `block()` returns a datatrove step (or that is
callable, doc → Document | Drop), and one entry in FILTER_TYPES.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from tokenmill import engine
from tokenmill.filters.bad_words import BadWordsFilter
from tokenmill.filters.base import as_block
from tokenmill.filters.classifiers import FastTextScoreFilter, ModelScoreFilter, score_histogram
from tokenmill.filters.datatrove_blocks import C4Filter, FineWebFilter, GopherRepetitionFilter
from tokenmill.filters.gopher import GopherQualityFilter
from tokenmill.filters.language import LanguageFilter
from tokenmill.filters.length import LengthFilter
from tokenmill.filters.pii import PIIRedaction
from tokenmill.filters.url import URLBlocklistFilter
from tokenmill.schema import StrictModel

FILTER_TYPES = (LengthFilter, LanguageFilter, GopherQualityFilter, GopherRepetitionFilter, C4Filter, FineWebFilter,
                URLBlocklistFilter, BadWordsFilter, PIIRedaction, ModelScoreFilter, FastTextScoreFilter)
FilterStep = Annotated[Union[FILTER_TYPES], Field(discriminator="name")]


class FilterConfig(StrictModel):
    steps: list[FilterStep] = Field(
        default_factory=lambda: [LengthFilter(min_chars=200), GopherQualityFilter()],
        description="filters in the order they run; each is {name: ..., its parameters}")
    write_dropped: bool = Field(True, description="write dropped documents to dropped/<filter>/ for inspection")
    executor: engine.ExecutorConfig = Field(default_factory=engine.ExecutorConfig)


def pipeline(cfg: FilterConfig, in_dir: Path, out_dir: Path) -> list:
    blocks = []
    for step in cfg.steps:
        dropped = engine.writer(out_dir / "dropped" / step.name) if cfg.write_dropped else None
        blocks.append(as_block(step, dropped))
    return [engine.reader(in_dir), engine.Tally("in"), *blocks, engine.Tally("out"), engine.writer(out_dir)]


def run(cfg: FilterConfig, in_dir: Path, out_dir: Path) -> dict:
    logs, executor = out_dir / "logs", engine.for_input(cfg.executor, in_dir)
    engine.run_pipeline(executor, pipeline(cfg, in_dir, out_dir), logs)
    stats = [s["stats"] for s in engine.step_stats(logs)]
    tally_in, filters, tally_out = stats[1], stats[2:-2], stats[-2]
    drops, scores = {}, {}
    for step, counts in zip(cfg.steps, filters):
        if histogram := score_histogram(counts, engine.total):
            scores[step.name] = histogram
        for key, value in counts.items():
            if key.startswith("dropped_"):
                drops[f"{step.name}/{key[len('dropped_'):]}"] = engine.total(counts, key)
        unexplained = engine.total(counts, "dropped") - sum(v for k, v in drops.items() if k.startswith(f"{step.name}/"))
        if unexplained:
            drops[f"{step.name}/unspecified"] = unexplained
    rewrites = {step.name: engine.total(counts, "rewritten") for step, counts in zip(cfg.steps, filters)
                if engine.total(counts, "rewritten")}
    return {"docs_in": engine.total(tally_in, "docs"), "docs_out": engine.total(tally_out, "docs"),
            "chars_in": engine.total(tally_in, "chars"), "chars_out": engine.total(tally_out, "chars"),
            "drops": dict(sorted(drops.items())), "rewrites": rewrites, "scores": scores, "tasks": executor.tasks}
