"""Configs are data: one pydantic model per section of a pipeline, loaded from YAML.

Every hyperparameter is defined once, here or in the layer it configures; unknown keys and bad
values are rejected with the key's dotted path (``pretrain.layers.1.n_hidden``); overrides from
the command line are ``--set a.b=c`` with ``c`` read as YAML (``--set finetune.labels=100``,
``--set pretrain.layers.0.kind=dae``, ``--set finetune.methods=[mlp,mtc]``).
"""
from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError, field_validator

from finetune.tangent_defaults import OVERSAMPLE, RANK_TOL
from pretrain.names import OPTIMIZERS

from pipelines.layer_config import LayerConfig, Section

FINETUNE_METHODS = ("mlp", "mlp_rec", "mlp_frozen", "mlp_greedy_supervised", "mtc", "mtc_all", "vat",
                    "ladder", "deep_autoencoder", "vat_no_pretraining", "ladder_no_pretraining")
BASELINE_METHODS = ("svm", "knn", "pca_svm", "mlp")
#: a fine-tuning method's revision: a fix that changes what a method computes bumps its number
#: here, so that the stage results cached and the bench rows committed by the earlier code are
#: no longer read back as this code's (they become stale: ``python -m pipelines.bench.readme
#: --supersede`` moves them aside). A method not listed is at revision 1 and in no digest.
#: 2, the Ladder: its labeled and unlabeled batches are batch-normalised each on its own.
METHOD_REVISIONS = {"ladder": 2, "ladder_no_pretraining": 2}


def revisions(methods) -> dict[str, int]:
    """The revisions above 1 of ``methods``, the entry a digest of them holds (empty: none)."""
    return {m: METHOD_REVISIONS[m] for m in methods if METHOD_REVISIONS.get(m, 1) > 1}


def starts_fresh(method: str) -> bool:
    """Whether a network method takes only the stack's shape and starts from fresh weights: the
    ``_no_pretraining`` ones (``no-pretraining`` in the bench's names; the Ladder's and VAT's papers
    train so) and the greedy supervised MLP, which trains its own layers."""
    return method.replace("-", "_").endswith("no_pretraining") or method == "mlp_greedy_supervised"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the dotted key and the fix."""


class DataConfig(Section):
    """Which dataset and how it is split."""

    name: str = "digits"
    data_dir: str | None = None        # where MNIST files are looked up first
    path: str | None = None            # the .npz file when name == "npz"
    download: bool = False             # fetch MNIST from the usual mirrors when missing
    n_valid: int | None = Field(None, ge=1)        # None: the dataset's published validation size
    valid_labels: int | None = Field(None, ge=1)   # cap the validation set (realistic setting)
    n_test: int | None = Field(None, ge=1)         # subsample the test set (quick profiles)
    pool: int | None = Field(None, ge=1)           # unlabeled pool: the first this many rows; None: all
    image_shape: tuple[PositiveInt, PositiveInt] | None = None  # [rows, cols] of rows that are images

    #: added after caches existed: out of the digest while unset, so earlier caches are found
    DIGEST_WHEN_SET: ClassVar[tuple[str, ...]] = ("pool",)
    #: what changes only figures, never a number: never in the digest
    NOT_DIGESTED: ClassVar[tuple[str, ...]] = ("image_shape",)


class PretrainConfig(Section):
    """The stack: layers bottom-up, defaults every layer may override, and the schedule: greedy
    (``pretrain.stack``) or all layers at once (``pretrain.joint``)."""

    layers: list[LayerConfig] = Field(default_factory=list)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    schedule: Literal["greedy", "joint"] = "greedy"

    #: added after caches existed: out of the digest while at its default, so they are found
    DIGEST_WHEN_CHANGED: ClassVar[tuple[str, ...]] = ("schedule",)


class FinetuneConfig(Section):
    """Unrolling and supervised fine-tuning: the MLP, the MTC, VAT, the Ladder, the deep autoencoder."""

    labels: int | None = Field(50, ge=1)   # labeled examples L, class-balanced; None = all
    methods: list[str] = Field(default_factory=lambda: ["mlp", "mtc"])
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)
    optimizer: Literal[OPTIMIZERS] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    lr_decay: float = Field(1.0, gt=0, le=1)  # the learning rate's factor per epoch; 1: constant
    lr_anneal_start: float | None = Field(None, ge=0, lt=1)  # fraction of the epochs after which the
                                              # rate anneals linearly to 0 at the last; None: never
    patience: int = Field(20, ge=1)           # early stopping on val/error
    reconstruction: float = Field(0.0, ge=0)  # alpha of the reconstruction term: mlp_rec's (0: its
                                              # default), added to mtc, mtc_all, vat when > 0
    supervised_epochs: int | None = Field(None, ge=1)  # per layer, mlp_greedy_supervised; None: epochs
    beta: float = Field(0.1, ge=0)            # MTC tangent penalty weight
    n_tangents: int = Field(15, ge=1)         # k leading singular vectors
    # their accuracy, finetune.tangents' defaults:
    tangent_oversample: int = Field(OVERSAMPLE, ge=0)       # m = k + this many Krylov vectors
    tangent_rank_tol: float = Field(RANK_TOL, ge=0, lt=1)  # share of ||W_1||_F^2 left out of the search
    unlabeled_batch: int = Field(64, ge=1)    # pool examples per step for mtc_all, vat, ladder
    # what an epoch of mtc_all, vat and ladder passes over once: the labeled set (a fresh sample of
    # the pool beside it) or the pool (the labeled batches cycled beside it), as the Ladder's and
    # VAT's papers count epochs
    epoch_over: Literal["labeled", "pool"] = "labeled"
    deep_autoencoder_epochs: int = Field(20, ge=1)
    # virtual adversarial training (finetune.vat), on the labeled batch and the unlabeled pool
    vat_alpha: float = Field(1.0, ge=0)             # weight of the VAT penalty, Eq. (6)
    vat_epsilon: float = Field(2.0, gt=0)           # ||r_adv||, in input units, Eq. (4)
    vat_xi: float = Field(1e-6, gt=0, le=1)         # finite-difference step of the power iteration
    vat_power_iterations: int = Field(1, ge=1, le=20)
    vat_entropy: float = Field(0.0, ge=0)           # weight of entropy minimisation (VAT+EntMin)
    vat_batch_norm: bool = False                    # batch-normalise every layer (the authors' nets)
    # the Ladder network (finetune.ladder)
    ladder_noise: float = Field(0.3, ge=0)          # std of the Gaussian noise at every layer
    ladder_denoise: list[float] | None = None       # lambda_0..lambda_L; None: 1000, 10, 0.1, ...

    #: fields added after results were cached: left out of the digest while at their default,
    #: so that the stage results and bench folders named before them are found again
    DIGEST_WHEN_CHANGED: ClassVar[tuple[str, ...]] = (
        "vat_alpha", "vat_epsilon", "vat_xi", "vat_power_iterations", "vat_entropy", "vat_batch_norm",
        "ladder_noise", "ladder_denoise", "supervised_epochs", "epoch_over", "lr_decay",
        "lr_anneal_start")

    @field_validator("ladder_denoise")
    @classmethod
    def _nonnegative_lambdas(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(lam < 0 for lam in v)):
            raise ValueError(f"ladder_denoise must be a non-empty list of weights >= 0 (lambda_0 of the "
                             f"input first), got {v}")
        return v

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in FINETUNE_METHODS:
                raise ValueError(f"unknown fine-tuning method {m!r}: choose from {', '.join(FINETUNE_METHODS)}")
        return v


class BaselinesConfig(Section):
    """scikit-learn baselines, on raw inputs and on the stack's codes."""

    methods: list[str] = Field(default_factory=lambda: ["svm", "knn"])
    inputs: list[Literal["pixels", "codes"]] = Field(default_factory=lambda: ["pixels", "codes"])
    pca_components: int = Field(50, ge=1)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in BASELINE_METHODS:
                raise ValueError(f"unknown baseline {m!r}: choose from {', '.join(BASELINE_METHODS)}")
        return v


class TrainerConfig(Section):
    """Lightning Trainer flags, passed through unchanged."""

    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: str = "32-true"
    deterministic: bool | Literal["warn"] = True  # "warn": deterministic where CUDA has a kernel


class TrackingConfig(Section):
    """Where MLflow writes: None means $MLFLOW_TRACKING_URI, else ./mlruns."""

    uri: str | None = None
    experiment: str = "layerwise"


class PipelineConfig(Section):
    """A whole pipeline run: dataset, split, stack, fine-tuning, baselines, trainer, tracking."""

    name: str = "quickstart"
    seed: int = Field(0, ge=0)
    # torch intra-op threads; None keeps torch's default (one per core). Small models (digits)
    # run faster on one thread: waking idle threads costs more than a tiny matmul saves.
    threads: int | None = Field(None, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @property
    def trains_stack(self) -> bool:
        """Whether the pipeline trains the stack: unless fine-tuning methods are listed and all
        start from fresh weights (:func:`starts_fresh`) and no baseline but the MLP runs on the
        stack's codes. No fine-tuning method at all is a run for the stack itself: it trains."""
        methods = self.finetune.methods
        if not methods or not all(map(starts_fresh, methods)):
            return True
        return "codes" in self.baselines.inputs and any(m != "mlp" for m in self.baselines.methods)

    def digest(self, *sections: str) -> str:
        """A short hash of the given sections (all when none): the key of cached stage outputs."""
        data = self.model_dump(mode="json")
        for layer in data.get("pretrain", {}).get("layers", []):
            for key in LayerConfig.DIGEST_WHEN_SET:
                if layer.get(key) is None:
                    layer.pop(key, None)
        section = data.get("data", {})
        for key in DataConfig.DIGEST_WHEN_SET + DataConfig.NOT_DIGESTED:
            if key in DataConfig.NOT_DIGESTED or section.get(key) is None:
                section.pop(key, None)
        for name, section_cls in (("pretrain", PretrainConfig), ("finetune", FinetuneConfig)):
            section = data.get(name, {})
            for key in section_cls.DIGEST_WHEN_CHANGED:
                if key in section and section[key] == section_cls.model_fields[key].default:
                    section.pop(key)
        revised = revisions(self.finetune.methods)
        if revised:
            data["finetune"]["revisions"] = revised
        if sections:
            data = {s: data[s] for s in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def flat(self) -> dict[str, str]:
        """The resolved config as dotted ``key: value`` strings, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
                for i, v in enumerate(node):
                    walk(f"{prefix}.{i}", v)
            else:
                out[prefix] = json.dumps(node) if not isinstance(node, str) else node

        walk("", self.model_dump(mode="json"))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# -- loading ---------------------------------------------------------------------------------

def shipped_files(folder: str = "configs") -> dict[str, Path]:
    """The YAML files shipped in the package folder ``folder`` (``configs``, ``configs/spaces``), by name."""
    root = resources.files("pipelines").joinpath(*folder.split("/"))
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_shipped(name_or_path: str | Path, *, kind: str, folder: str, wanted: str) -> Path:
    """A YAML file from a path, or the name of one shipped in ``folder``; a file that exists wins
    over a shipped name. ``kind`` (``config``, ``space``) and ``wanted`` (what the file must hold)
    word the errors."""
    p = Path(name_or_path)
    if p.is_dir():
        raise ConfigError(f"{kind} {str(name_or_path)!r} is a folder: give {wanted} or a shipped {kind}'s name")
    if p.exists():
        return p
    shipped = shipped_files(folder)
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    if p.name.endswith(".yaml") and p.stem in shipped and p.parent.name == folder.rsplit("/", 1)[-1]:
        return shipped[p.stem]  # "pipelines/configs/x.yaml" from outside the source tree
    raise ConfigError(f"{kind} {str(name_or_path)!r} not found: give {wanted}, or one of the shipped "
                      f"{kind}s: {', '.join(sorted(shipped))}")


def shipped_configs() -> dict[str, Path]:
    """The configs shipped under ``pipelines/configs/``, by name."""
    return shipped_files("configs")


def resolve_config_path(name_or_path: str | Path | None) -> Path:
    """A config file from a path, or a shipped config's name (``quickstart``, ``mnist_mtc``)."""
    name_or_path = "quickstart" if name_or_path is None else name_or_path
    p = Path(name_or_path)
    return resolve_shipped(name_or_path, kind="config", folder="configs",
                           wanted=f"a YAML file (e.g. {p / 'quickstart.yaml'})" if p.is_dir() else "a YAML file path")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.0.c=value"`` -> (["a", "b", "0", "c"], value read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. finetune.labels=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key: write e.g. --set finetune.labels=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e.problem})") from None
    return key.split("."), value


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    """Set ``raw[path] = value`` in a nested dict/list tree, creating dicts for new keys."""
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {'.'.join(path)}: {where} is not an index of a list of "
                                  f"{len(node)} items")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override {'.'.join(path)}: {where} is a value, not a section")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {'.'.join(path)}: {last!r} is not an index of a list of {len(node)} items")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:-1])} is a value, not a section")


def _format_errors(err: ValidationError, source: str, overrides: dict[str, str] | None = None) -> str:
    """One line per error; an error under a ``--set`` key is reported as that override (key
    and value as given), not as an error of the config file."""
    lines, from_overrides = [], 0
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            line = f"{key}: unknown key (remove it or check its spelling)"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            given = e.get("input")
            shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
            line = f"{key}: {msg}{shown}"
        text = next((t for k, t in (overrides or {}).items() if key == k or key.startswith(k + ".")), None)
        if text is not None:
            from_overrides += 1
            line = f"override --set {text}: {line}"
        lines.append(line)
    what = f"invalid config {source}"
    if from_overrides == len(lines):  # the file is fine: say only what was given
        what, lines = "invalid override", [line.removeprefix("override ") for line in lines]
    if len(lines) == 1:
        return f"{what}: {lines[0]}"
    return f"{what}:\n  " + "\n  ".join(lines)


def config_from_dict(raw: dict, overrides: list[str] = (), source: str = "<dict>") -> PipelineConfig:
    """Validate a raw config dict after applying ``--set`` overrides."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source} must be a mapping of sections, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for text in overrides:
        apply_override(raw, *parse_override(text))
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        keys = {".".join(parse_override(t)[0]): t for t in overrides}
        raise ConfigError(_format_errors(e, source, keys)) from None


def load_config(name_or_path: str | Path | None = None, overrides: list[str] = ()) -> PipelineConfig:
    """Load a YAML config (a path or a shipped name) with ``safe_load`` and apply overrides."""
    path = resolve_config_path(name_or_path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"config {path} cannot be read ({reason}): give a readable YAML "
                          f"file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {path} is not valid YAML{where}: "
                          f"{getattr(e, 'problem', e)}. Fix the file's syntax.") from None
    return config_from_dict(raw, overrides, source=str(path))
