"""Plots for the report, as base64 PNGs to inline in one self-contained HTML file."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def loss_curves(rows: list[dict], unigram_entropy: float | None) -> str | None:
    """The training loss and one curve per evaluation set (val/NAME/loss)."""
    train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    sets = sorted({k[len("val/"):-len("/loss")] for r in rows for k in r if k.startswith("val/") and k.endswith("/loss")})
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(*zip(*train), label="train")
    for name in sets:
        key = f"val/{name}/loss"
        ax.plot(*zip(*[(r["step"], r[key]) for r in rows if key in r]), "o-", label=f"eval: {name}")
    if unigram_entropy:
        ax.axhline(unigram_entropy, color="grey", ls="--", label="unigram entropy")
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title="Loss")
    ax.legend()
    return _png(fig)


def bits_per_byte_curves(rows: list[dict]) -> str | None:
    """One curve per evaluation set in bits per byte (val/NAME/bits_per_byte), step 0 included."""
    sets = sorted({k[len("val/"):-len("/bits_per_byte")] for r in rows for k in r
                   if k.startswith("val/") and k.endswith("/bits_per_byte")})
    if not sets:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name in sets:
        key = f"val/{name}/bits_per_byte"
        ax.plot(*zip(*[(r["step"], r[key]) for r in rows if key in r]), "o-", label=f"eval: {name}")
    ax.set_ylim(bottom=0)
    ax.set(xlabel="optimizer step", ylabel="bits per byte", title="Evaluation in bits per byte")
    ax.legend()
    return _png(fig)


def learning_rate(rows: list[dict]) -> str | None:
    lr = [(r["step"], r["train/lr"]) for r in rows if "train/lr" in r]
    if not lr:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.plot(*zip(*lr))
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    return _png(fig)


def metric_over_steps(rows: list[dict], key: str, title: str, ylabel: str) -> str | None:
    """One logged metric (e.g. perf/tokens_per_s, perf/mfu, mem/peak_gib) against the optimizer step."""
    points = [(r["step"], r[key]) for r in rows if key in r]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.plot(*zip(*points))
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.set_ylim(bottom=0)  # from zero: a flat memory line must not look like a jump
    return _png(fig)


def funnel(stages: list[tuple[str, int, int]], unit: str) -> str | None:
    """Horizontal bars of (stage, in, out)."""
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * len(stages)))
    names = [s[0] for s in stages][::-1]
    ax.barh(names, [s[1] for s in stages][::-1], color="#c8d6e5", label="in")
    ax.barh(names, [s[2] for s in stages][::-1], color="#2e86de", label="out")
    ax.set(xlabel=unit, title=f"Data funnel ({unit})")
    ax.legend(loc="lower right")
    return _png(fig)


def drops(drop_counts: dict[str, int]) -> str | None:
    if not drop_counts:
        return None
    items = sorted(drop_counts.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.4 * len(items)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#ee5253")
    ax.set(xlabel="documents dropped", title="Drops by filter and reason")
    return _png(fig)


def histogram(values: list[int], title: str, xlabel: str) -> str | None:
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.hist(values, bins=40, color="#10ac84", log=True)
    ax.set(xlabel=xlabel, ylabel="documents (log)", title=title)
    if min(values) > 0 and max(values) / max(1, min(values)) > 100:
        ax.set_xscale("log")
    return _png(fig)


def bars(counts: dict[str, int], title: str, xlabel: str) -> str | None:
    if not counts:
        return None
    items = sorted(counts.items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(7, max(1.8, 0.6 + 0.35 * len(items))))  # one bar still shows
    ax.barh([k for k, _ in items], [v for _, v in items], color="#5f27cd")
    ax.set(xlabel=xlabel, title=title)
    return _png(fig)


def score_histograms(scores: dict[str, dict[str, int]], bin_width: float) -> str | None:
    """Documents per score bin, one panel per quality classifier ({filter: {bin's lower edge: documents}})."""
    if not scores:
        return None
    fig, axes = plt.subplots(1, len(scores), figsize=(7, 2.8), squeeze=False)
    for ax, (name, bins) in zip(axes[0], scores.items()):
        ax.bar([float(b) for b in bins], list(bins.values()), width=bin_width, align="edge", color="#10ac84")
        ax.set(xlabel="score", ylabel="documents", title=f"{name} scores")
    return _png(fig)


def cluster_sizes(by_method: dict[str, dict[str, int]]) -> str | None:
    """Number of duplicate clusters of each size, one series per dedup method (log-log)."""
    series = {method: sizes for method, sizes in by_method.items() if sizes}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.8))
    for method, sizes in series.items():
        points = sorted((int(size), count) for size, count in sizes.items())
        ax.plot(*zip(*points), marker="o", label=method)
    ax.set(xscale="log", yscale="log", xlabel="documents in the cluster", ylabel="clusters",
           title="Duplicate cluster sizes")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 2, 3, 10 rather than 2x10^0
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.legend()
    return _png(fig)


def loss_by_position(results: dict) -> str | None:
    """Each set's loss by position bucket, after (solid) and before (dashed) training."""
    from tokenmill.evaluation.positions import in_order
    sets = {name: in_order(r["loss_by_position"]) for name, r in results.get("sets", {}).items()
            if "loss_by_position" in r}
    if not sets:
        return None
    before = {name: in_order(r["loss_by_position"]) for name, r in results.get("before", {}).get("sets", {}).items()
              if "loss_by_position" in r}
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, buckets in sets.items():
        line, = ax.plot(list(buckets), list(buckets.values()), "o-", label=f"{name}: after")
        if before.get(name):
            ax.plot(list(before[name]), list(before[name].values()), "o--", color=line.get_color(),
                    label=f"{name}: before")
    ax.set(xlabel="positions in the window (tokens)", ylabel="loss (nats/token)", title="Loss by position")
    ax.legend()
    return _png(fig)


def before_after_bars(results: dict) -> str | None:
    """Each set's bits per byte before and after, with 95% error bars."""
    sets = {name: r for name, r in results.get("sets", {}).items() if "bits_per_byte_ci" in r}
    if not sets:
        return None
    before = results.get("before", {}).get("sets", {})
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = range(len(sets))
    for offset, label, source in ((-0.2, "before", before), (0.2, "after", sets)):
        shown = [(i, source[n]) for i, n in zip(x, sets) if "bits_per_byte_ci" in source.get(n, {})]
        if not shown:
            continue
        values = [r["bits_per_byte"] for _, r in shown]
        errors = [[v - r["bits_per_byte_ci"][0] for v, (_, r) in zip(values, shown)],
                  [r["bits_per_byte_ci"][1] - v for v, (_, r) in zip(values, shown)]]
        ax.bar([i + offset for i, _ in shown], values, width=0.4, yerr=errors, capsize=4, label=label)
    ax.set_xticks(list(x), list(sets))
    ax.set(ylabel="bits per byte", title="Evaluation sets, with 95% intervals")
    ax.legend()
    return _png(fig)


def plan_curves(result: dict) -> str | None:
    """Each evaluation set's proxy points (bits per byte against the share) with its law at every proxy budget
    (dashed) and at the target's (solid)."""
    import numpy as np

    from tokenmill.plan import laws
    points, fits = result["points"], result["fits"]
    if not points:
        return None
    fig, axes = plt.subplots(1, len(fits), figsize=(4 * len(fits), 3.4), squeeze=False)
    grid = np.linspace(min(p["share"] for p in points), max(p["share"] for p in points), 50)
    for ax, (name, fit) in zip(axes[0], fits.items()):
        own = fit["share"]["offset"] + fit["share"]["slope"] * grid  # the law's share: the set's own data's
        for tokens in sorted({p["tokens"] for p in points}):
            at = [p for p in points if p["tokens"] == tokens]
            line, = ax.plot([p["share"] for p in at], [p[name] for p in at], "o", label=f"{tokens:.2f} of the target")
            ax.plot(grid, laws.predict(laws.DCPT, np.array(fit["theta"]), own, np.full(len(grid), tokens)), "--",
                    color=line.get_color())
        ax.plot(grid, laws.predict(laws.DCPT, np.array(fit["theta"]), own, np.ones(len(grid))), "k-", label="target")
        if name in result["base"]:
            ax.axhline(result["base"][name], color="grey", ls=":", label="start")
        ax.set(xlabel=f"share of {result['varied']}", ylabel="bits per byte", title=name)
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def plan_frontier(result: dict) -> str | None:
    """Predicted domain bits per byte against the general set's rise, along the shares; the recommendation marked."""
    rec = result["recommendation"]
    if "grid" not in rec:
        return None
    rise = [g - rec["base_constraint"] for g in rec["predicted_constraint"]]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(rise, rec["predicted_objective"], "-")
    for share in (min(rec["grid"]), max(rec["grid"])):
        i = rec["grid"].index(share)
        ax.annotate(f"{share:.2f}", (rise[i], rec["predicted_objective"][i]), fontsize=8)
    ax.axvline(rec["max_rise"], color="grey", ls=":", label="allowed rise")
    if rec["share"] is not None:
        i = min(range(len(rec["grid"])), key=lambda k: abs(rec["grid"][k] - rec["share"]))
        ax.plot([rise[i]], [rec["predicted_objective"][i]], "r*", markersize=12, label=f"recommended {rec['share']:.2f}")
    ax.set(xlabel="predicted rise of the constraint set (bits per byte)", ylabel="predicted objective (bits per byte)",
           title="Domain gain against forgetting, at the target budget")
    ax.legend(fontsize=8)
    return _png(fig)


def merge_curve(record: dict) -> str | None:
    """Each merge candidate: the objective set's bits per byte against the constraint set's rise, the chosen
    one starred."""
    points = [c for c in record["candidates"] if c["rise"] is not None]
    if not points or not record.get("objective"):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    from tokenmill.merge.choose import EMA, label as weight_label
    # The line joins the candidates along their weight; the trainer's moving average is a point of its own.
    candidates = sorted((c for c in points if c["role"] == "candidate" and c["weight"] != EMA),
                        key=lambda c: c["weight"])
    ax.plot([c["rise"] for c in candidates], [c["bits_per_byte"][record["objective"]] for c in candidates], "o-")
    for c in points:
        label = weight_label(record["method"], c["weight"]) if c["role"] == "candidate" else c["role"]
        ax.annotate(label, (c["rise"], c["bits_per_byte"][record["objective"]]), fontsize=7)
        if c["role"] == "candidate" and c["weight"] == record["chosen"]:
            ax.plot([c["rise"]], [c["bits_per_byte"][record["objective"]]], "r*", markersize=12, label="chosen")
    if record.get("max_rise") is not None:
        ax.axvline(record["max_rise"], color="grey", ls=":", label="allowed rise")
    ax.set(xlabel=f"rise of {record['constraint']} over the reference (bits per byte)",
           ylabel=f"{record['objective']} bits per byte", title=f"merge: {record['method']}")
    ax.legend(fontsize=8)
    return _png(fig)
