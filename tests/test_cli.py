import pytest
import yaml

from tokenmill.cli import EXAMPLES, main

COMMANDS = ["ingest", "filter", "dedup", "tokenize", "tokenizer", "train", "eval", "generate", "export", "serve", "report",
            "run", "shards", "convert-gguf"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert EXAMPLES[command] in capsys.readouterr().out


def test_help_names_every_input_format_and_the_built_in_configs(capsys):
    from tokenmill.config import builtin_configs
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(kind in text for kind in ("WARC", "PDF", "URL lists", "source code", "hf://", "Parquet"))
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert f"built-in config: {', '.join(builtin_configs())}" in " ".join(capsys.readouterr().out.split())
    assert set(builtin_configs()) == {"demo", "cpt-demo"}


def test_stage_commands_chain_by_hand(corpus, tmp_path, capsys, tiny_config):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    d = tmp_path / "run"
    steps = [["ingest", str(corpus), "-o", str(d / "00_raw")],
             ["filter", str(d / "00_raw"), "-o", str(d / "10_filtered")],
             ["dedup", str(d / "10_filtered"), "-o", str(d / "20_dedup")],
             ["tokenize", str(d / "20_dedup"), "-o", str(d / "30_shards"), "--vocab-size", "300"],
             ["train", str(d / "30_shards"), "-o", str(d / "40_checkpoints"), "--config", str(config)],
             ["export", str(d), "-o", str(d / "60_export")],
             ["eval", str(d / "60_export"), str(d / "30_shards"), "--config", str(config)],
             ["generate", str(d / "60_export"), "--prompt", "The queen", "--max-new-tokens", "5"],
             ["shards", "check", str(d / "30_shards" / "train")],
             ["report", str(d)]]
    for argv in steps:
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "bits/byte" in out and "The queen" in out and '"n_tokens"' in out and "report.html" in out


def test_bad_config_exits_2_listing_every_problem(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"train": {"lr_max": -1, "nope": 2}, "model": {"preset": "huge"}}))
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: 3 problem(s)" in err and "train.lr_max" in err and "train.nope" in err and "huge" in err


def test_unknown_config_name_says_what_exists(capsys, tmp_path):
    assert main(["run", "no-such-config"]) == 2
    assert "demo" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "o"), "--config", "no-such-config"]) == 2
    assert "no built-in config of that name (cpt-demo, demo)" in capsys.readouterr().err


def test_a_stage_command_takes_a_built_in_config_by_name(capsys, tmp_path):
    from tokenmill.cli import _load, _parser
    args = _parser().parse_args(["train", str(tmp_path), "-o", str(tmp_path / "o"), "--config", "demo"])
    cfg = _load(args)
    assert cfg.train.max_steps == 600 and cfg.model.preset == "tiny"  # the demo's train and model sections


def test_a_data_stage_prints_its_own_lines_and_keeps_datatrove_logs_in_its_folder(corpus, tmp_path):
    import subprocess
    import sys
    run = lambda *a: subprocess.run([sys.executable, "-m", "tokenmill", *a], capture_output=True, text=True)  # noqa: E731
    assert run("ingest", str(corpus), "-o", str(tmp_path / "raw")).returncode == 0
    out = run("filter", str(tmp_path / "raw"), "-o", str(tmp_path / "filtered"))
    assert out.returncode == 0
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("[filter] running") and lines[-1].startswith("[filter] done") and len(lines) == 2, lines
    assert not any(word in out.stderr for word in ("| INFO", "| SUCCESS", "| WARNING", "Stats:")), out.stderr[-500:]
    logs = list((tmp_path / "filtered").rglob("task_*.log"))
    assert logs and any("Stats" in log.read_text() or "PIPELINE" in log.read_text() for log in logs)


def test_the_data_commands_start_without_torch_or_transformers(corpus, tmp_path):
    """ingest and filter import neither (seconds of start-up per command, and per Slurm task): the config schema
    and the CLI load the model code only where a command uses it. (Word splitting, for MinHash and Gopher
    repetition, is spaCy's, whose thinc imports torch when it is installed: not ours to change.)"""
    import subprocess
    import sys
    d = tmp_path / "run"
    for argv in (["ingest", str(corpus), "-o", str(d / "raw")], ["filter", str(d / "raw"), "-o", str(d / "filtered")]):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "tokenmill", *argv], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
        assert "tokenmill.config" in imported and not imported & {"torch", "transformers", "matplotlib"}, argv[0]
