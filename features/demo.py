"""The demo job: features and labels for every bundled dataset there is, with a summary of each.

CDNOW comes with the lifetimes package, so there is always a real customer dataset. For leads the
demo uses X Education when ../shared/data has it, else synthetic leads, and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from features.config import load_dataset_config
from features.io import Dataset, DatasetMissingError, load_dataset, write_frame, write_quarantine
from features.pipeline import (
    build_customer_features,
    build_lead_features,
    default_as_of,
    labels_for,
)
from features.validate import Checked

# Cut-offs where each log has a full 90-day window after it (CDNOW: the classic 39-week calibration).
DEMO_AS_OF = {"cdnow": "1997-10-01", "online_retail": "2011-09-01"}


def synthetic_leads(n: int = 2_000, seed: int = 0) -> pd.DataFrame:
    """Leads whose conversion depends on known attributes: used only when X Education is absent."""
    rng = np.random.default_rng(seed)
    source = rng.choice(["search", "referral", "ads", "event"], size=n)
    visits = rng.poisson(3, size=n)
    minutes = rng.gamma(2.0, 8.0, size=n).round(1)
    logit = -2.0 + 0.35 * visits + 0.04 * minutes + np.where(source == "referral", 1.2, 0.0)
    converted = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "lead_id": [f"L{i:06d}" for i in range(n)],
            "source": source,
            "visits": visits,
            "minutes_on_site": minutes,
            "converted": converted,
        }
    )


def _synthetic_lead_dataset() -> Dataset:
    from features.config import DatasetConfig, TableConfig

    frame = synthetic_leads()
    frame["_row"] = np.arange(1, len(frame) + 1)
    config = DatasetConfig(name="synthetic_leads", leads=TableConfig(path="(generated)"))
    empty = frame.iloc[0:0]
    return Dataset(config, leads=Checked(frame, empty, []))


def run_demo(
    out: Path,
    *,
    as_of: pd.Timestamp | None,
    horizon_days: int,
    echo: Callable[[str], object] = print,
) -> dict[str, dict[str, object]]:
    summary: dict[str, dict[str, object]] = {}
    for name in ("cdnow", "online_retail", "telco", "x_education"):
        try:
            dataset = load_dataset(load_dataset_config(name))
        except DatasetMissingError as exc:
            echo(f"skipped {name}: {exc}")
            if name == "x_education":
                echo("using synthetic leads instead of X Education (its file is absent)")
                dataset = _synthetic_lead_dataset()
            else:
                continue
        target = out / dataset.config.name
        row: dict[str, object] = {}
        if dataset.leads is not None:
            leads = build_lead_features(dataset).frame
            write_frame(leads, target / "lead_features.parquet")
            row.update(entities=f"{len(leads):,} leads", features=leads.shape[1] - 2)
            if "converted" in leads:
                row["label"] = f"converted {leads['converted'].mean():.1%}"
        else:
            cutoff = as_of or pd.Timestamp(DEMO_AS_OF.get(name, default_as_of(dataset)))
            feature_set = build_customer_features(dataset, cutoff)
            labels = labels_for(dataset, feature_set, cutoff, horizon_days)
            write_frame(feature_set.frame, target / "features.parquet")
            write_frame(labels, target / "labels.parquet")
            row.update(entities=f"{len(feature_set.frame):,} customers", features=feature_set.frame.shape[1] - 2)
            if dataset.transactions is not None:
                row["as_of"] = f"{cutoff:%Y-%m-%d}"
                row["label"] = (
                    f"bought in {horizon_days}d {labels['purchased'].mean():.1%}, "
                    f"churned {labels['churned'].astype('Float64').mean():.1%}, "
                    f"future spend {labels['future_spend'].sum():,.0f}"
                )
            else:
                row["label"] = f"churned {labels['churned'].astype('Float64').mean():.1%} (snapshot)"
        quarantined = sum(len(c.quarantine) for _, c in dataset.checked_tables())
        used = sum(len(c.frame) for _, c in dataset.checked_tables())
        row.update(rows_used=f"{used:,}", quarantined=f"{quarantined:,}")
        write_quarantine(dataset, target / "features.parquet")
        summary[dataset.config.name] = row

    table = pd.DataFrame(summary).T.fillna("")
    echo("")
    echo(table.to_string())
    echo(f"\noutputs in {out}/<dataset>/")
    return summary
