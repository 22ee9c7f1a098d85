"""Model configs load strictly with per-dataset overrides; the training guards refuse what they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import ConfigError
from training.config import Guards, load_model_config
from training.families import names
from training.guards import (
    TrainingRefusedError,
    check_class_support,
    check_history,
    check_leakage,
    single_column_auc,
)


@pytest.mark.parametrize("family", names())
def test_shipped_configs_load(family: str) -> None:
    assert load_model_config(family).family == family


def test_dataset_overrides_apply_only_to_their_dataset() -> None:
    assert load_model_config("clv", "cdnow").horizon_days == 273
    assert load_model_config("clv", "online_retail").horizon_days == 90
    assert load_model_config("clv", "telco").horizon_days == 365  # no overrides: the defaults
    telco = load_model_config("churn", "telco")
    assert telco.xgboost.max_depth == 3 and telco.xgboost.subsample == 0.8  # nested merge keeps the rest


def test_unknown_keys_and_families_are_named(tmp_path: Path) -> None:
    path = tmp_path / "churn.yaml"
    path.write_text("family: churn\nxgboost: {max_dept: 3}\n")
    with pytest.raises(ConfigError, match=r"xgboost\.max_dept: unknown key"):
        load_model_config("churn", path=path)
    path.write_text("family: churn\ndatasets: {telco: {seed: many}}\n")
    with pytest.raises(ConfigError, match=r"overrides for dataset 'telco'.*seed"):
        load_model_config("churn", "telco", path=path)
    with pytest.raises(ConfigError, match="unknown model 'chrun'"):
        load_model_config("chrun")


def test_class_support() -> None:
    guards = Guards(min_positives=3, min_negatives=3)
    check_class_support(pd.Series([1, 1, 1, 0, 0, 0]), guards, "churn on t")
    with pytest.raises(TrainingRefusedError, match=r"churn on t: 2 positive and 4 negative examples; at least 3"):
        check_class_support(pd.Series([1, 1, 0, 0, 0, 0, None]), guards, "churn on t")


def test_history() -> None:
    check_history(pd.Timestamp("1997-01-01"), pd.Timestamp("1997-07-01"), 90, Guards())
    with pytest.raises(TrainingRefusedError, match=r"120 days of history .* 2 x 90 = 180 days are needed"):
        check_history(pd.Timestamp("1997-01-01"), pd.Timestamp("1997-05-01"), 90, Guards())


def test_leakage_guard_names_the_column_and_can_be_overridden() -> None:
    rng = np.random.default_rng(42)
    y = pd.Series(rng.integers(0, 2, 400))
    status = np.where(y == 1, "closed won", rng.choice(["lost", "no answer", "ringing"], 400))
    status = np.where(rng.random(400) < 0.02, "ringing", status)  # 98 % of rows give the outcome away
    attributes = pd.DataFrame(
        {
            "noise": rng.normal(size=400),
            "weak": y + rng.normal(scale=2.0, size=400),
            "Status": status,
            "backwards": -y.astype(float),
            "customer_number": [f"id{i}" for i in range(400)],  # unique per row: no signal out of fold
        }
    )
    auc = single_column_auc(attributes, y)
    assert auc["backwards"] == 1.0 and auc["noise"] < 0.6 and auc["Status"] > 0.95
    assert auc["customer_number"] < 0.6
    with pytest.raises(TrainingRefusedError, match=r"'Status' \(AUC 0\.9"):
        check_leakage(attributes.drop(columns="backwards"), y, Guards())
    allowed = check_leakage(attributes.drop(columns="backwards"), y, Guards(allow_columns=["Status"]))
    assert allowed.index[0] == "Status"


def test_x_education_kept_columns_pass_and_tags_ranks_far_above_them() -> None:
    from features.config import data_root
    from features.pipeline import attribute_columns
    from tests.conftest import load_real

    dataset = load_real("x_education")
    assert dataset.leads is not None
    leads = dataset.leads.frame
    kept = check_leakage(leads[attribute_columns(leads)], leads["converted"], Guards())
    assert kept.max() < 0.95
    # Tags, filled in by the sales team, is excluded by the dataset config. Out of fold it ranks
    # conversions at AUC ~0.92 on its own: below the 0.95 guard, far above any column we keep.
    raw = pd.read_csv(data_root() / "x-education-leads" / "Leads.csv", usecols=["Tags", "Converted"])
    tags = single_column_auc(raw[["Tags"]], raw["Converted"])["Tags"]
    assert tags > kept.max() + 0.1
    with pytest.raises(TrainingRefusedError, match=r"'Tags' \(AUC 0\.9"):
        check_leakage(raw[["Tags"]], raw["Converted"], Guards(leakage_auc=0.9))


@pytest.mark.parametrize("family", names())
def test_every_family_trains_with_blas_on_one_thread(family: str) -> None:
    """Training's many small fits ran up to 10x slower waiting for BLAS's second thread
    (docs/benchmarks.md): each family's train limits it, and gives it back afterwards."""
    from threadpoolctl import threadpool_info

    from training import families
    from training.common import one_blas_thread

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    train = families.get(family).train
    assert train.__code__ is one_blas_thread(blas_threads).__code__ and train.__name__ == "train"
    assert one_blas_thread(blas_threads)() == [1] * len(blas_threads()) and blas_threads()
