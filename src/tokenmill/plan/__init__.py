"""Plan: from a few small proxy runs, the mixture share to pay for and the losses it will buy.

    tokenmill plan my-cpt.yaml -o runs/cpt          # proxies, fits, the answer in runs/cpt/plan/plan.json
    tokenmill run my-cpt.yaml -o runs/cpt --plan    # then train the target at the recommended share, and check

The config is the one `tokenmill run` reads (named datasets, model.init_from, the train budget, the
evaluation sets) with a `plan:` section:

    plan:
      shares: {domain: [0.5, 0.7, 0.85, 0.95, 1.0]}    # the rest: the other datasets, in the mixture's proportions
      budgets: [0.05, 0.1, 0.2]                        # of the target's train.max_steps
      objective: {set: domain}
      constraint: {set: general, max_rise_bits_per_byte: 0.02}

Proxies (proxies.py) are ordinary train runs in RUN/plan/share-R/: one WSD run per share to the largest budget
and cooldown branches from its checkpoints for the others, each evaluated at step 0 and at its end. Per
evaluation set a D-CPT law in (share, tokens) is fitted (laws.py) with bootstrap intervals and leave-one-out
errors; recommend.py picks the share. From scratch, `plan.sizes` runs a ladder of model sizes instead and
fits L(N, D) (ladder.py). The trainer knows nothing of plans.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from tokenmill.atomic import atomic_write_json
from tokenmill.plan import ladder, proxies
from tokenmill.plan.config import MIN_POINTS, PlanConfig
from tokenmill.plan.recommend import fit_set, recommend

__all__ = ["PlanConfig", "run", "target_mixture", "format_plan"]
FIT_VERSION = 8  # part of plan.json's key: a changed law or fit refits the same points


def run(cfg, run_dir: Path, force: bool = False, only: int | None = None) -> dict | None:
    """Data stages, proxies, fits, recommendation; writes RUN/plan/plan.json and returns it. With `only`, the
    proxies of one share (or size: `plan.groups[only]`) and nothing else: a task of `tokenmill plan --submit`'s
    job array, after the data job (its stages are found up to date)."""
    from tokenmill.pipeline import prepare_data
    run_dir, groups = Path(run_dir), cfg.plan.groups
    if only is not None and not 0 <= only < len(groups):
        raise ValueError(f"--proxy {only}: the plan has {len(groups)} proxy groups ({groups}), indexed 0 to "
                         f"{len(groups) - 1}")
    shards = prepare_data(cfg, run_dir, force and only is None)
    budget_list = proxies.budgets(cfg.plan.budgets, cfg.train.max_steps, cfg.plan.decay_fraction)
    chosen = groups if only is None else [groups[only]]
    if cfg.plan.sizes:  # from scratch: a ladder of sizes
        n_sets = len(cfg.train.eval_sets or (shards if isinstance(shards, dict) else {"val": shards}))
        points, base = ladder.run_ladder(cfg, chosen, shards, run_dir / "plan", force,
                                         proxy_train_config(cfg, budget_list, n_sets), budget_list), {}
    else:
        points, base = run_proxies(cfg, chosen, shards, budget_list, run_dir / "plan", force)
    if only is not None:
        return None
    out = run_dir / "plan" / "plan.json"
    key = hashlib.sha256(json.dumps([points, base, cfg.plan.model_dump(mode="json"), FIT_VERSION],
                                    sort_keys=True).encode()).hexdigest()
    if out.is_file() and not force and json.loads(out.read_text()).get("key") == key:
        return json.loads(out.read_text())  # the fits of these very points are done
    found = ladder.answer(cfg, points, cfg.plan.resamples, ladder.data_tokens(shards)) if cfg.plan.sizes else \
        answer(cfg, points, base)
    result = {"key": key, **found, "compute": compute(cfg, budget_list, points)}
    atomic_write_json(out, result)
    return result


def run_proxies(cfg, shares: list[float], shards: dict[str, Path], budget_list: list, folder: Path,
                force: bool) -> tuple[list[dict], dict]:
    """The proxies of these shares (skipped when done); the points [{share, tokens (of the target's), set: bits
    per byte}] and the start model's bits per byte per set."""
    plan = cfg.plan
    train_cfg = proxy_train_config(cfg, budget_list, len(cfg.train.eval_sets or shards))
    points, base = [], {}
    check_repetition(cfg, shards)
    subsample = repetition_subsample(cfg, shards)
    for share in shares:
        mixture = target_mixture(cfg, share).model_copy(update={"subsample": {**cfg.mixture.subsample, **subsample}})
        for budget, first, last in run_branches(cfg.model, train_cfg, mixture, shards, budget_list,
                                                folder / proxies.share_label(share), f"{plan.varied} {share:.2f}", force):
            base = base or first
            points.append({"share": share, "tokens": budget.steps / cfg.train.max_steps, "steps": budget.steps, **last})
    return points, base


def run_branches(model_cfg, train_cfg, mixture, shards, budget_list: list, root: Path, label: str, force: bool):
    """One WSD proxy to the longest budget and a cooldown branch from its checkpoints for each other budget, as
    ordinary train runs under `root`; yields (budget, bits per byte at step 0, at the end) per budget."""
    from tokenmill import train
    from tokenmill.checkpoints import checkpoint_dirs
    from tokenmill.stage import ResumeConflict, run_stage
    named = isinstance(shards, dict)
    inputs = list(shards.values()) if named else [shards]
    longest = budget_list[-1]
    stable_redone = force
    for budget in reversed(budget_list):  # the stable run first: the branches start from its checkpoints
        t = train_cfg.model_copy(update={"max_steps": budget.steps})
        branch = budget is not longest
        out = root / ("stable" if not branch else f"steps-{budget.steps}")
        print(f"[plan] proxy {label}, {budget.steps} steps"
              + (f" (a cooldown from step {budget.decay_start})" if branch else ""), flush=True)
        sections = {"model": model_cfg, "train": t, **({"mixture": mixture} if named else {})}

        def proxy(t=t, out=out, branch=branch, budget=budget):
            # A branch starts from the stable run's checkpoint; one stopped part-way continues from its own.
            start = proxies.branch_point(root / "stable", budget) if branch and not checkpoint_dirs(out) else None
            run_stage("train", sections, inputs, out,
                      lambda o: train.run(model_cfg, t, shards, o, mixture=mixture if named else None,
                                          resume_from=start), resumable=True)
        if stable_redone:  # a redone stable run takes its branches along
            shutil.rmtree(out, ignore_errors=True)
        try:
            proxy()
        except ResumeConflict:
            # A proxy folder made with another config or other data is the plan's own: measured anew, never
            # continued as if it were this proxy (a user continues a run with a changed mixture on purpose,
            # train.RESUMABLE_CHANGES; a proxy's point would silently mix two configs).
            print(f"[plan] {out} was made with another config or other data: measured anew", flush=True)
            shutil.rmtree(out)
            stable_redone = stable_redone or not branch
            proxy()
        yield (budget, *proxies.final_bits_per_byte(out / "metrics.jsonl"))


def proxy_train_config(cfg, budget_list: list, n_sets: int):
    """The target's train section as a WSD proxy: checkpoints at the branch points, evaluation at start and
    end with the target's own per-set budget (the points are as noisy as the target's figures)."""
    t = cfg.train
    tokens_per_step = t.seq_len * t.micro_batch_size * t.accum_steps()
    eval_tokens = t.eval_tokens_per_set(n_sets, True, tokens_per_step)
    return t.model_copy(update={
        "schedule": "wsd", "decay_fraction": cfg.plan.decay_fraction, "save_every": proxies.checkpoint_interval(budget_list),
        "keep_last": proxies.keep_last(budget_list), "eval_every": 0, "eval_at_start": True,
        "eval_tokens": eval_tokens, "loggers": ["jsonl"],
        "warmup_steps": min(t.warmup_steps, budget_list[0].decay_start - 1)})


def answer(cfg, points: list[dict], base: dict) -> dict:
    """The fits of every evaluation set, the recommended share and its predictions. When the constraint law fails
    its checks on every share, it is fitted once more without the edge share (the lowest or the highest) whose
    points it holds worst, and the search keeps to the other shares' range; said as `left_out`. Measured
    (docs/plan.md): without replay, a general set may rise for most of a run, off the law's form, while the
    shares with replay are predicted within 1.6%."""
    plan = cfg.plan
    shares = np.array([p["share"] for p in points])
    fits, choice = _fit_and_recommend(cfg, points, base)
    if choice["share"] is None and choice.get("poor_fit") and len(set(shares)) > 3:
        errors = np.abs(fits[plan.constraint.set].loo)
        edge = max((min(shares), max(shares)), key=lambda s: errors[shares == s].mean())
        kept = [p for p in points if p["share"] != edge]
        if len(kept) >= MIN_POINTS:
            fewer, second = _fit_and_recommend(cfg, kept, base)
            if second["share"] is not None:
                second["left_out"] = {"share": float(edge), "why": choice["poor_fit"]}
                fits, choice = fewer, second
    if choice.pop("too_short", False):
        choice["longer_proxies"] = longer_proxies(cfg)
    return {"varied": plan.varied, "objective": plan.objective.set, "constraint": plan.constraint.set,
            "points": points, "base": base, "recommendation": choice,
            "fits": {name: {"law": "d-cpt", "theta": f.theta.tolist(), "loo_relative": f.loo.tolist(),
                            "share": {"offset": f.offset, "slope": f.slope}} for name, f in fits.items()}}


def longer_proxies(cfg) -> dict | None:
    """When the proxies end too early to carry to the target: the same budgets stretched so that the longest
    reaches 1/RISING_LAW_REACH of the target (where cpt-demo's laws carried, docs/plan.md), and what they cost,
    with these shares and with three. None when the proxies are that long already."""
    from tokenmill.plan.recommend import RISING_LAW_REACH
    longest = max(cfg.plan.budgets)
    if longest >= 1 / RISING_LAW_REACH:
        return None
    budgets = [round(b / longest / RISING_LAW_REACH, 3) for b in sorted(set(cfg.plan.budgets))]
    budget_list = proxies.budgets(budgets, cfg.train.max_steps, cfg.plan.decay_fraction)
    return {"budgets": budgets, "fraction": proxy_fraction(cfg, budget_list),
            "fraction_three_shares": proxy_fraction(cfg, budget_list, 3)}


def proxy_fraction(cfg, budget_list: list, runs: float | None = None) -> float:
    """The proxies' training steps over the target's: per share (or size, weighted by its parameters: `runs`),
    the stable run to the longest budget and each other budget's cooldown branch."""
    stable = budget_list[-1].steps
    branches = sum(b.steps - b.decay_start for b in budget_list[:-1])
    runs = len(cfg.plan.share_values) if runs is None else runs
    return runs * (stable + branches) / cfg.train.max_steps


def _fit_and_recommend(cfg, points: list[dict], base: dict) -> tuple[dict, dict]:
    plan = cfg.plan
    shares = np.array([p["share"] for p in points])
    tokens = np.array([p["tokens"] for p in points])
    sets = [k for k in points[0] if k not in ("share", "tokens", "steps")]
    fits = {name: fit_set(name, shares, tokens, np.array([p[name] for p in points]), plan.resamples,
                          **own_share(cfg, name)) for name in sets}
    constraint_values = np.array([p[plan.constraint.set] for p in points])
    start = base[plan.constraint.set]
    choice = recommend(fits[plan.objective.set], fits[plan.constraint.set], constraint_values, start,
                       plan.constraint.allowed_rise(start), (min(shares), max(shares)), longest=float(tokens.max()))
    if choice["share"] is not None:  # every set at the chosen share, with its interval
        choice["prediction"] = {name: {"bits_per_byte": float(f.predict(choice["share"], 1.0)),
                                       "ci": f.interval(choice["share"], 1.0)} for name, f in fits.items()}
    return fits, choice


def own_share(cfg, name: str) -> dict:
    """The set's own data's share as offset + slope x the varied share: a set named after a dataset follows that
    dataset's share (the varied one's r, another's its part of 1 - r); any other set follows r."""
    if name == cfg.plan.varied or name not in cfg.datasets:
        return {"offset": 0.0, "slope": 1.0}
    part = proxies.mixture_weights(cfg.plan.varied, 0.0, proportions(cfg))[name]  # its share when r = 0
    return {"offset": part, "slope": -part}


def repetition_subsample(cfg, shards: dict[str, Path]) -> dict[str, float]:
    """Proxies that see scarce data fewer times than the target mislead (arXiv 2606.07597). The rule: when the
    target would pass over the varied dataset more than once (at the largest share), the proxies use only the
    first `largest budget` share of its windows, so at their largest budget they repeat it exactly as often as
    the target does (the smaller budgets, branches of the same run, less). Otherwise nothing is subsampled."""
    from tokenmill.tokenize.shards import read_meta
    name = cfg.plan.varied
    tokens = read_meta(Path(shards[name]) / "train")["n_tokens"]
    epochs = max(cfg.plan.share_values) * ladder.target_tokens(cfg) / tokens
    if epochs <= 1:
        return {}
    if not cfg.plan.match_repetition:
        print(f"[plan] the target would pass over {name} up to {epochs:.1f} times; plan.match_repetition is off: the "
              "proxies read all of it")
        return {}
    share = max(cfg.plan.budgets)
    # Said with its size: a subsample small beside the model is memorised, and the proxies' domain loss then
    # stalls where the target's keeps falling (docs/plan.md: 36 k tokens for a 1.3 M-parameter model, -34%).
    print(f"[plan] the target would pass over {name} up to {epochs:.1f} times: the proxies use {share:.1%} of it "
          f"({share * tokens:,.0f} tokens), to repeat it as often")
    return {name: share}


def check_repetition(cfg, shards: dict[str, Path]) -> None:
    """Refuse, before any proxy runs, the shares at which the target would read a dataset more often than
    mixture.max_epochs allows: the target could not be paid for at them, and the varied dataset's proxies
    (repeating it as often as the target, the rule above) would stop there, after the shares before it ran.
    Tokens over tokens: the trainer's own check, on whole windows, can differ in the second decimal."""
    from tokenmill.tokenize.shards import read_meta
    held = {name: read_meta(Path(folder) / "train")["n_tokens"] for name, folder in shards.items()}
    problems = []
    for share in cfg.plan.share_values:
        for name, weight in proxies.mixture_weights(cfg.plan.varied, share, proportions(cfg)).items():
            epochs, cap = weight * ladder.target_tokens(cfg) / held[name], cfg.mixture.epoch_cap(name)
            if epochs > cap:
                problems.append(f"at share {share:g} the target's {cfg.train.max_steps:,} steps would read {name!r} "
                                f"{epochs:.2f} times, above mixture.max_epochs {cap:g}")
    if problems:
        raise ValueError("plan.shares: " + "; ".join(problems) + ". Nothing ran: drop those shares, lower "
                         "train.max_steps, add data, or raise mixture.max_epochs")


def compute(cfg, budget_list: list, points: list[dict]) -> dict:
    """The proxies' training steps against the target's (the same model and batch, so FLOPs in proportion:
    train/perf.py's count through `tokenmill estimate`), and both in time and money by its prices."""
    from tokenmill.estimate import estimate
    runs = None
    if cfg.plan.sizes:  # smaller models: FLOPs in proportion to their parameters too
        runs = sum({p["size"]: p["params"] for p in points}.values()) / ladder.parameters(cfg, cfg.model)
    fraction = proxy_fraction(cfg, budget_list, runs)
    steps = round(fraction * cfg.train.max_steps)
    target = estimate(cfg, cfg.plan.gpus, cfg.plan.price_per_gpu_hour)
    return {"proxy_steps": steps, "target_steps": cfg.train.max_steps, "fraction": fraction,
            "target_flops": target["flops_total"], "proxy_flops": target["flops_total"] * fraction,
            "devices": cfg.plan.gpus, "target_hours": target["total_time_s"] / 3600,
            "proxy_hours": target["total_time_s"] / 3600 * fraction, "target_usd": target["cost_usd"],
            "proxy_usd": target["cost_usd"] * fraction if target["cost_usd"] is not None else None}


def proportions(cfg) -> dict[str, float]:
    """The datasets' weights the plan keeps among the ones it does not vary: the mixture's first stage's."""
    return cfg.mixture.stages[0].weights if cfg.mixture.stages else {n: 1.0 for n in cfg.datasets}


def target_mixture(cfg, share: float):
    """The config's mixture with the varied dataset at `share` (the proxies' mixture, at the target's length)."""
    weights = proxies.mixture_weights(cfg.plan.varied, share, proportions(cfg))
    return type(cfg.mixture).model_validate({**cfg.mixture.model_dump(), "stages": [{"weights": weights}]})


def format_plan(result: dict, cfg) -> str:
    plan, rec = cfg.plan, result["recommendation"]
    c = result["compute"]
    if result.get("mode") == "sizes":
        errors = np.abs(result["fit"]["loo_relative"])
        return "\n".join([f"[plan] {len(result['points'])} points from {len(plan.sizes)} sizes; the proxies cost "
                          f"{c['fraction']:.2f}x the target's compute; leave-one-out error mean {errors.mean():.2%}, "
                          f"max {errors.max():.2%}", *ladder.format_ladder(result)])
    money = f", ${c['proxy_usd']:,.2f} against ${c['target_usd']:,.2f}" if c.get("proxy_usd") is not None else ""
    lines = [f"[plan] {len(result['points'])} points from {len(plan.share_values)} shares of {plan.varied}; the proxies "
             f"cost {c['fraction']:.2f}x the target's compute ({c['proxy_steps']:,} steps against "
             f"{c['target_steps']:,}; by tokenmill estimate on {c['devices']}: {c['proxy_hours']:.2f} h against "
             f"{c['target_hours']:.2f} h{money})"]
    for name, fit in result["fits"].items():
        errors = np.abs(fit["loo_relative"])
        lines.append(f"[plan] {name}: leave-one-out error mean {errors.mean():.2%}, max {errors.max():.2%}")
    if rec["share"] is None:
        lines += [f"[plan] no recommendation: {why}" for why in rec.get("poor_fit", [])]
        if rec.get("infeasible"):
            lines.append(f"[plan] no recommendation: {rec['infeasible']}")
        if rec.get("longer_proxies"):
            more = rec["longer_proxies"]
            lines.append(f"[plan] proxies that would tell: plan.budgets {more['budgets']} cost {more['fraction']:.2f}x "
                         f"the target's compute with these {len(plan.share_values)} shares, "
                         f"{more['fraction_three_shares']:.2f}x with three")
        return "\n".join(lines)
    start = result["base"][plan.constraint.set]
    if rec.get("left_out"):
        kept = sorted({p["share"] for p in result["points"]} - {rec["left_out"]["share"]})
        lines.append(f"[plan] share {rec['left_out']['share']:g} left out: with it, " + "; ".join(rec["left_out"]["why"])
                     + f". Fitted without it, the search keeps to [{kept[0]:g}, {kept[-1]:g}]")
    lines.append(f"[plan] recommended {plan.varied} share: {rec['share']:.2f} (the others "
                 f"{1 - rec['share']:.2f}); {plan.constraint.set} may rise {rec['max_rise']:.4f} bits/byte over the "
                 f"start's {start:.4f}")
    lines.append(f"{'set':<16} {'start':>8} {'predicted at the target [95% CI]':>36}")
    for name, p in rec["prediction"].items():
        doubt = "   not reliable: " + "; ".join(rec["objective_unreliable"]) \
            if name == plan.objective.set and rec.get("objective_unreliable") else ""
        lines.append(f"{name:<16} {result['base'].get(name, float('nan')):>8.4f} "
                     f"{p['bits_per_byte']:>14.4f} [{p['ci'][0]:.4f}, {p['ci'][1]:.4f}]{doubt}")
    return "\n".join(lines)


def measured(metrics: Path) -> dict[str, float]:
    """The target's bits per byte per set at its last evaluation in training: the same sets, windows and
    per-set budget as the proxies' points (the eval stage's results.json uses eval.max_tokens, other windows)."""
    return proxies.final_bits_per_byte(metrics)[1]


def check(result: dict, measured: dict[str, float]) -> dict:
    """Predicted against measured bits per byte of each set, after the target ran at the recommended share."""
    out = {}
    for name, p in result["recommendation"].get("prediction", {}).items():
        if name in measured:
            m = measured[name]
            out[name] = {"predicted": p["bits_per_byte"], "ci": p["ci"], "measured": m,
                         "reliable": not (name == result.get("objective") and result["recommendation"].get(
                             "objective_unreliable")),
                         "error_relative": m / p["bits_per_byte"] - 1, "inside_ci": p["ci"][0] <= m <= p["ci"][1]}
    return out
