"""Every model family, declared once.

A family is a module ``training/<name>.py`` with a ``FAMILY = Family(...)`` declaration and a config
``configs/models/<name>.yaml``: the config files say which families exist, and each module says what
its family is (label, primary metric, candidates, baselines, outputs, the tables it reads, the help
text). The command line, sweeps, the registry, ``/models``, scoring and the docs read this
declaration instead of keeping lists of their own, so adding a family touches one module and a config.

Registered models are per (family, dataset): ``valuecast-<family>-<dataset>``, e.g.
``valuecast-churn-cdnow`` or ``valuecast-lead-score-x_education``. Training on one dataset never
changes what another dataset is scored with.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from features.config import PROJECT_ROOT, ConfigError

if TYPE_CHECKING:
    from features.config import DatasetConfig
    from features.io import Dataset
    from training.common import Trained
    from training.config import ModelConfig

MODEL_CONFIG_DIR = PROJECT_ROOT / "configs" / "models"
REGISTERED_PREFIX = "valuecast-"
# A dataset name becomes part of a registered model name and of file names: a plain identifier.
DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
Table = Literal["transactions", "customers", "leads", "campaigns", "events"]


@dataclass(frozen=True)
class Family:
    """What a model family is: the one place the rest of the code reads it from."""

    name: str
    help: str
    label: str  # the outcome it learns, as the training set names it
    primary_metric: str  # higher is better for every primary metric
    candidates: tuple[str, ...]  # everything trained and compared on the validation window
    baselines: tuple[str, ...]  # the candidates that are simple baselines (a subset of candidates)
    outputs: tuple[str, ...]  # the columns a logged model returns per row
    tables: tuple[Table, ...]  # tables it reads (any one of them present makes the family possible)
    entity: Literal["customer", "lead"]
    train: Callable[[Dataset, ModelConfig], Trained]
    needs: tuple[Table, ...] = ()  # tables it cannot train without (default: any of ``tables``)
    selection_metric: str = ""  # what chooses among candidates on validation data (default: primary)

    @property
    def slug(self) -> str:
        return self.name.replace("_", "-")

    @property
    def experiment(self) -> str:
        """The MLflow experiment of ``make train``'s runs of this family (all datasets)."""
        return f"{REGISTERED_PREFIX}{self.slug}"

    def registered_name(self, dataset: str) -> str:
        return registered_name(self.name, dataset)

    def supports(self, config: DatasetConfig) -> bool:
        """Whether a dataset has the tables this family trains on."""
        if self.needs:
            return all(getattr(config, t, None) is not None for t in self.needs)
        return any(getattr(config, t, None) is not None for t in self.tables)


@cache
def names() -> tuple[str, ...]:
    """The families there are: one config file in configs/models/ each, in a fixed order."""
    found = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
    order = {name: i for i, name in enumerate(("churn", "propensity", "clv", "lead_score"))}
    return tuple(sorted(found, key=lambda n: (order.get(n, len(order)), n)))


def check_name(name: str) -> str:
    if name not in names():
        raise ConfigError(f"unknown model '{name}': use one of {', '.join(names())}")
    return name


@cache
def get(name: str) -> Family:
    """The family's declaration (imports its module)."""
    module: Any = importlib.import_module(f"training.{check_name(name)}")
    family = getattr(module, "FAMILY", None)
    if not isinstance(family, Family) or family.name != name:
        raise TypeError(f"training/{name}.py must declare FAMILY = Family(name='{name}', ...)")
    return family


def all_families() -> list[Family]:
    return [get(name) for name in names()]


def check_dataset_name(dataset: str) -> str:
    if not DATASET_NAME.match(dataset):
        raise ConfigError(
            f"dataset name '{dataset}' cannot name a registered model: use lower-case letters, digits and "
            "underscores (set name: in the dataset YAML)"
        )
    return dataset


def registered_name(family: str, dataset: str) -> str:
    """``valuecast-<family>-<dataset>``: one registered model per family and dataset."""
    return f"{REGISTERED_PREFIX}{check_name(family).replace('_', '-')}-{check_dataset_name(dataset)}"


def parse_registered_name(name: str) -> tuple[str, str] | None:
    """(family, dataset) of a per-dataset registered model name, None for any other name."""
    if not name.startswith(REGISTERED_PREFIX):
        return None
    rest = name[len(REGISTERED_PREFIX) :]
    for family in sorted(names(), key=len, reverse=True):  # lead-score before a family named lead
        prefix = family.replace("_", "-") + "-"
        if rest.startswith(prefix) and DATASET_NAME.match(rest[len(prefix) :]):
            return family, rest[len(prefix) :]
    return None


def legacy_name(family: str) -> str:
    """The one registered model per family of earlier versions (``valuecast-churn``), before models
    were registered per dataset; :func:`training.tracking.migrate_legacy` moves them."""
    return f"{REGISTERED_PREFIX}{family.replace('_', '-')}"


def supported(config: DatasetConfig) -> list[str]:
    """The families a dataset has the tables for, in the fixed order."""
    return [f.name for f in all_families() if f.supports(config)]
