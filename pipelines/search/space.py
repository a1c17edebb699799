"""A search space: YAML keyed by the dotted keys of ``--set``, checked against the config models.

::

    objective: mtc            # the fine-tuning method whose validation error is minimised
    space:
      pretrain.layers.0.contraction: {low: 0.01, high: 3.0, log: true}
      finetune.beta: {low: 0.01, high: 30.0, log: true}
      finetune.n_tangents: {choices: [5, 10, 15, 25]}
      finetune.epochs: {low: 20, high: 100, step: 20}     # ints: an integer range

A range is a float range unless both ends are integers and the config's value there is not a
float (``type: float`` or ``type: int`` says it outright). Every sampled value reaches the
config through the ``--set`` machinery (``config_from_dict``), so a space is checked at start-up
by validating the config at each end of each range and at each choice: a bad range is named by
its dotted key before any trial runs.

A space is a path or the name of a space shipped under ``pipelines/configs/spaces/`` (``mtc``,
``sda``, ``dbn``, ``ladder``, ``vat``: the benchmarks' methods, with the ranges their papers
searched), resolved by ``pipelines.config.resolve_shipped`` as a shipped config's name is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import (FINETUNE_METHODS, ConfigError, config_from_dict, parse_override, resolve_shipped,
                              shipped_files)

#: the methods a study can minimise: the fine-tuned classifiers, whose validation error is
#: known at every epoch (so a pruner can stop a bad trial early)
OBJECTIVES = tuple(m for m in FINETUNE_METHODS if m != "deep_autoencoder")
SPEC_KEYS = {"low", "high", "log", "step", "type", "choices"}
SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Param:
    """One dimension of the space: a float or int range, or a list of choices."""

    key: str
    kind: str                     # "float", "int" or "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """The value an Optuna trial samples for this key."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """The values a grid search visits; a float range needs a ``step``."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "float" and self.step is None:
            raise ConfigError(f"space {self.key}: the grid sampler needs finitely many values: give "
                              f"'choices' or a 'step' for this float range")
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        return [self.low + i * step if self.kind == "float" else int(self.low + i * step) for i in range(n)]

    def ends(self) -> list:
        """The values validated at start-up: both ends of a range, every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class Space:
    objective: str
    params: tuple[Param, ...]
    source: str = "<space>"

    def suggest(self, trial) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list]:
        return {p.key: p.grid() for p in self.params}

    def as_dict(self) -> dict:
        """The space as written (the study remembers it, to refuse another one under its name)."""
        out = {}
        for p in self.params:
            if p.kind == "categorical":
                out[p.key] = {"choices": list(p.choices)}
            else:
                out[p.key] = {"low": p.low, "high": p.high, "log": p.log, "step": p.step, "type": p.kind}
        return {"objective": self.objective, "space": out}


def as_overrides(values: dict[str, Any]) -> list[str]:
    """Sampled values as ``--set`` texts (``key=value`` with the value written as YAML, so that
    ``parse_override`` reads back the same number: ``1e-05`` is YAML for a string, ``1.0e-05``
    for a float)."""
    out = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        out.append(f"{key}={text.removesuffix('...').strip()}")
    return out


def _lookup(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _param(key: str, spec: Any, raw: dict, where: str) -> Param:
    parse_override(f"{key}=0")  # an empty or malformed key fails as it would after --set
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: {key} must be a mapping like {{low: 0.01, high: 1.0}} or "
                          f"{{choices: [a, b]}}, got {spec!r}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{where}: {key} has unknown field(s) {', '.join(sorted(unknown))}: "
                          f"use {', '.join(sorted(SPEC_KEYS))}")
    if "choices" in spec:
        if set(spec) - {"choices"}:
            raise ConfigError(f"{where}: {key} gives 'choices' and a range: give one of them")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {key}: choices must be a non-empty list, got {choices!r}")
        if not all(isinstance(c, SCALARS) for c in choices):
            raise ConfigError(f"{where}: {key}: choices must be numbers, strings, booleans or null "
                              f"(a list value is set with its own dotted keys), got {choices!r}")
        return Param(key, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {key} needs both 'low' and 'high' (or 'choices')")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}: {key}: {name} must be a finite number, got {v!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}: log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{where}: {key}: low {low} > high {high}: swap them")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: a log range must be above 0, got low {low}: give a "
                          f"positive low (e.g. {high / 1000:g}) or log: false")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: {key}: step must be positive and cannot go with log: true "
                          f"(got step {step}, log {log})")
    kind = spec.get("type")
    if kind is None:
        ints = _is_int(low) and _is_int(high) and (step is None or _is_int(step))
        kind = "int" if ints and not isinstance(_lookup(raw, key), float) else "float"
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: {key}: type must be int or float, got {kind!r}")
    if kind == "int":
        if not all(_is_int(v) or float(v).is_integer() for v in (low, high, step or 1)):
            raise ConfigError(f"{where}: {key}: an int range needs integer low, high and step, got "
                              f"{low}, {high}, {step}")
        low, high, step = int(low), int(high), None if step is None else int(step)
    else:
        low, high, step = float(low), float(high), None if step is None else float(step)
    return Param(key, kind, low=low, high=high, log=log, step=step)


def parse_space(doc: Any, raw: dict, source: str = "<space>") -> Space:
    """A :class:`Space` from a parsed YAML document; ``raw`` is the config it applies to (its
    values tell a float range from an int one). Raises :class:`ConfigError` naming the key."""
    if not isinstance(doc, dict):
        raise ConfigError(f"space {source} must be a mapping with 'objective' and 'space', "
                          f"got {type(doc).__name__}")
    unknown = set(doc) - {"objective", "space"}
    if unknown:
        raise ConfigError(f"space {source}: unknown top-level key(s) {', '.join(sorted(unknown))}: "
                          f"a space file has 'objective' and 'space'")
    objective = doc.get("objective")
    if objective not in OBJECTIVES:
        raise ConfigError(f"space {source}: unknown objective {objective!r}: choose from "
                          f"{', '.join(OBJECTIVES)} (the method whose validation error is minimised)")
    params = doc.get("space")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"space {source}: 'space' must map dotted config keys to ranges, e.g. "
                          f"finetune.lr: {{low: 0.001, high: 0.1, log: true}}")
    return Space(objective, tuple(_param(str(k), v, raw, f"space {source}") for k, v in params.items()),
                 source)


def shipped_spaces() -> dict[str, Path]:
    """The search spaces shipped under ``pipelines/configs/spaces/``, by name (``mtc`` goes with
    the shipped config ``mnist_mtc``, ``sda`` with ``mnist_sda``, ``dbn`` with ``mnist_dbn``,
    ``ladder`` with ``mnist_ladder``, ``vat`` with ``mnist_vat``)."""
    return shipped_files("configs/spaces")


def resolve_space_path(name_or_path: str | Path) -> Path:
    """A space file from a path, or a shipped space's name (``mtc``, ``sda``, ``dbn``, ``ladder``,
    ``vat``); a file that exists wins over a shipped name, as for configs."""
    return resolve_shipped(name_or_path, kind="space", folder="configs/spaces",
                           wanted="a YAML file with 'objective' and 'space'")


def load_space(path: str | Path, raw: dict) -> Space:
    """Read a space file (``yaml.safe_load``), given by path or shipped name, and parse it against
    the config ``raw``."""
    path = resolve_space_path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"space {path} is not valid YAML: {getattr(e, 'problem', e)}") from None
    return parse_space(doc, raw, source=str(path))


def check_space(space: Space, raw: dict, check=None) -> None:
    """Validate the config at each end of each range and at each choice, one key at a time;
    ``check(cfg)`` (optional) is what the pipeline checks beyond the models (its layers)."""
    for p in space.params:
        for value in p.ends():
            text = as_overrides({p.key: value})[0]
            try:
                cfg = config_from_dict(raw, [text], source=f"with {text}")
                if check is not None:
                    check(cfg)
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"space {space.source}: {p.key} = {value!r} is refused by the "
                                  f"config: {e}") from None
