"""Shared fixtures: the real datasets (skipped when absent, a failure under CI=true)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

from features.config import load_dataset_config
from features.io import Dataset, DatasetMissingError, load_dataset

IN_CI = os.environ.get("CI", "").lower() == "true"


def load_real(name: str) -> Dataset:
    """A bundled dataset; skip when its file is absent, except under CI=true where that fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_dataset(load_dataset_config(name))
    except DatasetMissingError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and a real dataset is absent: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def cdnow() -> Dataset:
    return load_real("cdnow")


@pytest.fixture(scope="session")
def cdnow_transactions(cdnow: Dataset) -> pd.DataFrame:
    assert cdnow.transactions is not None
    return cdnow.transactions.frame


@pytest.fixture()
def write_csv(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write text as a CSV file under tmp_path and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
