"""The Optuna side of a search: the storage, the samplers, the pruners, trials left by the dead.

The study lives in an Optuna RDB storage (SQLite under the tracking root by default; PostgreSQL
or MySQL for many machines), so a second ``tune`` with the same study name extends it and
several processes can share it. Each trial's sampler is seeded from the config's seed and the
trial's number (:class:`SeededPerTrial`): the same command in a fresh folder samples the same
values, a resumed study does not repeat the values of its first trials, and two processes on
one study draw different ones.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import TrialState

from pipelines.config import ConfigError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: a trial whose process stopped beating for this long is failed by the next trial that starts
HEARTBEAT_S, GRACE_S = 60, 180
ATTEMPTS = 3  # to open a storage


def default_storage(root: str | Path) -> str:
    return f"sqlite:///{(Path(root) / 'optuna.db').resolve()}"


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a study seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class SeededPerTrial(BaseSampler):
    """A sampler rebuilt for every trial with the seed of that trial's number.

    Optuna's samplers keep their random state in memory: a resumed study would restart it and
    draw its first trials' values again, and two processes seeded alike would draw the same
    ones. Seeding by trial number (which the storage hands out once) avoids both.
    """

    def __init__(self, make, seed: int):
        self._make, self._seed = make, seed
        self._inner = make(trial_seed(seed, 0))

    def before_trial(self, study, trial) -> None:
        self._inner = self._make(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(name: str, seed: int, grid: dict | None = None) -> BaseSampler:
    """``tpe`` (default), ``random`` or ``grid`` (``grid``: the values of each key)."""
    if name == "tpe":
        return SeededPerTrial(lambda s: TPESampler(seed=s), seed)
    if name == "random":
        return SeededPerTrial(lambda s: RandomSampler(seed=s), seed)
    if name == "grid":
        return SeededPerTrial(lambda s: GridSampler(grid, seed=s), seed)
    raise ConfigError(f"unknown sampler {name!r}: choose from {', '.join(SAMPLERS)}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``median``: stop a trial whose validation error after 5 warm-up epochs is above the
    median of the earlier trials' at the same epoch (after 5 finished trials); ``none``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}: choose from {', '.join(PRUNERS)}")


def open_storage(url: str, stale_trial_callback=None) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url``, with heartbeats so that another machine's dead trials are
    failed. An unreachable database or a missing driver fails here, naming ``url``."""
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise ConnectionError(f"--storage {url}: folder {folder} does not exist; create it or "
                                  f"leave --storage out (SQLite under the tracking root)")
    for attempt in range(ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                                  heartbeat_stale_trial_callback=stale_trial_callback,
                                                  engine_kwargs=_engine_kwargs(url))
        except (ImportError, ModuleNotFoundError) as e:
            raise ConnectionError(f"--storage {url}: its database driver is not installed ({e}); "
                                  f"install it (e.g. psycopg2 for PostgreSQL, PyMySQL for MySQL)") from None
        except Exception as e:  # sqlalchemy's errors: a bad URL, a server that does not answer
            # two processes creating the tables at once: the later one finds them on a retry
            if type(e).__name__ in ("IntegrityError", "OperationalError") and attempt + 1 < ATTEMPTS:
                time.sleep(1 + attempt)
                continue
            raise ConnectionError(f"--storage {url} is unreachable ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else e}); fix the URL or start "
                                  f"the database") from None


def _engine_kwargs(url: str) -> dict:
    # SQLite shared by several processes: wait for a lock instead of failing at once
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def where_am_i() -> dict[str, str | int]:
    """The user attributes that tell a trial's process: host and pid."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_trials(study: optuna.Study) -> list:
    """Trials left RUNNING by a process of this host that is gone (killed with SIGKILL, say).
    Other machines' dead trials are failed by the heartbeat, after ``GRACE_S``."""
    here = socket.gethostname()
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("host") == here and isinstance(t.user_attrs.get("pid"), int)
            and t.user_attrs["pid"] != os.getpid() and not _alive(t.user_attrs["pid"])]


def own_running_trials(study: optuna.Study) -> list:
    """Trials this process is running (an interrupted ``optimize`` leaves them RUNNING)."""
    here = socket.gethostname()
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("host") == here and t.user_attrs.get("pid") == os.getpid()]


def fail_trial(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> None:
    """Mark trial ``number`` FAIL in the storage (public storage API)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def count(study: optuna.Study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=tuple(states)))


def differing_attr(study: optuna.Study, attrs: dict[str, str]) -> str | None:
    """Record ``attrs`` on a new study; on one that has them, the first key whose value differs
    (None when all match): a study extended with another config or space would not compare."""
    for key, value in attrs.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
        elif study.user_attrs[key] != value:
            return key
    return None
