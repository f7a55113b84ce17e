"""tokenmill plan: the law fitter on points of known parameters, the proxies' budgets, bad plans refused before
any proxy runs, and a whole plan of real proxy runs on a tiny config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import write_corpus
from tokenmill.config import ConfigError, validate
from tokenmill.plan import laws, proxies
from tokenmill.plan.recommend import fit_set, recommend

DOMAIN = np.array([np.log(1.0), np.log(0.8), -0.25, 0.25, np.log(0.15), 0.6])   # falls with share and tokens
GENERAL = np.array([np.log(1.3), np.log(0.2), 3.0, -0.1, np.log(0.005), 0.3])    # forgets faster near 1, and with D
SHARES, BUDGETS = np.array([0.5, 0.7, 0.85, 0.95, 1.0]), np.array([0.1, 0.2, 0.3])


def points(theta, rng):
    r, d = (a.ravel() for a in np.meshgrid(SHARES, BUDGETS))
    return r, d, laws.predict(laws.DCPT, theta, r, d) * (1 + rng.normal(0, 0.005, len(r)))  # 0.5% noise


def test_the_fitter_recovers_held_out_losses_and_the_optimal_share_from_noisy_points():
    rng = np.random.default_rng(1)
    r, d, general = points(GENERAL, rng)
    _, _, domain = points(DOMAIN, rng)
    fits = {"domain": fit_set("domain", r, d, domain, resamples=20), "general": fit_set("general", r, d, general,
                                                                                         resamples=20)}
    held_r, held_d = np.array([0.6, 0.8, 0.9, 0.6, 0.8, 0.9]), np.array([0.15, 0.15, 0.15, 0.25, 0.25, 0.25])
    for name, truth in (("domain", DOMAIN), ("general", GENERAL)):
        error = fits[name].predict(held_r, held_d) / laws.predict(laws.DCPT, truth, held_r, held_d) - 1
        assert np.abs(error).max() < 0.005, (name, error)
    # The true optimum: the largest share whose general loss at the target stays within the allowed rise.
    base, grid = 1.31, np.round(np.arange(0.5, 1.0001, 0.01), 4)
    true_general = laws.predict(laws.DCPT, GENERAL, grid, np.ones(len(grid)))
    max_rise = float(np.interp(0.8, grid, true_general) - base)
    answer = recommend(fits["domain"], fits["general"], general, base, max_rise, (0.5, 1.0))
    assert answer["poor_fit"] == [] and abs(answer["share"] - 0.8) <= 0.02, answer["share"]
    lo, hi = answer["prediction"]["domain"]["ci"]
    assert lo < answer["prediction"]["domain"]["bits_per_byte"] < hi


def test_a_forgetting_law_that_rises_with_tokens_is_not_carried_far_beyond_the_proxies():
    """GENERAL rises with tokens (beta < 0). 3.3x beyond the longest proxy the answer stands; 20x beyond, the
    plan says why it cannot tell (the stability gap) instead of calling every share infeasible."""
    rng = np.random.default_rng(1)
    r, d, general = points(GENERAL, rng)
    fits = {name: fit_set(name, r, d, y, resamples=10) for name, y in (("domain", points(DOMAIN, rng)[2]),
                                                                        ("general", general))}
    assert fits["general"].theta[laws.DCPT.params.index("beta")] < 0
    near = recommend(fits["domain"], fits["general"], general, 1.31, 0.05, (0.5, 1.0), longest=0.3)
    assert near["share"] is not None and near["poor_fit"] == []
    far = recommend(fits["domain"], fits["general"], general, 1.31, 0.05, (0.5, 1.0), longest=0.05)
    assert far["share"] is None and "prediction" not in far
    assert "rises with tokens at every share" in far["poor_fit"][0] and "20x beyond the longest proxy" in far["poor_fit"][0]
    assert far["too_short"] and not near.get("too_short")


def test_proxies_too_short_to_carry_are_told_how_long_to_be_and_what_that_costs(tmp_path):
    """cpt-demo's 1,000-step target: five shares at budgets 0.02-0.045 ended inside the stability gap; stretched
    so that the longest reaches 1/4 of the target they carried (docs/plan.md), at 1.525x its compute."""
    from tokenmill.plan import format_plan, longer_proxies
    raw = plan_config(tmp_path, shares={"domain": [0.5, 0.7, 0.85, 0.95, 1.0]}, budgets=[0.02, 0.03, 0.045])
    raw["train"]["max_steps"] = 1000
    cfg = validate(raw)
    more = longer_proxies(cfg)
    assert more["budgets"] == [0.111, 0.167, 0.25]
    # per share: the 250-step stable run and the cooldowns of the 111- and 167-step branches (22 and 33 steps)
    assert more["fraction"] == pytest.approx(5 * (250 + 22 + 33) / 1000)
    assert more["fraction_three_shares"] == pytest.approx(3 * (250 + 22 + 33) / 1000)
    result = {"points": [], "fits": {}, "compute": {"fraction": 0.275, "proxy_steps": 275, "target_steps": 1000,
                                                    "devices": "cpu", "proxy_hours": 0.02, "target_hours": 0.06},
              "recommendation": {"share": None, "poor_fit": ["the general law rises with tokens"],
                                 "longer_proxies": more}}
    assert "plan.budgets [0.111, 0.167, 0.25] cost 1.52x the target's compute with these 5 shares, 0.92x with " \
        "three" in format_plan(result, cfg)
    assert longer_proxies(validate(plan_config(tmp_path, budgets=[0.1, 0.2, 0.3]))) is None  # long enough already


def test_an_edge_share_the_constraint_law_cannot_hold_is_left_out_of_the_search_and_said(tmp_path):
    """The general points follow the law at every share but the highest, where they run 15% above it (a set that
    keeps rising without replay): all points together fail the checks; without that share the plan answers,
    within the other shares' range, and says which share it left out and why."""
    from tokenmill.plan import answer, format_plan
    raw = plan_config(tmp_path)
    raw["plan"].update(shares={"domain": [0.5, 0.6, 0.7, 0.8, 1.0]}, budgets=[0.1, 0.2, 0.3], resamples=10)
    raw["train"]["max_steps"] = 200
    cfg = validate(raw)
    rng = np.random.default_rng(3)
    r, d = (a.ravel() for a in np.meshgrid(cfg.plan.share_values, [0.1, 0.2, 0.3]))
    own_general = np.array([np.log(1.3), np.log(0.05), -1.0, -0.1, np.log(0.01), 0.5])  # forgets as 1 - r shrinks
    general = laws.predict(laws.DCPT, own_general, 1 - r, d) * (1 + rng.normal(0, 0.002, len(r)))
    general[r == 1.0] *= 1.15
    domain = laws.predict(laws.DCPT, DOMAIN, r, d) * (1 + rng.normal(0, 0.002, len(r)))
    points = [{"share": float(a), "tokens": float(b), "steps": int(b * 200), "general": float(g), "domain": float(m)}
              for a, b, g, m in zip(r, d, general, domain)]
    base = {"general": float(laws.predict(laws.DCPT, own_general, 0.5, 1.0)), "domain": 1.5}
    result = answer(cfg, points, base)
    rec = result["recommendation"]
    assert rec["left_out"]["share"] == 1.0 and rec["left_out"]["why"]
    assert rec["share"] is not None and 0.5 <= rec["share"] <= 0.8
    result["compute"] = {"fraction": 1.0, "proxy_steps": 1, "target_steps": 1, "devices": "cpu", "proxy_hours": 0,
                         "target_hours": 0}
    assert "share 1 left out: with it, the general law" in format_plan(result, cfg)


def test_the_from_scratch_law_is_fitted_by_the_same_fitter():
    truth = np.array([np.log(1.7), np.log(400.0), 0.34, np.log(410.0), 0.28])  # Chinchilla's approach-3 shape
    n, d = (a.ravel() for a in np.meshgrid([10e6, 30e6, 100e6, 300e6], [0.2e9, 0.6e9, 2e9, 6e9]))
    rng = np.random.default_rng(0)
    y = laws.predict(laws.CHINCHILLA, truth, n, d) * (1 + rng.normal(0, 0.005, len(n)))
    theta = laws.fit(laws.CHINCHILLA, n / 1e6, d / 1e9, y * 1.0, seed=0)  # millions of parameters, billions of tokens
    scaled = truth.copy()
    scaled[1] -= truth[2] * np.log(1e6)
    scaled[3] -= truth[4] * np.log(1e9)
    held_n, held_d = np.array([50.0, 200.0]), np.array([1.0, 4.0])
    error = laws.predict(laws.CHINCHILLA, theta, held_n, held_d) / laws.predict(laws.CHINCHILLA, scaled, held_n,
                                                                                 held_d) - 1
    assert np.abs(error).max() < 0.005, error


def test_a_poor_fit_is_reported_and_never_recommended():
    rng = np.random.default_rng(2)
    r, d, general = points(GENERAL, rng)
    noisy = general * (1 + rng.normal(0, 0.05, len(general)))  # 5% noise: the law cannot be trusted
    fits = {n: fit_set(n, r, d, y, resamples=10) for n, y in (("domain", points(DOMAIN, rng)[2]), ("general", noisy))}
    answer = recommend(fits["domain"], fits["general"], noisy, 1.31, 0.02, (0.5, 1.0))
    assert answer["share"] is None and "leave-one-out error" in answer["poor_fit"][0]


def test_budgets_branch_from_checkpoints_of_the_longest_run():
    found = proxies.budgets([0.1, 0.2, 0.3], 150, 0.2)
    assert [(b.steps, b.decay_start) for b in found] == [(15, 12), (30, 24), (45, 36)]
    assert proxies.checkpoint_interval(found) == 12 and proxies.keep_last(found) == 5
    found = proxies.budgets([0.1, 0.15, 0.2], 100, 0.2)
    assert [(b.steps, b.decay_start) for b in found] == [(10, 8), (15, 12), (20, 16)]
    for b in found:  # each branch's WSD decay starts where it leaves the stable run, on a checkpoint
        assert b.steps - max(1, round(0.2 * b.steps)) == b.decay_start
        assert b.decay_start % proxies.checkpoint_interval(found) == 0
    assert proxies.mixture_weights("domain", 0.7, {"general": 0.5, "domain": 0.5, "web": 1.5}) == \
        pytest.approx({"domain": 0.7, "general": 0.075, "web": 0.225})


def plan_config(tmp_path, **plan) -> dict:
    write_corpus(tmp_path / "general", 50, seed=1)
    write_corpus(tmp_path / "domain", 50, seed=2)
    return {"datasets": {"general": {"paths": [str(tmp_path / "general")]},
                         "domain": {"paths": [str(tmp_path / "domain")]}},
            "filter": {"steps": [{"name": "length", "min_chars": 100}]}, "dedup": {"minhash": None},
            "tokenize": {"vocab_size": 300, "val_fraction": 0.15},
            "model": {"preset": "tiny", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64},
            "train": {"seq_len": 32, "micro_batch_size": 4, "max_steps": 100, "warmup_steps": 2, "lr_max": 1e-2,
                      "lr_min": 1e-3, "log_every": 5, "eval_tokens": 256},
            "mixture": {"stages": [{"weights": {"general": 0.5, "domain": 0.5}}]},
            "generate": {"prompt": "The king", "max_new_tokens": 4},
            "plan": {"shares": {"domain": [0.3, 0.6, 0.8, 1.0]}, "budgets": [0.1, 0.15, 0.2],
                     "objective": {"set": "domain"}, "constraint": {"set": "general", "max_rise_bits_per_byte": 0.05},
                     "resamples": 10, **plan}}


@pytest.mark.parametrize("change, message", [
    ({"shares": {"domain": [0.5, 1.2, 0.7]}}, r"shares.domain: \[1.2\] outside \[0, 1\]"),
    ({"shares": {}}, "name exactly one dataset to vary"),
    ({"objective": None}, "give an objective"),
    ({"shares": {"domain": [0.5, 0.7, 0.9]}, "budgets": [0.1, 0.2]}, "6 proxy points .* too few: .* at least 9"),
    ({"budgets": [0.05, 0.1, 0.2]}, r"plan.budgets: 0.05 of train.max_steps 100 is 5 steps; a proxy needs at least 10"),
    ({"constraint": {"set": "books", "max_rise_bits_per_byte": 0.1}}, "plan.constraint.set: 'books' is not an evaluation set"),
    ({"shares": {"code": [0.5, 0.7, 0.9]}}, "plan.shares.code: no dataset of that name"),
])
def test_a_bad_plan_is_refused_before_any_proxy_runs(tmp_path, change, message):
    raw = plan_config(tmp_path)
    raw["plan"].update(change)
    with pytest.raises(ConfigError, match=message):
        validate(raw)


def test_a_plan_runs_its_proxies_fits_and_says_what_it_found(tmp_path, capsys):
    """First one task of the Slurm proxy array: its job script, run by bash as Slurm runs it with
    SLURM_ARRAY_TASK_ID=1, trains the second share's proxies and nothing else. The whole plan then finds them
    done, trains the others, fits and answers; `run --plan` trains the target only on a recommendation."""
    import os
    import subprocess

    from tokenmill import slurm_chain
    from tokenmill.cli import main
    from tokenmill.config import load_config
    config, run = tmp_path / "plan.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(plan_config(tmp_path, parallel=2)))
    cfg = load_config(config)
    jobs = slurm_chain.plan_jobs(str(config), run, [], cfg.ingest.executor.slurm, cfg.plan)
    assert [(j.step, j.array) for j in jobs] == [("data", 0), ("proxies", 4), ("fit", 0)]
    script = slurm_chain.job_script(jobs[1], run)
    assert "#SBATCH --array=0-3%2" in script and '--proxy "$SLURM_ARRAY_TASK_ID"' in script
    assert main(["run", str(config), "-o", str(run), "--until", "tokenize"]) == 0  # the data job
    (tmp_path / "task.sh").write_text(script)
    task = subprocess.run(["bash", str(tmp_path / "task.sh")], capture_output=True, text=True,
                          env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"})
    assert task.returncode == 0, task.stderr[-2000:]
    trained = sorted(p.parent.parent.name for p in (run / "plan").glob("share-*/*/manifest.json"))
    assert trained == ["share-0.6"] * 3  # its stable run and two cooldown branches
    capsys.readouterr()
    assert main(["plan", str(config), "-o", str(run), "--proxy", "4"]) != 0
    assert "--proxy 4: the plan has 4 proxy groups ([0.3, 0.6, 0.8, 1.0]), indexed 0 to 3" in capsys.readouterr().err

    code = main(["plan", str(config), "-o", str(run)])
    out = capsys.readouterr()
    for share in ("0.30", "0.60", "0.80", "1.00"):
        after = out.out.split(f"[plan] proxy domain {share}, 20 steps")[1]
        assert after.lstrip().startswith("[train] up to date" if share == "0.60" else "[train] running"), share
    result = json.loads((run / "plan" / "plan.json").read_text())
    assert len(result["points"]) == 12 and {p["steps"] for p in result["points"]} == {10, 15, 20}
    assert set(result["fits"]) == {"general", "domain"} and set(result["base"]) == {"general", "domain"}
    assert result["compute"]["fraction"] == pytest.approx(4 * (20 + 2 + 3) / 100)  # a stable run and two cooldowns
    assert "[plan] 12 points from 4 shares of domain" in out.out
    if result["recommendation"]["share"] is None:  # an honest "no": this tiny model's curves are noisy
        assert code == 2 and "no recommendation" in out.out and "no mixture to pay for" in out.err
    else:
        assert code == 0 and "recommended domain share" in out.out
    # Everything is done: a second plan trains nothing; `run --plan` trains the target only on a recommendation.
    code = main(["run", str(config), "-o", str(run), "--plan"])
    out = capsys.readouterr()
    assert "[train] running" not in out.out.split("[plan] 12 points")[0]
    if result["recommendation"]["share"] is None:
        assert code == 2 and not (run / "40_checkpoints").exists()
    else:
        assert code == 0 and "plan domain: predicted" in out.out
        assert json.loads((run / "plan" / "applied.json").read_text())["share"] == result["recommendation"]["share"]


def test_proxies_made_with_another_config_are_measured_anew_not_continued(tmp_path, capsys):
    """The mixture is a change a user's run may continue with; a proxy's point may not mix two configs. A changed
    plan redoes the share's stable run and the cooldown branches it took along (they used to stop at the first
    branch: its folder held checkpoints past the stable run's branch point); an unchanged one trains nothing."""
    from tokenmill.cli import main
    config, run = tmp_path / "plan.yaml", tmp_path / "run"
    raw = plan_config(tmp_path)
    config.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(config), "-o", str(run), "--proxy", "0"]) == 0
    first = json.loads((run / "plan" / "share-0.3" / "steps-15" / "manifest.json").read_text())
    raw["mixture"]["max_epochs"] = 5.0   # a mixture change that leaves the proxy's data as it was, as in a bench
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["plan", str(config), "-o", str(run), "--proxy", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("was made with another config or other data: measured anew") == 1       # the stable run; its branches go with it
    assert out.count("[train] done in") == 3 and "[train] up to date" not in out
    assert json.loads((run / "plan" / "share-0.3" / "steps-15" / "manifest.json").read_text())["key"] != first["key"]
    assert main(["plan", str(config), "-o", str(run), "--proxy", "0"]) == 0
    assert capsys.readouterr().out.count("[train] up to date") == 3


def test_the_check_sets_each_prediction_beside_the_measurement(tmp_path):
    from tokenmill.plan import check, measured
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"step": 0, "val/domain/bits_per_byte": 3.0, "val/general/bits_per_byte": 2.0},
        {"step": 5, "train/loss": 1.0},
        {"step": 10, "val/domain/bits_per_byte": 2.5, "val/general/bits_per_byte": 2.1}]) + "\n")
    planned = {"recommendation": {"prediction": {"domain": {"bits_per_byte": 2.4, "ci": [2.3, 2.45]},
                                                 "general": {"bits_per_byte": 2.12, "ci": [2.05, 2.2]}}}}
    got = check(planned, measured(metrics))  # the last evaluation in training: the proxies' own windows
    assert got["domain"]["measured"] == 2.5 and not got["domain"]["inside_ci"]
    assert got["domain"]["error_relative"] == pytest.approx(2.5 / 2.4 - 1)
    assert got["general"]["inside_ci"]


def test_proxies_repeat_scarce_data_as_often_as_the_target_would(tmp_path, capsys):
    from tokenmill.plan import repetition_subsample
    cfg = validate(plan_config(tmp_path))  # target: 100 steps x 4 x 32 = 12,800 tokens, up to all of them domain
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "meta.json").write_text(json.dumps({"n_tokens": 4_000}))
    assert repetition_subsample(cfg, {"domain": tmp_path / "d"}) == {"domain": 0.2}  # 3.2 passes: the largest budget
    assert "pass over domain up to 3.2 times: the proxies use 20.0% of it (800 tokens)" in capsys.readouterr().out
    (tmp_path / "d" / "train" / "meta.json").write_text(json.dumps({"n_tokens": 40_000}))
    assert repetition_subsample(cfg, {"domain": tmp_path / "d"}) == {}  # seen less than once: nothing to match
    (tmp_path / "d" / "train" / "meta.json").write_text(json.dumps({"n_tokens": 4_000}))
    unmatched = validate(plan_config(tmp_path, match_repetition=False))
    assert repetition_subsample(unmatched, {"domain": tmp_path / "d"}) == {}  # asked to read all of it
    assert "plan.match_repetition is off: the proxies read all of it" in capsys.readouterr().out


def test_a_share_the_target_could_not_read_that_often_is_refused_before_any_proxy(tmp_path):
    from tokenmill.plan import check_repetition
    raw = plan_config(tmp_path)
    raw["mixture"] = {"max_epochs": 3.0}
    cfg = validate(raw)  # target: 100 steps x 4 x 32 = 12,800 tokens; shares of domain up to 1.0
    for name, tokens in (("domain", 4_000), ("general", 100_000)):
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / "train" / "meta.json").write_text(json.dumps({"n_tokens": tokens}))
    shards = {name: tmp_path / name for name in ("domain", "general")}
    with pytest.raises(ValueError, match=r"at share 1 the target's 100 steps would read 'domain' 3.20 times, "
                                         r"above mixture.max_epochs 3\. Nothing ran"):
        check_repetition(cfg, shards)
    (tmp_path / "domain" / "train" / "meta.json").write_text(json.dumps({"n_tokens": 5_000}))
    check_repetition(cfg, shards)  # 2.56 passes at most: allowed


def test_a_subsampled_dataset_is_drawn_from_its_first_windows_only(shards, corpus, tmp_path):
    from conftest import tiny_pipeline
    from tokenmill import train
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=4, eval_every=0, save_every=0, warmup_steps=0)
    cfg = validate(raw, dataset_names=["general", "domain"])
    epochs = {}
    for share in (None, 0.25):
        mixture = {"stages": [{"weights": {"general": 0.5, "domain": 0.5}}], **({"subsample": {"domain": share}}
                                                                               if share else {})}
        from tokenmill.train.mixture import MixtureConfig
        out = tmp_path / f"run-{share}"
        train.run(cfg.model, cfg.train, {"general": shards, "domain": shards}, out, mixture=MixtureConfig(**mixture))
        epochs[share] = json.loads((out / "plan.json").read_text())["epochs"]
    assert epochs[0.25]["general"] == epochs[None]["general"]
    assert epochs[0.25]["domain"] == pytest.approx(4 * epochs[None]["domain"], rel=0.05)
    with pytest.raises(ValueError, match="subsample"):
        MixtureConfig(subsample={"domain": 1.5})


def test_a_ladder_of_sizes_predicts_the_target_from_scratch(tmp_path, corpus, capsys):
    from conftest import tiny_pipeline
    from tokenmill.cli import main
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=100, eval_every=0, save_every=0, eval_tokens=256)
    raw["plan"] = {"sizes": [{"hidden_size": 8, "intermediate_size": 16}, {"hidden_size": 16, "intermediate_size": 32},
                             {"hidden_size": 24, "intermediate_size": 48}], "budgets": [0.1, 0.15, 0.2], "resamples": 10}
    config = tmp_path / "ladder.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(config), "-o", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "plan" / "plan.json").read_text())
    assert result["mode"] == "sizes" and len(result["points"]) == 9
    assert len({p["params"] for p in result["points"]}) == 3  # three sizes, counted without the input embedding
    low, high = result["recommendation"]["prediction"]["val"]["ci"]
    assert low <= result["recommendation"]["prediction"]["val"]["bits_per_byte"] <= high
    assert result["compute_optimal"]["params"] > 0 and len(result["fit"]["budget_holdout"]) == 3
    assert "[plan] the target" in capsys.readouterr().out
    raw["model"] = {"init_from": str(tmp_path)}
    with pytest.raises(ConfigError, match="a ladder trains from scratch"):
        validate(raw)
