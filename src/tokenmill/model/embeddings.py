"""The embedding rows of a model: grown for an extended vocabulary, and which of them train, at what rate.

A tokenizer extended with `tokenmill tokenizer extend` carries `extension.json`: each new token's id and
the base tokens it replaces. `transfer` resizes the input embedding and the LM head (a tied head stays
tied: one matrix) to the padded vocabulary and initialises each new row:
  - fvt: the mean of the base rows of the token's base segmentation (Gee et al. 2022; Swallow and EEVE do
    this), for the input rows and, when untied, separately for the head's rows;
  - mean: the mean of all base rows, the same vector for every new row (what transformers'
    `resize_token_embeddings` gives, up to its 1e-9 noise);
  - random: normal(0, initializer_range), as a fresh model's rows;
  - calibrated: input rows by FVT; each new token's output row is its first base piece's, plus log r·v, where r
    is the token's share of the corpus tokens that start with that piece and v a direction with h·v ≈ 1 over
    the base's final hidden states (ridge). The new token then takes the share r of the probability the base
    gave its first piece, and the piece's own row is lowered by its own share, so the group keeps the base's
    total. A new token's output row must differ from its input row, so a tied head is untied (+vocab × hidden
    parameters); the printout and the model card say so. EEVE initialises output rows from the first piece
    too, uncalibrated: it keeps the piece's full probability as well, and is worse than FVT (docs/language.md).
Rows the tokenizer never produces (padding to a multiple of 64, special and reserved tokens) stay out of
every mean; padding rows get the mean of the base rows, so they take no more probability than a typical row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tokenmill.model.config import EmbeddingsConfig


def new_token_ids(extension: dict | None) -> list[int]:
    return [t["id"] for t in extension["new_tokens"]] if extension else []


def check_base(model, extension: dict, where: str) -> None:
    """The base model must be the one the tokenizer was extended from: its rows cover the base vocabulary."""
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < extension["base_vocab_size"] or rows > extension["padded_vocab_size"] + 1024:
        raise ValueError(f"{where}: the tokenizer was extended from a base of {extension['base_vocab_size']:,} "
                         f"tokens ({extension['base']}), but this model has {rows:,} embedding rows; extend the "
                         "tokenizer of this model (tokenmill tokenizer extend MODEL ...), or train the model it "
                         "was extended from")


@torch.no_grad()
def transfer(model, extension: dict, cfg: EmbeddingsConfig | None = None, seed: int = 0,
             corpus: Corpus | None = None) -> dict:
    """Grow the model's vocabulary to the extension's padded size and initialise the new rows in place; returns
    what was done for the printout and the model card. `calibrated` and `distill_steps` read `corpus` (the
    training text); without it (a run resumed, a model rebuilt to load trained weights) they only untie the
    head, since the rows come from the checkpoint."""
    cfg = cfg or EmbeddingsConfig()
    init, distill = cfg.init, cfg.distill_steps
    states = base_hidden_states(model, corpus.pairs) if corpus and cfg.reads_corpus else None  # the base's, once
    targets = states if states and distill else None
    direction = fit_direction(states, model.get_input_embeddings().weight.device) \
        if states and init == "calibrated" else None
    old_rows = model.get_input_embeddings().weight.shape[0]
    rows = max(old_rows, extension["padded_vocab_size"])
    produced = torch.tensor([i for i in extension["produced_base_ids"] if i < old_rows])
    model.resize_token_embeddings(rows, mean_resizing=False)
    tied = model.get_output_embeddings() is None or \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    matrices = [model.get_input_embeddings().weight] + ([] if tied else [model.get_output_embeddings().weight])
    new_ids = set(new_token_ids(extension))
    padding = [i for i in range(extension["base_vocab_size"], rows) if i not in new_ids and i >= old_rows]
    generator = torch.Generator().manual_seed(seed)
    for weight in matrices:
        mean = weight[produced].float().mean(0)
        for token in extension["new_tokens"]:
            if init in ("fvt", "calibrated"):
                weight[token["id"]] = weight[torch.tensor(token["base_ids"])].float().mean(0).to(weight.dtype)
            elif init == "mean":
                weight[token["id"]] = mean.to(weight.dtype)
            else:
                std = getattr(model.config, "initializer_range", 0.02)
                weight[token["id"]] = (torch.randn(weight.shape[1], generator=generator) * std).to(weight.dtype)
        if padding:
            weight[torch.tensor(padding)] = mean.to(weight.dtype)
    done = {"init": init, "new_rows": len(new_ids), "untied": False, "distill_steps": distill}
    if tied and cfg.reads_corpus:
        untie(model)
        done.update(untied=True, head_parameters_added=model.get_output_embeddings().weight.numel())
    if targets is not None:
        with torch.enable_grad():
            losses = distill_input_rows(model, extension, corpus.pairs, targets, distill)
        done["distill_loss"] = [round(float(np.mean(losses[:10])), 4), round(float(np.mean(losses[-10:])), 4)]
    if direction is not None:
        done.update(calibrate_head(model.get_output_embeddings().weight, extension, corpus.counts, direction))
    return done


def describe_transfer(done: dict) -> str:
    """One line for the printout: how the new rows were initialised, and an untied head said with its cost."""
    line = f"[embeddings] {done['new_rows']:,} new rows: " + {
        "fvt": "the mean of their base pieces' rows (FVT)", "mean": "the mean of all base rows",
        "random": "random", "calibrated": "input rows by FVT, output rows by their first base piece calibrated "
                                          "by its corpus share"}[done["init"]]
    if done.get("h_dot_v"):
        line += f" (h·v = {done['h_dot_v'][0]:.3f} ± {done['h_dot_v'][1]:.3f})"
    if done.get("distill_loss"):
        line += (f"; input rows distilled from the base's hidden states for {done['distill_steps']:,} steps "
                 f"(squared error {done['distill_loss'][0]:.3f} → {done['distill_loss'][1]:.3f})")
    if done.get("untied"):
        line += (f"; the tied head was untied so that new tokens' output rows can differ from their input rows: "
                 f"+{done['head_parameters_added'] / 1e6:.1f}M parameters (model.embeddings.init: fvt without "
                 "distill_steps keeps it tied)")
    return line


@dataclass
class Corpus:
    """What the calibrated head and the distilled rows read from the training data: how often each (extended)
    id occurs, and windows of it as (extended ids, the same text in base ids, index of each extended token's
    last base piece)."""
    counts: np.ndarray
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def corpus_sample(shards, extension: dict, seq_len: int, windows: int = 64, max_tokens: int = 50_000_000) -> Corpus:
    """Token counts over (up to max_tokens of) the training shards, and `windows` evenly spaced aligned windows
    of at most seq_len base ids (each new id spelled as its base pieces)."""
    counts = np.zeros(extension["padded_vocab_size"], dtype=np.int64)
    seen = 0
    for shard in shards:
        tokens = np.asarray(shard.tokens[:max(0, max_tokens - seen)])
        counts += np.bincount(tokens, minlength=len(counts))[:len(counts)]
        seen += len(tokens)
    spelled = {t["id"]: t["base_ids"] for t in extension["new_tokens"]}
    stream = np.concatenate([np.asarray(s.tokens[:seq_len * windows]) for s in shards])
    pairs = []
    for start in sorted(set(np.linspace(0, max(0, len(stream) - seq_len), windows).astype(int).tolist())):
        ext, base, ends = [], [], []
        for t in stream[start:start + seq_len].tolist():
            pieces = spelled.get(t, [t])
            if len(base) + len(pieces) > seq_len:
                break
            ext.append(t)
            base += pieces
            ends.append(len(base) - 1)
        if len(ext) > 1:
            pairs.append((torch.tensor(ext), torch.tensor(base), torch.tensor(ends)))
    if not pairs:
        raise ValueError("model.embeddings: init: calibrated and distill_steps read windows of the training text, "
                         "and it has none; add text or use init: fvt without distill_steps")
    return Corpus(counts, pairs)


def _body(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


@torch.no_grad()
def base_hidden_states(model, pairs) -> list[torch.Tensor]:
    """The base model's final (normalised) hidden states over each pair's base ids, on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    states = [_body(model)(input_ids=base[None].to(device)).last_hidden_state[0].float().cpu() for _, base, _ in pairs]
    model.train(was_training)
    return states


@torch.no_grad()
def fit_direction(states: list[torch.Tensor], device, ridge: float = 1e-3) -> tuple[torch.Tensor, float, float]:
    """v with h·v ≈ 1 over the base's final hidden states h (ridge regression): adding log r·v to an output
    row then adds about log r to its logit, whatever the context. Returns v (on `device`) and h·v's mean and
    spread."""
    hidden = torch.cat(states)
    gram = hidden.T @ hidden
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0])
    v = torch.linalg.solve(gram, hidden.sum(0))
    fit = hidden @ v
    return v.to(device), float(fit.mean()), float(fit.std())


def distill_input_rows(model, extension: dict, pairs, targets: list[torch.Tensor], steps: int,
                       lr: float = 3e-3) -> list[float]:
    """Train only the new input rows so that the model's final hidden state at each token of an extended
    window equals the base's at that token's last base piece (squared error): the new tokens learn to look,
    to the unchanged base, like the pieces they replace (AweDist's idea). Needs an untied head, or the new
    output rows would move with them. Adam at 3e-3: on 1,000 Russian tokens (256 steps), step-0 bits per byte
    1.812 at 1e-3, 1.775 at 3e-3, 1.835 at 1e-2 (its loss rose)."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    new_ids = torch.tensor(new_token_ids(extension), device=device)
    rows = torch.nn.Parameter(embed.weight[new_ids].detach().float().clone())
    slot = torch.full((embed.weight.shape[0],), -1, dtype=torch.long, device=device)
    slot[new_ids] = torch.arange(len(new_ids), device=device)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam([rows], lr=lr)
    was_training = model.training
    model.eval()
    losses = []
    try:
        for step in range(steps):
            ids, _, ends = (t.to(device) for t in pairs[step % len(pairs)])
            embeds = embed(ids[None]).detach().float()
            is_new = slot[ids] >= 0
            embeds[0, is_new] = rows[slot[ids][is_new]]
            hidden = _body(model)(inputs_embeds=embeds.to(embed.weight.dtype)).last_hidden_state[0].float()
            loss = torch.nn.functional.mse_loss(hidden, targets[step % len(pairs)].to(device)[ends])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        for p, grad in frozen:
            p.requires_grad_(grad)
        model.train(was_training)
    with torch.no_grad():
        embed.weight[new_ids] = rows.detach().to(embed.weight.dtype)
    return losses


@torch.no_grad()
def untie(model) -> None:
    """Give the LM head a matrix of its own, equal to the input embedding (the logits do not change)."""
    model.config.tie_word_embeddings = False
    if getattr(model.config, "get_text_config", None):
        model.config.get_text_config().tie_word_embeddings = False
    model.get_output_embeddings().weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())


@torch.no_grad()
def calibrate_head(head: torch.Tensor, extension: dict, counts: np.ndarray, direction) -> dict:
    """Each new token's output row := its first base piece's + log r·v, and the piece's own row += log r_piece·v,
    with r the shares of the group {piece, the new tokens that start with it} in the corpus (add-½ smoothed).
    Only for pieces that text without the target's scripts never holds (`Ġп`): a piece such as `Ġ` is
    predicted in English too, where a share learned on the target's text would move probability to new
    tokens, so its group keeps FVT rows and the piece its own row. Text without the target's scripts then
    keeps the base's logits for every base token, and new tokens take no more from it than with FVT."""
    v, fit_mean, fit_std = direction
    groups: dict[int, list[int]] = {}
    for token in extension["new_tokens"]:
        if token.get("first_piece_in_script"):
            groups.setdefault(token["base_ids"][0], []).append(token["id"])
    first_rows = {piece: head[piece].float().clone() for piece in groups}
    for piece, members in groups.items():
        ids = [piece, *members]
        n = counts[ids].astype(np.float64) + 0.5
        for token_id, log_share in zip(ids, np.log(n / n.sum()).tolist()):
            head[token_id] = (first_rows[piece] + log_share * v).to(head.dtype)
    return {"calibrated_groups": len(groups), "calibrated_rows": sum(map(len, groups.values())),
            "h_dot_v": [round(fit_mean, 4), round(fit_std, 4)]}


def embedding_weights(model) -> list[torch.nn.Parameter]:
    """The input embedding and, when it is a matrix of its own (untied), the LM head."""
    params = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not params[0]:
        params.append(head.weight)
    return params


class RowGradients:
    """Keeps the embedding rows that must not train at their values, by zeroing their gradient rows before
    each optimizer step; during the first `new_rows_first_steps` steps also drops every other gradient, so
    that only the new rows train (AdamW skips a parameter without a gradient: its moments stay untouched).
    A row with a zero gradient from the first step has zero moments, and AdamW does not move it (embeddings
    have no weight decay here)."""

    def __init__(self, model, cfg: EmbeddingsConfig, new_ids: list[int]):
        """`model` already on its device: the masks are made there once, not at every step."""
        self.weights = embedding_weights(model)
        self.first_steps, self.others = cfg.new_rows_first_steps, None
        new_only = _mask(self.weights[0], new_ids)
        self.rows = new_only if cfg.train == "new" else None  # "none" is frozen by requires_grad (build)
        self.first_rows = new_only
        if self.first_steps:
            ids = {id(w) for w in self.weights}
            self.others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]

    @property
    def active(self) -> bool:
        return self.rows is not None or bool(self.first_steps)

    def __call__(self, step: int) -> None:
        first = step < self.first_steps
        rows = self.first_rows if first else self.rows
        if first:
            for p in self.others:
                p.grad = None
        if rows is None:
            return
        for weight in self.weights:
            if weight.grad is not None:
                weight.grad.mul_(rows)


def _mask(weight: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """A [rows, 1] column of 1 for `ids` and 0 elsewhere, on the weight's device and in its dtype."""
    mask = torch.zeros(weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
    if ids:
        mask[torch.tensor(ids, device=weight.device)] = 1.0
    return mask
