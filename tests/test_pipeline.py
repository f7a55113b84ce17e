import json
import subprocess
import sys
import textwrap

import yaml

from tokenmill.cli import main
from tokenmill.stage import read_manifest

STAGES = ["00_raw", "10_filtered", "20_dedup", "30_shards", "40_checkpoints", "50_eval", "60_export"]


def started(run_dir):
    return {s: read_manifest(run_dir / s)["started_at"] + read_manifest(run_dir / s)["key"] for s in STAGES}


def test_run_end_to_end_then_skip_then_rerun_downstream(tiny_config, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    run_dir = tmp_path / "run"
    assert main(["run", str(config), "-o", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "unigram entropy" in out and "sample:" in out
    for stage in STAGES:
        assert read_manifest(run_dir / stage), stage
    assert (run_dir / "config.resolved.yaml").is_file() and (run_dir / "60_export" / "model.safetensors").is_file()
    report = (run_dir / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 5 and 'alt="length histogram"' in report
    from tokenmill.report import _fmt
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = json.loads((run_dir / "50_eval" / "results.json").read_text())
    assert f"<td>{_fmt(max(r['mem/peak_gib'] for r in rows if 'mem/peak_gib' in r))}</td>" in report
    val = evals["sets"]["val"]
    lo, hi = val["loss_ci"]
    assert f"<td>{val['loss']:.4f} [{lo:.4f}, {hi:.4f}]</td>" in report  # each figure with its 95% interval
    assert f"val:   {val['loss']:.4f} [95% CI {lo:.4f}, {hi:.4f}] nats/token" in out
    assert 'alt="bits per byte with intervals"' in report
    for part in ("Estimate vs measured", "Stage durations", "Resolved config", 'alt="throughput"', 'alt="MFU"',
                 "Sample</h2><pre>The king"):
        assert part in report, part
    results = json.loads((run_dir / "50_eval" / "results.json").read_text())["sets"]["val"]
    unigram = json.loads((run_dir / "30_shards" / "val" / "meta.json").read_text())["unigram_entropy_nats"]
    assert results["loss"] < unigram  # the model learnt more than token frequencies
    card = (run_dir / "60_export" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "other" and "tokenmill" in front["tags"] and front["datasets"] == [str(tiny_config["ingest"]["paths"][0])]
    assert f"| val |  | {results['loss']:.4f} [{lo:.4f}, {hi:.4f}] |" in card and "| filter |" in card
    assert "max_steps: 60" in card

    first = started(run_dir)
    assert main(["run", str(config), "-o", str(run_dir)]) == 0
    assert capsys.readouterr().out.count("up to date") == len(STAGES)
    assert started(run_dir) == first

    # More steps: training continues from its step-60 checkpoint, and what depends on it re-runs.
    assert main(["run", str(config), "-o", str(run_dir), "--set", "train.max_steps=64"]) == 0
    after = started(run_dir)
    changed = [s for s in STAGES if after[s] != first[s]]
    assert changed == ["40_checkpoints", "50_eval", "60_export"]


KILLED_STAGE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from tokenmill.dedup import DedupConfig
    from tokenmill.stage import run_stage

    def half_written(out):
        (out / "docs-00000.jsonl.gz").write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)

    run_stage("dedup", DedupConfig(), [], Path(sys.argv[1]), half_written)
""")


def test_a_stage_killed_mid_write_is_rerun_not_taken_as_done(tmp_path):
    from tokenmill.dedup import DedupConfig
    from tokenmill.stage import run_stage
    out = tmp_path / "20_dedup"
    proc = subprocess.run([sys.executable, "-c", KILLED_STAGE, str(out)])
    assert proc.returncode == -9
    assert read_manifest(out) is None and not out.exists()

    calls = []
    manifest = run_stage("dedup", DedupConfig(), [], out, lambda o: calls.append(o) or {"docs_out": 0})
    assert calls and read_manifest(out) == manifest
    assert not (tmp_path / ".20_dedup.partial").exists()
    run_stage("dedup", DedupConfig(), [], out, lambda o: calls.append(o) or {})
    assert len(calls) == 1  # second call: up to date


def test_a_killed_rerun_leaves_the_previous_output_whole(tmp_path):
    from tokenmill.dedup import DedupConfig
    from tokenmill.stage import run_stage
    out = tmp_path / "20_dedup"
    run_stage("dedup", DedupConfig(), [], out, lambda o: (o / "keep.txt").write_text("v1") and {})
    # Same key, forced: the child writes a new version and dies before finishing.
    script = KILLED_STAGE.replace('Path(sys.argv[1]), half_written)', 'Path(sys.argv[1]), half_written, force=True)')
    assert subprocess.run([sys.executable, "-c", script, str(out)]).returncode == -9
    assert (out / "keep.txt").read_text() == "v1" and read_manifest(out)


def test_report_shows_dropped_samples_and_languages(tiny_config, tmp_path):
    from tokenmill.report import dropped_samples, kept_documents_profile
    (tmp_path / "corpus2").mkdir()
    tiny_config["ingest"]["paths"].append(str(tmp_path / "corpus2"))
    (tmp_path / "corpus2" / "short.txt").write_text("Too short to keep.")
    tiny_config["filter"]["steps"].insert(0, {"name": "language"})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    assert main(["run", str(config), "-o", str(tmp_path / "run")]) == 0
    samples = dropped_samples(tmp_path / "run" / "10_filtered")
    assert samples["length/too_short"] == ["[short.txt] Too short to keep."]
    lengths, languages = kept_documents_profile(tmp_path / "run" / "20_dedup")
    assert languages == {"en": len(lengths)} and min(lengths) > 100
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Too short to keep." in report and 'alt="language"' in report
    assert 'alt="tokens funnel"' in report and "Removed by each filter" in report


def test_funnel_counts_tokens_and_in_equals_out_plus_drops(tiny_config, tmp_path):
    from tokenmill.report import funnel_rows
    from tokenmill.report.tokens import stage_sizes
    tiny_config["filter"]["steps"] = [{"name": "length", "min_chars": 1200}]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    run_dir = tmp_path / "run"
    assert main(["run", str(config), "-o", str(run_dir)]) == 0
    sizes = stage_sizes(run_dir)
    raw, kept, dropped = sizes["ingest"], sizes["filter"], sizes["dropped/length"]
    assert dropped["docs"] > 0 and kept["tokens"] > 1000
    for unit in ("docs", "chars", "tokens"):  # nothing lost: a filter stage's input is its output plus its drops
        assert raw[unit] == kept[unit] + dropped[unit], unit
    rows, drops = funnel_rows(run_dir, sizes)
    assert [r["stage"] for r in rows] == ["ingest", "filter", "dedup"]
    assert rows[1]["tokens_in"] == raw["tokens"] and rows[1]["tokens_out"] == kept["tokens"]
    assert rows[1]["docs_in"] - rows[1]["docs_out"] == sum(drops.values()) == dropped["docs"]
    cached = json.loads((run_dir / "stats" / "tokens.json").read_text())
    assert cached["filter"]["tokens"] == kept["tokens"] and stage_sizes(run_dir) == sizes


def test_push_to_hub_without_a_token_says_so_and_keeps_the_folder(tiny_config, tmp_path, capsys, monkeypatch):
    from tokenmill import train
    from tokenmill.config import validate
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached login
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = validate(tiny_config)
    from tokenmill.ingest import IngestConfig, run as ingest
    from tokenmill.tokenize import TokenizeConfig, run as tokenize
    ingest(IngestConfig(paths=tiny_config["ingest"]["paths"]), tmp_path / "docs")
    tokenize(TokenizeConfig(vocab_size=320), tmp_path / "docs", tmp_path / "shards")
    cfg.train.max_steps, cfg.train.save_every, cfg.train.eval_every = 4, 0, 0
    train.run(cfg.model, cfg.train, tmp_path / "shards", tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), "-o", str(tmp_path / "out"), "--push-to-hub", "me/tiny"]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "huggingface-cli upload me/tiny" in err
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "README.md").is_file()


def test_run_until_a_data_stage_stops_after_it_and_the_next_run_goes_on(tiny_config, tmp_path, capsys):
    """What each job of `tokenmill run --submit` runs: the stages up to one, then the rest finds them done."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    run_dir = tmp_path / "run"
    assert main(["run", str(config), "-o", str(run_dir), "--until", "filter"]) == 0
    assert "stopped after filter" in capsys.readouterr().out
    assert read_manifest(run_dir / "10_filtered") and not (run_dir / "20_dedup").exists()
    assert main(["run", str(config), "-o", str(run_dir), "--until", "tokenize"]) == 0
    out = capsys.readouterr().out
    assert "[ingest] up to date" in out and "[filter] up to date" in out and "[dedup] running" in out
    assert read_manifest(run_dir / "30_shards") and not (run_dir / "40_checkpoints").exists()
