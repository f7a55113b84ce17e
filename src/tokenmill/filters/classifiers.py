"""Quality classifiers as filters: a Hugging Face sequence-classification model (FineWeb-Edu's practice) or a
fastText model (DCLM's practice, and what `tokenmill quality train` makes).

    filter:
      steps:
        - {name: model_score, model: HuggingFaceFW/fineweb-edu-classifier, min_score: 2.5}
        - {name: fasttext_score, model: quality.bin, label: __label__hq, min_score: 0.5}

Each document's score is kept in its metadata (`metadata_key`), the stage counts scores in 0.1-wide bins
(the report's histogram), and a document below `min_score` is dropped with the reason `below_min_score`.
Models load in the worker that uses them, on first use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from datatrove.pipeline.filters.base_filter import BaseFilter
from pydantic import Field

from tokenmill.schema import StrictModel

SCORE_BIN = 0.1  # width of the histogram bins the stage counts


class ScoreBlock(BaseFilter):
    """Scores documents in batches, keeps the score in metadata, counts it in a bin, drops below the minimum."""

    name = "score"

    def __init__(self, name: str, min_score: float | None, metadata_key: str, batch_size: int, exclusion_writer=None):
        self.name = name  # before the base class names the stats with it
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.min_score, self.metadata_key = min_score, metadata_key

    def scores(self, texts: list[str]) -> list[float]:
        raise NotImplementedError

    def filter(self, doc) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch) -> list[bool | tuple[bool, str]]:
        results = []
        for doc, score in zip(batch, self.scores([doc.text for doc in batch])):
            doc.metadata[self.metadata_key] = round(float(score), 4)
            self.stat_update(f"score_{math.floor(score / SCORE_BIN) * SCORE_BIN:.1f}")
            keep = self.min_score is None or score >= self.min_score
            results.append(True if keep else (False, "below_min_score"))
        return results


def score_histogram(stats: dict, total) -> dict[str, int]:
    """{bin's lower edge: documents} from a score block's stats."""
    bins = {key[len("score_"):]: total(stats, key) for key in stats if key.startswith("score_")}
    return dict(sorted(bins.items(), key=lambda kv: float(kv[0])))


class ModelScoreFilter(StrictModel):
    """Any Hugging Face sequence-classification model: a regression head's value (FineWeb-Edu: 0–5, kept at
    ≥ 3 after rounding, i.e. ≥ 2.5), or a class's probability (`label`)."""
    name: Literal["model_score"] = "model_score"
    model: str = Field(..., description="a local folder, or a Hub name (hf://ORG/NAME or ORG/NAME)")
    min_score: float | None = Field(None, description="drop below this score; None keeps all and only scores")
    label: str | None = Field(None, description="class whose probability is the score (models with several "
                                                "classes); a regression model's single output needs none")
    batch_size: int = Field(32, gt=0, description="documents per forward pass")
    max_length: int | None = Field(None, gt=0, description="tokens kept of each document (default: the model's)")
    device: str = Field("auto", description="auto (GPU when there is one), cpu, cuda, cuda:1 ...")
    metadata_key: str = Field("model_score", description="metadata field holding the score")

    def block(self, exclusion_writer=None):
        return ModelScoreBlock(self, exclusion_writer)


class ModelScoreBlock(ScoreBlock):
    def __init__(self, cfg: ModelScoreFilter, exclusion_writer=None):
        super().__init__(cfg.name, cfg.min_score, cfg.metadata_key, cfg.batch_size, exclusion_writer)
        self.cfg, self.loaded = cfg, None

    def scores(self, texts: list[str]) -> list[float]:
        import torch
        if self.loaded is None:
            self.loaded = load_classifier(self.cfg)
        tokenizer, model, column, max_length = self.loaded
        inputs = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs.to(model.device)).logits.float()
        values = logits[:, 0] if column is None else logits.softmax(-1)[:, column]
        return values.cpu().tolist()


def load_classifier(cfg: ModelScoreFilter):
    """(tokenizer, model, class column or None for regression, max length); clear errors for what is not one."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    source = cfg.model.removeprefix("hf://")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ValueError(f"filter model_score: {cfg.model} is neither a model folder nor a reachable Hub model "
                         f"({e})") from e
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise ValueError(f"filter model_score: {cfg.model} is not a sequence-classification model (architectures: "
                         f"{config.architectures}); give one saved by AutoModelForSequenceClassification, "
                         "e.g. HuggingFaceFW/fineweb-edu-classifier")
    column = None
    if config.num_labels > 1:
        names = {str(v): int(k) for k, v in config.id2label.items()}
        if cfg.label not in names:
            raise ValueError(f"filter model_score: {cfg.model} has {config.num_labels} classes; set label to the "
                             f"one whose probability is the score (one of: {', '.join(names)}); got {cfg.label!r}")
        column = names[cfg.label]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model = AutoModelForSequenceClassification.from_pretrained(source).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:  # decoder-only classifiers often have none; batches need one
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    limits = [n for n in (cfg.max_length, tokenizer.model_max_length, getattr(config, "max_position_embeddings", None))
              if n and n < 1e9]
    return tokenizer, model, column, min(limits) if limits else 512


class FastTextScoreFilter(StrictModel):
    """A fastText classifier's probability of one label (DCLM's quality filter; `tokenmill quality train`)."""
    name: Literal["fasttext_score"] = "fasttext_score"
    model: str = Field(..., description="a fastText .bin file")
    label: str = Field("__label__hq", description="label whose probability is the score")
    min_score: float | None = Field(None, ge=0, le=1, description="drop below this probability; None only scores")
    metadata_key: str = Field("fasttext_score", description="metadata field holding the score")

    def block(self, exclusion_writer=None):
        if not Path(self.model).is_file():
            raise FileNotFoundError(f"filter fasttext_score: {self.model}: no such file (a fastText .bin, e.g. "
                                    "from `tokenmill quality train`)")
        return FastTextScoreBlock(self, exclusion_writer)


class FastTextScoreBlock(ScoreBlock):
    def __init__(self, cfg: FastTextScoreFilter, exclusion_writer=None):
        super().__init__(cfg.name, cfg.min_score, cfg.metadata_key, 256, exclusion_writer)
        self.cfg, self.model = cfg, None

    def scores(self, texts: list[str]) -> list[float]:
        if self.model is None:
            self.model = load_fasttext(self.cfg.model, self.cfg.label)
        return label_probabilities(self.model, texts, self.cfg.label)


def load_fasttext(path: str, label: str | None = None):
    import fasttext
    try:
        model = fasttext.load_model(str(path))
    except ValueError as e:
        raise ValueError(f"{path}: not a fastText model ({e})") from e
    if label is not None and label not in model.get_labels():
        raise ValueError(f"filter fasttext_score: {path} has no label {label!r} (labels: {model.get_labels()})")
    return model


def label_probabilities(model, texts: list[str], label: str) -> list[float]:
    """A fastText model's probability of `label` for each text (0 where the label is not predicted)."""
    labels, probs = model.predict([one_line(t) for t in texts], k=-1)
    return [dict(zip(ls, ps)).get(label, 0.0) for ls, ps in zip(labels, probs)]


def one_line(text: str) -> str:
    """fastText reads one example per line."""
    return " ".join(text.split())
