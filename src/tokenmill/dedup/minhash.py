"""MinHash-LSH near-duplicate removal with datatrove's four stages: signatures → buckets → clusters → filter.

Two documents whose word 5-gram sets have Jaccard similarity s share at least one of `num_buckets` LSH
buckets of `hashes_per_bucket` hashes with probability P(s) = 1 - (1 - s^r)^b (r = hashes_per_bucket,
b = num_buckets). With the defaults (b=14, r=8, FineWeb's) the threshold (P = 0.5) is s = 0.68:
P(0.5) = 0.05, P(0.6) = 0.21, P(0.7) = 0.57, P(0.75) = 0.77, P(0.8) = 0.92, P(0.85) = 0.99. Pairs below
~0.6 are rarely caught (false negatives are what the curve leaves under 1 above the threshold); pairs
above 0.85 almost always. See `candidate_probability` and docs/benchmarks.md.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

from pydantic import Field

from tokenmill import engine
from tokenmill.schema import StrictModel


class MinhashConfig(StrictModel):
    n_grams: int = Field(5, gt=0, description="words per shingle")
    num_buckets: int = Field(14, gt=0, description="LSH bands (b)")
    hashes_per_bucket: int = Field(8, gt=0, description="hashes per band (r)")
    seed: int = 1


def candidate_probability(similarity: float, num_buckets: int, hashes_per_bucket: int) -> float:
    """Probability that a pair with this Jaccard similarity becomes a duplicate candidate."""
    return 1 - (1 - similarity ** hashes_per_bucket) ** num_buckets


def minhash_dedup(cfg: MinhashConfig, executor: engine.ExecutorConfig, in_dir: Path, out_dir: Path, work: Path) -> dict:
    from datatrove.pipeline.dedup.minhash import (MinhashConfig as DtConfig, MinhashDedupBuckets,
                                                  MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.utils.hashing import HashConfig
    dt_cfg = DtConfig(n_grams=cfg.n_grams, num_buckets=cfg.num_buckets, hashes_per_bucket=cfg.hashes_per_bucket,
                      seed=cfg.seed, hash_config=HashConfig(precision=64))
    # One task per input shard in the two stages that read documents, whatever the executor says: datatrove
    # names a document by (task, index), and the cluster stage keeps the root of each cluster, so the same
    # layout gives the same decisions on any machine.
    shards = engine.for_input(executor.model_copy(update={"tasks": None}), in_dir).tasks
    stages = [
        ([engine.reader(in_dir), MinhashDedupSignature(output_folder=str(work / "signatures"), config=dt_cfg)],
         shards),
        ([MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"), config=dt_cfg)],
         cfg.num_buckets),
        ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"), config=dt_cfg,
                              save_cluster_size=True)], 1),
        # The filter must read with the signature stage's task layout: removal ids are (task, document index).
        ([engine.reader(in_dir), engine.Tally("in"),
          MinhashDedupFilter(input_folder=str(work / "remove_ids"), exclusion_writer=engine.writer(work / "removed")),
          engine.Tally("out"), engine.writer(out_dir)], shards),
    ]
    for index, (pipeline, tasks) in enumerate(stages):
        engine.run_pipeline(executor.model_copy(update={"tasks": tasks}), pipeline, work / f"logs_{index}")
    stats = [s["stats"] for s in engine.step_stats(work / "logs_3")]
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
