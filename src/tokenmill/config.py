"""The pipeline config: YAML → typed sections → validation → overrides → the resolved YAML in the run.

Each section is validated on its own, so one message lists the problems of every section; checks that
span sections run once the sections involved are valid.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from tokenmill.dedup import DedupConfig
from tokenmill.evaluation import EvalConfig
from tokenmill.export import K_QUANTS, ExportConfig
from tokenmill.filters import FilterConfig
from tokenmill.generate import GenerateConfig
from tokenmill.ingest import IngestConfig
from tokenmill.merge import MergeConfig
from tokenmill.model import PRESETS, ModelConfig
from tokenmill.plan.config import PlanConfig
from tokenmill.recipes import RecipeConfig, expand
from tokenmill.schema import StrictModel
from tokenmill.serve import ServeConfig
from tokenmill.sft import SFTConfig
from tokenmill.storage import StorageConfig
from tokenmill.tokenize import TokenizeConfig
from tokenmill.train.config import TrainConfig
from tokenmill.train.mixture import MixtureConfig

BUILTIN_CONFIGS = Path(__file__).parent / "configs"


class DatasetConfig(IngestConfig):
    """One named dataset: what to ingest (the `ingest` keys) and, optionally, its own filter or dedup
    section in place of the run's."""
    filter: FilterConfig | None = Field(None, description="this dataset's filter section (default: the run's)")
    dedup: DedupConfig | None = Field(None, description="this dataset's dedup section (default: the run's)")

    def ingest_config(self) -> IngestConfig:
        return IngestConfig(**self.model_dump(exclude={"filter", "dedup"}))


class PipelineConfig(StrictModel):
    datasets: dict[str, DatasetConfig] = Field(
        default_factory=dict, description="named datasets, each through ingest → filter → dedup on its own, "
                                          "tokenized with one tokenizer and mixed by the mixture section; "
                                          "in place of ingest.paths")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    merge: MergeConfig | None = Field(None, description="after training: merge with the start model, a chat vector "
                                                        "or the last checkpoints, the weight chosen on the eval sets")
    sft: SFTConfig | None = Field(None, description="after training (and merge): supervised fine-tuning on chats")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    plan: PlanConfig | None = Field(None, description="tokenmill plan: proxy runs that choose the mixture share")
    storage: StorageConfig = Field(default_factory=StorageConfig, exclude=True,  # it may hold credentials
                                   description="fsspec options per protocol (s3, gcs, az, ...) for storage URLs")


SECTIONS: dict[str, type] = {name: f.annotation for name, f in PipelineConfig.model_fields.items()}


class ConfigError(ValueError):
    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s) in the config:\n" + "\n".join(f"  - {p}" for p in problems))


def builtin_configs() -> list[str]:
    return [p.stem for p in sorted(BUILTIN_CONFIGS.glob("*.yaml"))]


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a built-in config (`builtin_configs()`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    known = ", ".join(builtin_configs())
    raise FileNotFoundError(f"{name_or_path}: no such config file, and no built-in config of that name ({known})")


def apply_override(raw: dict, assignment: str) -> None:
    """`train.lr_max=3e-4` → raw["train"]["lr_max"] = 3e-4 (the value is read as YAML)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError("--set", [f"{assignment!r}: expected KEY=VALUE, e.g. train.lr_max=3e-4"])
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("--set", [f"{key}: {part} is not a section"])
    node[leaf] = yaml.safe_load(value)


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                dataset_names: list[str] = ()) -> PipelineConfig:
    source = str(path) if path else "defaults"
    raw = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(source, [f"not valid YAML: {e}"]) from e
        if not isinstance(raw, dict):
            raise ConfigError(source, [f"top level must be a mapping of sections ({', '.join(SECTIONS)})"])
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate(raw, source, dataset_names)


def validate(raw: dict, source: str = "config", dataset_names: list[str] = ()) -> PipelineConfig:
    """`dataset_names`: the datasets a command was given by name (`tokenmill train NAME=DIR ...`), when the
    config has no datasets section; a recipe's curriculum is laid over them."""
    problems, sections = [], {}
    try:
        raw = expand(raw, list(raw.get("datasets") or {}) or list(dataset_names))
    except ValidationError:
        pass  # a bad recipe section is reported with the other sections' problems below
    except ValueError as e:
        problems.append(str(e))
    for name in raw:
        if name not in SECTIONS:
            problems.append(f"{name}: unknown section; valid sections: {', '.join(SECTIONS)}")
    for name, model in SECTIONS.items():
        if raw.get(name) is None and PipelineConfig.model_fields[name].default is None:
            sections[name] = None  # an optional section (plan) left out
            continue
        value = raw.get(name) or {}
        try:
            sections[name] = TypeAdapter(model).validate_python(value)
        except ValidationError as e:
            problems.extend(_describe(name, model, err) for err in e.errors())
    model, tokenize = sections.get("model"), sections.get("tokenize")
    if model and model.init_from and tokenize and not tokenize.tokenizer:
        # Continued pre-training reads text through the base model's own tokenizer.
        sections["tokenize"] = tokenize.model_copy(update={"tokenizer": model.init_from})
    problems.extend(_cross_checks(sections))
    if problems:
        raise ConfigError(source, problems)
    return PipelineConfig(**sections)


def _describe(section: str, model: type, err: dict) -> str:
    path = ".".join([section, *map(str, err["loc"])])
    if section == "datasets":  # {name: DatasetConfig}: the keys belong to the named dataset's model
        model = DatasetConfig
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key; valid keys: {', '.join(model.model_fields)}"
    seen = err.get("input")
    shown = "" if isinstance(seen, dict) else f" (got {seen!r})"
    return f"{path}: {err['msg']}{shown}"


def _cross_checks(s: dict) -> list[str]:
    problems = []
    model, train = s.get("model"), s.get("train")
    if model:
        if not (model.preset or model.init_from or model.config):
            problems.append("model: give model.preset, model.init_from (continued pre-training) or model.config "
                            "(any transformers causal-LM config)")
        elif model.preset is not None and model.preset not in PRESETS:
            problems.append(f"model.preset: unknown preset (got {model.preset!r}); choose one of {', '.join(PRESETS)}")
        elif model.preset is not None and train:
            max_len = model.shape()["max_position_embeddings"]
            if train.seq_len > max_len:
                problems.append(f"train.seq_len: {train.seq_len} exceeds model max_position_embeddings {max_len}; "
                                f"lower train.seq_len or raise model.max_position_embeddings")
            stages = s.get("mixture").stages if s.get("mixture") else []
            problems += [f"mixture.stages[{i}].seq_len: {stage.seq_len} exceeds model max_position_embeddings "
                         f"{max_len}; raise model.max_position_embeddings" for i, stage in enumerate(stages)
                         if stage.seq_len and stage.seq_len > max_len]
    datasets, ingest, mixture = s.get("datasets"), s.get("ingest"), s.get("mixture")
    if datasets and ingest and ingest.paths:
        problems.append("datasets: give either datasets (named, each with its paths) or ingest.paths, not both")
    if datasets and mixture:
        problems += [f"mixture.stages[{i}].weights.{name}: no dataset of that name (datasets: {', '.join(datasets)})"
                     for i, stage in enumerate(mixture.stages) for name in stage.weights if name not in datasets]
        problems += [f"mixture.subsample.{name}: no dataset of that name (datasets: {', '.join(datasets)})"
                     for name in mixture.subsample if name not in datasets]
    tokenize = s.get("tokenize")
    if tokenize and tokenize.extend:
        if not tokenize.tokenizer:
            problems.append("tokenize.extend: needs the base to extend: tokenize.tokenizer or model.init_from")
        unknown = [n for n in tokenize.extend.datasets or [] if n not in (datasets or {})]
        if unknown:
            problems.append(f"tokenize.extend.datasets: no dataset named {', '.join(unknown)} (datasets: "
                            f"{', '.join(datasets or {}) or 'none'})")
        if model and model.embeddings.train == "none":
            problems.append("model.embeddings.train: none would leave the new tokens' rows untrained "
                            "(tokenize.extend); use new or all")
    export = s.get("export")
    if export and "gguf" in export.formats:  # refused now, not after training
        import importlib.util
        missing = [m for m in ("gguf", "xllamacpp") if importlib.util.find_spec(m) is None]
        needs = {"gguf"} | ({"xllamacpp"} if set(export.gguf_outtypes) & set(K_QUANTS) else set())
        if needs & set(missing):
            problems.append(f"export.gguf_outtypes: {', '.join(export.gguf_outtypes)} need "
                            f"{' and '.join(sorted(needs & set(missing)))}, not installed: pip install 'tokenmill[gguf]'")
    if model and model.quantize:
        import importlib.util
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append("model.quantize: needs bitsandbytes, not installed: pip install 'tokenmill[qlora]'")
        if train and train.parallel == "fsdp":
            problems.append("model.quantize: a 4-bit base does not shard with train.parallel: fsdp here; use ddp")
    if train and train.eval_tokens is not None and train.eval_tokens < train.seq_len:
        problems.append(f"train.eval_tokens: {train.eval_tokens} is less than one sequence (train.seq_len {train.seq_len})")
    if s.get("merge") and train:
        problems += _merge_checks(s["merge"], datasets or {}, train, model)
    if s.get("plan") and train:
        problems += _plan_checks(s["plan"], datasets or {}, train, model)
    return problems


def _merge_checks(merge, datasets: dict, train: TrainConfig, model) -> list[str]:
    sets = [*(train.eval_sets or datasets or ["val"]), *merge.sets]
    problems = [f"merge.{role}.set: {goal.set!r} is not an evaluation set (the sets: {', '.join(sets)})"
                for role, goal in (("objective", merge.objective), ("constraint", merge.constraint))
                if goal is not None and goal.set not in sets]
    if merge.method == "interpolate" and not (merge.start or (model and model.init_from)):
        problems.append("merge.start: interpolate needs the model training started from (model.init_from is not set)")
    return problems


def _ladder_checks(plan, datasets: dict, train: TrainConfig, model) -> list[str]:
    from tokenmill.plan.config import MIN_PROXY_STEPS
    problems = ["plan.sizes: a ladder trains from scratch; model.init_from is set (a CPT plan varies shares)"] \
        if model and model.init_from else []
    sets = list(train.eval_sets or datasets or ["val"])
    if plan.objective and plan.objective.set not in sets:
        problems.append(f"plan.objective.set: {plan.objective.set!r} is not an evaluation set (the sets: {', '.join(sets)})")
    unknown = [s for s in plan.sizes if isinstance(s, str) and s not in PRESETS]
    problems += [f"plan.sizes: unknown preset {s!r}; choose one of {', '.join(PRESETS)} or give model keys" for s in unknown]
    shortest = round(min(plan.budgets) * train.max_steps)
    if shortest < MIN_PROXY_STEPS:
        problems.append(f"plan.budgets: {min(plan.budgets)} of train.max_steps {train.max_steps} is {shortest} steps; a "
                        f"proxy needs at least {MIN_PROXY_STEPS} (raise the budget)")
    return problems


def _plan_checks(plan, datasets: dict, train: TrainConfig, model=None) -> list[str]:
    """What `tokenmill plan` needs of the rest of the config, said before any proxy runs."""
    from tokenmill.plan.config import MIN_PROXY_STEPS
    if plan.sizes:
        return _ladder_checks(plan, datasets, train, model)
    if not datasets:
        return ["plan: needs named datasets (the datasets section) whose mixture it varies"]
    problems = [f"plan.shares.{name}: no dataset of that name (datasets: {', '.join(datasets)})"
                for name in plan.shares if name not in datasets]
    sets = list(train.eval_sets or datasets)
    problems += [f"plan.{role}.set: {goal.set!r} is not an evaluation set (the sets: {', '.join(sets)}); name one, or "
                 "add it to train.eval_sets" for role, goal in (("objective", plan.objective),
                                                                 ("constraint", plan.constraint)) if goal.set not in sets]
    shortest = round(min(plan.budgets) * train.max_steps)
    if shortest < MIN_PROXY_STEPS:
        problems.append(f"plan.budgets: {min(plan.budgets)} of train.max_steps {train.max_steps} is {shortest} steps; a "
                        f"proxy needs at least {MIN_PROXY_STEPS} (raise the budget)")
    return problems


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
