"""Scoring with a dataset's uplift champion: one code path for POST /score and ``make score``.

An uplift model (:class:`training.uplift.UpliftModel`) scores customers from their pre-treatment
attributes, as the campaign file has them: Hillstrom's customers come as attribute rows, not as
purchase histories. The API sends each customer's ``attributes``; batch scoring reads the campaign
table's rows (the arm, send date and outcome columns left out, one row per customer: the latest).
Both turn them into the same text rows and call :func:`score_rows`, so a customer gets the same next
best action online and in batch.

Suppression joins the economic-value segments' (:func:`serving.segments.rules.suppression_reasons`: the
flags and contact dates of the segment rules), and adds do-not-disturb: a customer the recommended
arm (or any, or every arm: ``suppression.do_not_disturb`` of the rules) would put off. A suppressed
customer's next best action is ``no_action`` with no expected value; the uplift columns stay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.config import CAMPAIGN_COLUMNS
from features.io import Dataset, read_raw_table, table_path
from features.validate import ROW
from serving.scoring import SUPPRESSION_COLUMNS, Champions, NotReadyError, suppression_facts
from serving.segments.rules import NO_ACTION as NO_MARKETING_ACTION
from serving.segments.rules import SegmentRules, add_reason, suppression_reasons
from training.common import InputRowsError
from training.uplift import NO_ACTION, UpliftModel, arm_slug, output_columns

FAMILY = "uplift"
DO_NOT_DISTURB = "do not disturb"
# Columns added to the model's own (training.uplift.output_columns) by scoring.
SUPPRESSION_OUTPUT = ("suppressed", "suppression_reason")


class AttributeProblemsError(ValueError):
    """Attributes sent for uplift scoring that cannot be used; ``problems`` are {path, value, reason}."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{p['path']}: {p['reason']}" for p in problems))
        self.problems = problems


def uplift_model(champions: Champions) -> UpliftModel:
    served = champions.models.get(FAMILY)
    if served is None:
        raise NotReadyError(champions.problems.get(FAMILY, f"dataset '{champions.dataset}' has no uplift model"))
    model = served.model
    assert isinstance(model, UpliftModel)
    return model


def rules_of(champions: Champions) -> SegmentRules:
    rules = champions.suppression_rules
    if rules is None:
        raise NotReadyError(champions.problems.get("segments", f"no segment rules for dataset '{champions.dataset}'"))
    return rules


def input_columns(model: UpliftModel) -> list[str]:
    """The pre-treatment attributes the model reads, as the campaign file names them."""
    return [*model.encoder.numeric, *model.encoder.categorical]


def campaign_columns(model: UpliftModel) -> dict[str, str]:
    """File column -> contract name of the campaign's own columns (arm, send date, outcomes): what a
    send did, never an input to choose one."""
    return {
        file: name for name, file in model.table.columns.items() if name in CAMPAIGN_COLUMNS and name != "customer_id"
    }


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return bool(np.isfinite(value))
    try:
        return bool(np.isfinite(float(str(value).strip())))
    except ValueError:
        return False


def attribute_problems(
    model: UpliftModel, dataset: str, attributes: Sequence[Mapping[str, Any]], *, strict: bool
) -> list[dict[str, Any]]:
    """What cannot be scored in each customer's ``attributes``: the campaign's arm or outcome columns
    (always), a name the model does not read (``strict``: when uplift scores the request alone; with
    customer models the same attributes also feed them), and text where the model reads a number."""
    known = set(input_columns(model))
    campaign = campaign_columns(model)
    numeric = set(model.encoder.numeric)
    readable = ", ".join(sorted(known)) + " (and the suppression fields " + ", ".join(SUPPRESSION_COLUMNS) + ")"
    found = []
    for position, given in enumerate(attributes):
        for name, value in given.items():
            path = f"customers[{position}].attributes.{name}"
            if name in campaign:
                reason = (
                    f"'{name}' is the campaign's {campaign[name]} column: it records a send, scoring chooses the arm; "
                    "leave it out"
                )
            elif strict and name not in known and name not in SUPPRESSION_COLUMNS:
                reason = f"not an attribute of the uplift model of '{dataset}': it reads {readable}"
            elif name in numeric and value is not None and not _is_number(value):
                reason = f"'{name}' is a number for the uplift model of '{dataset}'; send a number or null"
            else:
                continue
            found.append({"path": path, "value": value, "reason": reason})
    return found


def _text(value: Any) -> str | None:
    """A request's value as the campaign file would hold it: text (the model cleans file rows)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def attribute_rows(model: UpliftModel, ids: Sequence[str], attributes: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows as the campaign file has them (text), one per customer, from a request's attributes;
    attributes the model does not read are left out."""
    columns: dict[str, list[str | None]] = {}
    id_column = model.table.columns.get("customer_id")
    if id_column is not None:
        columns[id_column] = [str(i) for i in ids]
    for name in input_columns(model):
        columns[name] = [_text(given.get(name)) for given in attributes]
    return pd.DataFrame(columns, index=pd.RangeIndex(len(ids)), dtype=object)


def score_rows(model: UpliftModel, raw: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """The model's columns for each row of ``raw`` (campaign-file rows), with ``ids`` as customer_id
    (a file without an id column names customers by row number, which would be the request's).
    Raises :class:`training.common.InputRowsError` naming the rows the model's cleaning rules reject."""
    cleaned = model.clean(raw)
    scored = model.estimates(model.encoder.transform(cleaned).to_numpy(dtype=float))
    order = cleaned[ROW].to_numpy(dtype=np.int64) - 1
    scored.insert(0, "customer_id", np.asarray(list(ids), dtype=object)[order])
    return scored


def do_not_disturb(scored: pd.DataFrame, model: UpliftModel, rules: SegmentRules) -> np.ndarray:
    """Customers to suppress as do-not-disturb under the rules: the recommended arm's micro segment
    (for ``no_action``, the arm of highest uplift's), any arm's, or every arm's."""
    mode = rules.suppression.do_not_disturb
    segments = [scored[f"micro_segment_{arm_slug(a)}"].to_numpy(dtype=object) == "do_not_disturb" for a in model.arms]
    if mode is None or not len(scored):
        return np.zeros(len(scored), dtype=bool)
    if mode == "any_arm":
        return np.any(segments, axis=0)
    if mode == "every_arm":
        return np.all(segments, axis=0)
    return scored["micro_segment"].to_numpy(dtype=object) == "do_not_disturb"


def suppress(
    scored: pd.DataFrame, reasons: np.ndarray, model: UpliftModel, rules: SegmentRules
) -> tuple[pd.DataFrame, np.ndarray]:
    """Do-not-disturb added to each customer's suppression reasons ('' for none, aligned with the
    rows); the suppressed get ``no_action`` and an expected incremental value of 0."""
    reasons = np.asarray(reasons, dtype=object).copy()
    scored_rows = scored["next_best_action"].notna().to_numpy()  # batch: customers with no campaign row
    add_reason(reasons, do_not_disturb(scored, model, rules) & scored_rows, DO_NOT_DISTURB)
    suppressed = (reasons != "") & scored_rows
    value = scored["expected_incremental_value"].to_numpy(dtype=float)
    out = scored.assign(
        next_best_action=np.where(suppressed, NO_ACTION, scored["next_best_action"].to_numpy(dtype=object)),
        expected_incremental_value=np.where(suppressed, 0.0, value),
    )
    return out, reasons


def with_suppression(
    champions: Champions, scored: pd.DataFrame, facts: Mapping[str, Any], as_of: pd.Timestamp | str
) -> pd.DataFrame:
    """A dataset scored by uplift alone: the model's columns, then ``suppressed`` and
    ``suppression_reason`` (the segment rules' flags and contact dates in ``facts``, and
    do-not-disturb), the as-of date and the model version: the output row."""
    rules = rules_of(champions)
    reasons = suppression_reasons(facts, rules, len(scored))
    out, reasons = suppress(scored, reasons, uplift_model(champions), rules)
    return out.assign(
        suppressed=reasons != "",
        suppression_reason=np.where(reasons != "", reasons, np.full(len(out), None, dtype=object)),
        as_of=pd.Timestamp(as_of).strftime("%Y-%m-%d"),
        uplift_model_version=champions.models[FAMILY].version,
    )


def score_attributes(
    champions: Champions, ids: Sequence[str], attributes: Sequence[Mapping[str, Any]], as_of: pd.Timestamp
) -> pd.DataFrame:
    """POST /score for a dataset scored by uplift alone: customers with attributes, no transactions.
    Raises :class:`AttributeProblemsError` or :class:`training.common.InputRowsError` (422)."""
    model = uplift_model(champions)
    problems = attribute_problems(model, champions.dataset, attributes, strict=True)
    if problems:
        raise AttributeProblemsError(problems)
    scored = score_rows(model, attribute_rows(model, ids, attributes), ids)
    flags = {c: [given.get(c) for given in attributes] for c in SUPPRESSION_COLUMNS}
    facts = suppression_facts({c: v for c, v in flags.items() if any(x is not None for x in v)}, as_of)
    return with_suppression(champions, scored, facts, as_of)


def join_uplift(champions: Champions, columns: Mapping[str, np.ndarray], uplift: pd.DataFrame) -> dict[str, np.ndarray]:
    """The customer models' output row (``columns``: segments, suppression) with the uplift columns of
    the same customers (``uplift``, aligned with it; missing rows NaN): one set of suppression columns
    for both, a customer do-not-disturb is suppressed with no marketing action either."""
    model = uplift_model(champions)
    suppressed = np.asarray(columns["suppressed"], dtype=bool)
    reasons = np.where(suppressed, np.asarray(columns["suppression_reason"], dtype=object), "").astype(object)
    out, reasons = suppress(uplift, reasons, model, rules_of(champions))
    newly = (reasons != "") & ~suppressed
    joined = dict(columns)
    joined["suppressed"] = suppressed | newly
    joined["suppression_reason"] = np.where(newly, reasons, np.asarray(columns["suppression_reason"], dtype=object))
    joined["action"] = np.where(newly, NO_MARKETING_ACTION, np.asarray(columns["action"], dtype=object))
    for column in out.columns:
        if column != "customer_id":
            joined[column] = out[column].to_numpy()
    joined["uplift_model_version"] = np.full(len(out), champions.models[FAMILY].version, dtype=object)
    return joined


def score_with_customers(
    champions: Champions, columns: Mapping[str, np.ndarray], attributes: Sequence[Mapping[str, Any]]
) -> dict[str, np.ndarray]:
    """POST /score for a dataset with customer models and an uplift model: the uplift columns of the
    same customers (from their attributes) joined to the customer models' ``columns``. A customer
    without any attribute the uplift model reads gets empty uplift columns, as one without a row in
    the campaign table does in batch."""
    model = uplift_model(champions)
    problems = attribute_problems(model, champions.dataset, attributes, strict=False)
    if problems:
        raise AttributeProblemsError(problems)
    ids = [str(i) for i in columns["customer_id"]]
    known = set(input_columns(model))
    given = [position for position, sent in enumerate(attributes) if known & set(sent)]
    chosen_ids = [ids[p] for p in given]
    scored = pd.DataFrame(columns=["customer_id", *response_columns(model)])
    if given:
        try:
            scored = score_rows(model, attribute_rows(model, chosen_ids, [attributes[p] for p in given]), chosen_ids)
        except InputRowsError as exc:  # row n of those scored is the request's customer given[n - 1]
            raise AttributeProblemsError(row_problems(model, attributes, exc.problems, given)) from exc
    aligned = scored.set_index("customer_id").reindex(ids).reset_index()
    return join_uplift(champions, columns, aligned)


# ----------------------------------------------------------------------------------------------
# Batch: the campaign table's customers


def campaign_customers(dataset: Dataset) -> tuple[pd.DataFrame, list[str]]:
    """The campaign table's usable rows as the file has them, without the arm, send date and outcome
    columns, one per customer (the latest row of a customer sent several times), and their ids."""
    table, checked = dataset.config.campaigns, dataset.campaigns
    if table is None or checked is None:
        raise NotReadyError(f"dataset '{dataset.config.name}' has no campaigns table to score uplift from")
    raw = read_raw_table(table_path(dataset.config, table), table).set_index(ROW)
    rows = checked.frame[ROW].to_numpy()
    ids = checked.frame["customer_id"].astype(str).to_numpy(dtype=object)
    latest = ~pd.Series(ids).duplicated(keep="last").to_numpy()
    raw = raw.loc[rows[latest]].reset_index(drop=True)
    dropped = [v for k, v in table.columns.items() if k in CAMPAIGN_COLUMNS and k != "customer_id"]
    return raw.drop(columns=[c for c in dropped if c in raw.columns]), list(ids[latest])


def score_campaign_customers(
    champions: Champions, dataset: Dataset, customers: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Every customer of the campaign table scored by the uplift model (before suppression), sorted
    by customer id as the customer scores are, and their suppression flags and contact dates: the
    campaign table's own columns of those names, else the customers table's (``customers``)."""
    raw, ids = campaign_customers(dataset)
    scored = score_rows(uplift_model(champions), raw, ids)
    scored = scored.sort_values("customer_id", kind="stable").reset_index(drop=True)
    order = pd.Index(ids).get_indexer(scored["customer_id"])
    facts: dict[str, np.ndarray] = {}
    for column in SUPPRESSION_COLUMNS:
        if column in raw.columns:
            facts[column] = raw[column].to_numpy(dtype=object)[order]
        elif customers is not None and column in customers.columns:
            facts[column] = customers[column].reindex(scored["customer_id"]).to_numpy(dtype=object)
    return scored, facts


def action_mix(scores: pd.DataFrame) -> dict[str, Any]:
    """Customers and expected incremental value per next best action, micro segments and
    suppression reasons: what the batch report and summary show."""
    scored = scores.loc[scores["next_best_action"].notna()]
    by_action = scored.groupby("next_best_action", sort=True)["expected_incremental_value"]
    reasons = scored.loc[scored["suppressed"].astype(bool), "suppression_reason"]
    return {
        "customers": len(scored),
        "actions": {str(k): int(v) for k, v in by_action.size().items()},
        "expected_incremental_value": {str(k): float(v) for k, v in by_action.sum().items()},
        "micro_segments": {str(k): int(v) for k, v in scored["micro_segment"].value_counts().sort_index().items()},
        "suppressed": int(scored["suppressed"].astype(bool).sum()),
        "suppression_reasons": {str(k): int(v) for k, v in reasons.value_counts().sort_index().items()},
    }


def response_columns(model: UpliftModel) -> list[str]:
    """The uplift columns of an answer, in order (the customer id is the caller's)."""
    columns = output_columns(model.arms, model.outcomes, model.settings.primary_outcome)
    return [c for c in columns if c != "customer_id"]


def row_problems(
    model: UpliftModel,
    attributes: Sequence[Mapping[str, Any]],
    problems: list[Any],
    positions: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Rows the model's cleaning rules rejected (:class:`training.common.InputRowsError`) as paths
    into the request: row n is ``customers[n-1]``, or ``customers[positions[n-1]]`` when only those
    customers were scored."""
    id_column = model.table.columns.get("customer_id")
    found = []
    for problem in problems:
        for row in problem.rows:
            at = positions[row - 1] if positions is not None else row - 1
            if problem.column == id_column:
                path, value = f"customers[{at}].customer_id", None
            else:
                path = f"customers[{at}].attributes.{problem.column}"
                value = attributes[at].get(problem.column)
            found.append({"path": path, "value": value, "reason": f"{problem.reason}; {problem.fix}"})
    return found


def qini_images(champions: Champions) -> dict[str, str]:
    """The uplift champion's Qini curves as its training run logged them (``figures/qini_curve*.png``),
    base64-encoded by title, for the batch report. A run without them gives none; the report says so
    by their absence rather than failing the batch."""
    import base64
    from pathlib import Path

    import mlflow

    from training import tracking

    served = champions.models.get(FAMILY)
    if served is None:
        return {}
    client = tracking.connect()
    images: dict[str, str] = {}
    for item in client.list_artifacts(served.run_id, "figures"):
        name = item.path.rsplit("/", 1)[-1]
        if not (name.startswith("qini_curve") and name.endswith(".png")):
            continue
        local = mlflow.artifacts.download_artifacts(run_id=served.run_id, artifact_path=item.path)
        which = name.removeprefix("qini_curve").removesuffix(".png").strip("_").replace("_", " ")
        title = f"Qini curve, {which}" if which else "Qini curve, primary arm and outcome"
        images[title] = base64.b64encode(Path(local).read_bytes()).decode("ascii")
    return images
