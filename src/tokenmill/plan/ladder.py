"""From scratch: a ladder of small models predicts the target's final loss and the compute-optimal size.

Each size of `plan.sizes` trains the target's data as WSD proxies with cooldown branches (the same runs as
a mixture plan's), and Chinchilla's L(N, D) = E + A/N^α + B/D^β is fitted to the points (N: parameters
without the input embedding, in millions, the head counted as Porian et al. 2024 advise; D: tokens, in units
of the target's). It predicts the target config's final bits per byte, with intervals, and the
compute-optimal (N, D) for the target's compute (6·N·D held fixed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenmill.plan import laws


def size_label(spec) -> str:
    """A preset's name, or the keys' initials and values: {hidden_size: 64, num_hidden_layers: 2} → hs64-nhl2."""
    return spec if isinstance(spec, str) else "-".join(f"{''.join(w[0] for w in k.split('_'))}{v}"
                                                       for k, v in sorted(spec.items()))


def size_model(model_cfg, spec):
    """The target's model section at one size of the ladder: a preset, or model keys laid over the target's."""
    if isinstance(spec, str):
        shape_keys = {k: None for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                         "num_key_value_heads")}
        return model_cfg.model_copy(update={"preset": spec, **shape_keys})
    return model_cfg.model_copy(update=spec)


def parameters(cfg, model_cfg) -> int:
    """Parameters without the input embedding (a lookup), the head counted: the N of the law."""
    from tokenmill.estimate import meta_model
    model = meta_model(cfg.model_copy(update={"model": model_cfg}))
    lookup = model.get_input_embeddings().weight
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) - \
        (lookup.numel() if lookup is not model.get_output_embeddings().weight else 0)


def run_ladder(cfg, sizes: list, shards, folder: Path, force: bool, train_cfg, budget_list) -> list[dict]:
    """These sizes' proxies (skipped when done): points [{size, params, tokens, steps, set: bits per byte}]."""
    from tokenmill.plan import run_branches
    points = []
    for spec in sizes:
        model_cfg, label = size_model(cfg.model, spec), size_label(spec)
        n = parameters(cfg, model_cfg)
        for budget, _, last in run_branches(model_cfg, train_cfg, cfg.mixture, shards, budget_list,
                                            folder / f"size-{label}", f"{label} ({n / 1e6:.2f}M)", force):
            points.append({"size": label, "params": n, "tokens": budget.steps / cfg.train.max_steps,
                           "steps": budget.steps, **last})
    return points


def data_tokens(shards) -> int:
    """The training tokens there are: the compute-optimal run may need more than once over them."""
    from tokenmill.tokenize.shards import read_meta
    folders = shards.values() if isinstance(shards, dict) else [shards]
    return sum(read_meta(Path(f) / "train")["n_tokens"] for f in folders)


def answer(cfg, points: list[dict], resamples: int, available_tokens: int) -> dict:
    """The law of the objective set, its checks, the target's predicted loss and the compute-optimal size."""
    name = cfg.plan.objective.set if cfg.plan.objective else next(k for k in points[0] if k not in
                                                                   ("size", "params", "tokens", "steps"))
    n = np.array([p["params"] for p in points]) / 1e6
    d = np.array([p["tokens"] for p in points])
    y = np.array([p[name] for p in points])
    theta = laws.fit(laws.CHINCHILLA, n, d, y)
    loo = laws.leave_one_out(laws.CHINCHILLA, n, d, y, theta)
    boots = laws.bootstrap(laws.CHINCHILLA, n, d, y, theta, resamples)
    keep = d < d.max()
    held = laws.fit(laws.CHINCHILLA, n[keep], d[keep], y[keep])
    holdout = laws.predict(laws.CHINCHILLA, held, n[~keep], d[~keep]) / y[~keep] - 1
    target_n = parameters(cfg, cfg.model) / 1e6

    def at(th, size, tokens):
        return float(laws.predict(laws.CHINCHILLA, th, np.array([size]), np.array([tokens]))[0])
    draws = [at(t, target_n, 1.0) for t in boots]
    # The same compute (6·N·D) spent on other sizes: D = target_n / N in units of the target's tokens.
    grid = np.geomspace(n.min() / 4, n.max() * 16, 200)
    along = laws.predict(laws.CHINCHILLA, theta, grid, target_n / grid)
    best = int(np.argmin(along))
    poor = [f"its {label} error reaches {float(np.abs(err).max()):.1%} (limit 2%)"
            for label, err in (("leave-one-out", loo), ("budget hold-out", holdout)) if np.abs(err).max() > 0.02]
    return {"mode": "sizes", "objective": name, "points": points, "base": {},
            "fit": {"law": "chinchilla", "theta": theta.tolist(), "loo_relative": loo.tolist(),
                    "budget_holdout": holdout.tolist(), "units": "N in millions of parameters without the input "
                    "embedding; D in units of the target's tokens"},
            "recommendation": {"prediction": {name: {"bits_per_byte": at(theta, target_n, 1.0),
                                                     "ci": [float(np.quantile(draws, 0.025)),
                                                            float(np.quantile(draws, 0.975))]}},
                               "objective_unreliable": poor, "target_params": target_n * 1e6},
            "compute_optimal": {"params": float(grid[best] * 1e6), "tokens_of_target": float(target_n / grid[best]),
                                "bits_per_byte": float(along[best]), "grid_edge": best in (0, len(grid) - 1),
                                "epochs": float(target_n / grid[best] * target_tokens(cfg) / available_tokens)}}


def target_tokens(cfg) -> int:
    t = cfg.train
    return t.max_steps * t.seq_len * t.micro_batch_size * t.accum_steps()


def format_ladder(result: dict) -> list[str]:
    rec, best = result["recommendation"], result["compute_optimal"]
    name, p = result["objective"], result["recommendation"]["prediction"][result["objective"]]
    doubt = "; not reliable: " + "; ".join(rec["objective_unreliable"]) if rec["objective_unreliable"] else ""
    lines = [f"[plan] the target ({rec['target_params'] / 1e6:.2f}M parameters without the input embedding): {name} "
             f"{p['bits_per_byte']:.4f} [{p['ci'][0]:.4f}, {p['ci'][1]:.4f}] bits/byte predicted{doubt}",
             f"[plan] the same compute at its optimum: {best['params'] / 1e6:.2f}M parameters on "
             f"{best['tokens_of_target']:.2f}x the target's tokens ({best['epochs']:.1f} passes over the data: the "
             f"law assumes fresh tokens), {best['bits_per_byte']:.4f} bits/byte"
             + (" (at the edge of the sizes searched: extrapolated)" if best["grid_edge"] else "")]
    return lines
