"""MinHash-LSH near-duplicate removal with datatrove's four stages: signatures → buckets → clusters → filter.

Two documents whose word 5-gram sets have Jaccard similarity s share at least one of `num_buckets` LSH
buckets of `hashes_per_bucket` hashes with probability P(s) = 1 - (1 - s^r)^b (r = hashes_per_bucket,
b = num_buckets). With the defaults (b=14, r=8, FineWeb's) the threshold (P = 0.5) is s = 0.68:
P(0.5) = 0.05, P(0.6) = 0.21, P(0.7) = 0.57, P(0.75) = 0.77, P(0.8) = 0.92, P(0.85) = 0.99. Pairs below
~0.6 are rarely caught (false negatives are what the curve leaves under 1 above the threshold); pairs
above 0.85 almost always. See `candidate_probability` and docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import struct
import sys
import unicodedata
from collections import Counter
from dataclasses import replace
from itertools import accumulate
from pathlib import Path
from typing import Literal

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.utils.text import TextNormConfig, simplify_text
from pydantic import Field

from tokenmill import engine
from tokenmill.schema import StrictModel


class MinhashConfig(StrictModel):
    n_grams: int = Field(5, gt=0, description="words per shingle")
    num_buckets: int = Field(14, gt=0, description="LSH bands (b)")
    hashes_per_bucket: int = Field(8, gt=0, description="hashes per band (r)")
    seed: int = 1
    language: str = Field("en", description="language of datatrove's word tokenizer")
    implementation: Literal["memoised", "datatrove"] = Field(
        "memoised", description="memoised: datatrove's signatures, several times faster; datatrove: its block")


def candidate_probability(similarity: float, num_buckets: int, hashes_per_bucket: int) -> float:
    """Probability that a pair with this Jaccard similarity becomes a duplicate candidate."""
    return 1 - (1 - similarity ** hashes_per_bucket) ** num_buckets


def minhash_dedup(cfg: MinhashConfig, executor: engine.ExecutorConfig, in_dir: Path, out_dir: Path, work: Path) -> dict:
    from datatrove.pipeline.dedup.minhash import (MinhashConfig as DtConfig, MinhashDedupBuckets,
                                                  MinhashDedupCluster, MinhashDedupFilter)
    from datatrove.utils.hashing import HashConfig
    dt_cfg = DtConfig(n_grams=cfg.n_grams, num_buckets=cfg.num_buckets, hashes_per_bucket=cfg.hashes_per_bucket,
                      seed=cfg.seed, hash_config=HashConfig(precision=64))
    # The reading stages' task count comes from the input (engine.grouped_tasks) or the config, never the
    # machine: datatrove names a document by (task, index), and the cluster stage keeps the root of each
    # cluster, so the same layout gives the same decisions on any machine.
    shards = engine.for_input(executor, in_dir).tasks
    stages = [
        ([engine.reader(in_dir), SIGNATURES[cfg.implementation](output_folder=str(work / "signatures"), config=dt_cfg,
                                                                 language=cfg.language)], shards),
        ([MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"), config=dt_cfg)],
         cfg.num_buckets),
        ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"), config=dt_cfg,
                              save_cluster_size=True)], 1),
        # The filter must read with the signature stage's task layout: removal ids are (task, document index).
        ([engine.reader(in_dir), engine.Tally("in"),
          MinhashDedupFilter(input_folder=str(work / "remove_ids"), exclusion_writer=engine.writer(work / "removed")),
          engine.Tally("out"), engine.writer(out_dir)], shards),
    ]
    stats = engine.run_pipelines(executor, stages, work)
    removed = engine.total(stats[1], "docs") - engine.total(stats[-2], "docs")
    return {"drops": {"minhash/near_duplicate": removed} if removed else {},
            "cluster_sizes": cluster_sizes(work / "remove_ids")}


def cluster_sizes(remove_ids: Path) -> dict[str, int]:
    """{cluster size: clusters} from datatrove's `.sizes` files: (document, size of its cluster) per member."""
    members: Counter[int] = Counter()
    for path in sorted(remove_ids.glob("*.sizes")):
        pairs = struct.iter_unpack("<II", path.read_bytes())
        members.update(size for _, size in pairs)
    return {str(size): n // size for size, n in sorted(members.items()) if size > 1}  # n members, n/size clusters


class MemoisedMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature stage with the same shingles, computed several times faster:

    - words from `MemoisedWordSplitter` (datatrove's spaCy words, spaCy run once per distinct chunk), which is
      where datatrove spends ~90% of this stage;
    - n-grams hashed as slices of one joined string instead of a join per n-gram;
    - diacritics removed by one `str.translate` of the NFD text, instead of a Python loop over every character;
    - repeated shingles hashed into the signature once (the minimum does not change).
    """

    def get_shingles(self, text: str) -> np.ndarray:
        if getattr(self, "_words", None) is None:  # built in the worker: spaCy's tokenizer is not sent along
            from tokenmill.words import MemoisedWordSplitter
            self._words = MemoisedWordSplitter(self.language)
        words = self._words(simplify(text, self.config.norm_config))
        n = self.config.n_grams
        if len(words) < n:
            return np.empty((0, 1), dtype=np.uint64)
        joined = " ".join(words)
        starts = list(accumulate((len(w) + 1 for w in words), initial=0))  # word i is joined[starts[i]:starts[i+1]-1]
        hash_fn = _direct(self._hash_func)
        hashes = [hash_fn(joined[starts[i]:starts[i + n] - 1]) for i in range(len(words) - n + 1)]
        return np.unique(np.fromiter(hashes, dtype=np.uint64, count=len(hashes))).reshape((-1, 1))


def _direct(hash_fn):
    """datatrove's xxhash wrappers are one Python call around xxhash's own function: call that directly."""
    import xxhash
    from datatrove.utils.hashes import xxhash as wrappers
    return {wrappers.xxhash64: xxhash.xxh64_intdigest, wrappers.xxhash32: xxhash.xxh32_intdigest}.get(hash_fn, hash_fn)


SIGNATURES = {"memoised": MemoisedMinhashSignature, "datatrove": MinhashDedupSignature}


def simplify(text: str, config: TextNormConfig) -> str:
    """datatrove's `simplify_text`, with its last step (dropping combining marks) as one regex substitution."""
    if not config.norm_unicode_diacritics:
        return simplify_text(text, config)
    text = simplify_text(text, replace(config, norm_unicode_diacritics=False))
    if text.isascii():  # NFD leaves ASCII as it is, and ASCII has no combining marks
        return text
    return unicodedata.normalize("NFD", text).translate(_combining_marks()).strip()


@functools.cache
def _combining_marks() -> dict[int, None]:
    """Every character of Unicode category Mn (what datatrove removes), as a `str.translate` table."""
    return dict.fromkeys(c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Mn")
