"""The README's examples as they stand: the own-data quickstart's YAML and CSV load, and every
endpoint's example request and answer has the shape serving/api.py defines. Cheap: no model."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from features.config import PROJECT_ROOT, load_dataset_config
from features.io import load_dataset
from serving.api import (
    ErrorBody,
    LeadRequest,
    LeadResponse,
    ModelsResponse,
    Readiness,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
)
from training import families


def section(title: str) -> str:
    readme = (PROJECT_ROOT / "README.md").read_text()
    start = readme.index(title)
    end = readme.find("\n#", start + len(title))
    return readme[start : end if end > 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)]


def test_the_quickstart_yaml_loads_the_quickstart_csv(tmp_path: Path) -> None:
    quickstart = section("## Your own data: from a CSV of transactions to scores")
    (csv,) = blocks(quickstart, "csv")
    (yaml_text,) = blocks(quickstart, "yaml")
    # the README shows the file's first rows; two more customers so that there is a history to read
    (tmp_path / "my_transactions.csv").write_text(csv + "C00001,1997-02-03,25.50\nC00003,1997-03-14,8.99\n")
    (tmp_path / "my.yaml").write_text(yaml_text)

    config = load_dataset_config(tmp_path / "my.yaml")
    dataset = load_dataset(config)

    assert config.name == "my"  # the registered models are valuecast-<family>-my, as the README says
    frame = dataset.transactions.frame
    assert len(frame) == 4 and dataset.transactions.quarantine.empty
    assert sorted(frame["customer_id"].astype(str).unique()) == ["C00001", "C00002", "C00003"]
    assert frame["amount"].sum() == pytest.approx(11.77 + 12.00 + 25.50 + 8.99)
    supported = families.supported(config)
    assert {"churn", "propensity", "clv"} <= set(supported) and "lead_score" not in supported


ENDPOINT_SHAPES: list[type[BaseModel]] = [
    ScoreRequest,
    ScoreResponse,
    LeadRequest,
    LeadResponse,
    ModelsResponse,
    ReloadResponse,
    Readiness,
    ErrorBody,
]


def test_every_endpoint_example_has_the_api_shape() -> None:
    examples = blocks(section("### Every endpoint, by example"), "json")
    assert len(examples) == len(ENDPOINT_SHAPES)
    for text, shape in zip(examples, ENDPOINT_SHAPES, strict=True):
        body = json.loads(text)
        shape.model_validate(body)  # raises with the field when the README drifts from the API
        known = set(shape.model_fields)
        assert set(body) <= known, (shape.__name__, set(body) - known)
    answer = ScoreResponse.model_validate(json.loads(examples[1]))
    assert answer.customers[0].macro_segment  # /score's example shows the macro segment
