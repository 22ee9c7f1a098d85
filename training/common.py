"""What every model family shares: the result of training, the feature matrix, calibrated gradient
boosting, per-row reasons, and the scoring of raw inputs.

Each family module has ``train(dataset, config) -> Trained``: pure (no MLflow, no files), so that the
same function serves ``make train``, ``make model-quality`` and tests. The model it returns is an
``PythonModel`` that keeps the dataset's cleaning rules, the feature settings, the
category list and the fitted attribute encoder, so that a logged version scores raw inputs with
exactly the numbers it was evaluated with.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from features.attributes import AttributeEncoder
from features.config import (
    EVENT_OPTIONAL,
    EVENT_REQUIRED,
    TRANSACTION_OPTIONAL,
    TRANSACTION_REQUIRED,
    DatasetConfig,
    EventTableConfig,
    TableConfig,
)
from features.events import FROM_CATEGORIES, FROM_EVENTS
from features.io import Dataset
from features.pipeline import build_customer_features
from features.validate import ROW, Checked, Kind, NoUsableRowsError, Problem, check_table
from training import tree_predict
from training.btyd import BTYDModel, predict_btyd
from training.candidates import Choice
from training.columns import Columns, feature_matrix, with_columns
from training.config import ModelConfig
from training.evaluation import Report

# Columns of a training set that are keys or outcomes, never model inputs.
NOT_FEATURES = {
    "cutoff",
    "as_of",
    "customer_id",
    "lead_id",
    "purchased",
    "future_spend",
    "future_refunds",
    "future_orders",
    "churned",
    "converted",
    "label_window_days",
}
# Per-event labels (features.labels): ``purchased_<category>``, ``event_<event>``.
PER_EVENT_LABELS = (FROM_CATEGORIES.label_prefix, FROM_EVENTS.label_prefix)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def one_blas_thread(train: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a family's ``train`` with BLAS (OpenBLAS, under numpy and scipy) on one thread.

    Training fits many small models (logistic regressions on a few thousand rows, L-BFGS steps,
    mixtures), where each matrix product takes a fraction of a millisecond and waking BLAS's second
    thread costs more than the product: X Education's lead score trained in 40-43 s with two BLAS
    threads and in 21-22 s with one on 2 cores, LogisticRegressionCV 3.0-3.9 s -> 0.25-0.48 s each,
    the same chosen strengths and ROC AUC (docs/benchmarks.md, ``make demo``). xgboost's threads
    (OpenMP) are not BLAS's and stay as they are; scikit-learn limits BLAS the same way inside KMeans.
    """
    from threadpoolctl import threadpool_limits

    @functools.wraps(train)
    def limited(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with threadpool_limits(limits=1, user_api="blas"):
            return train(*args, **kwargs)

    return limited


@dataclass
class Trained:
    """What a family's ``train`` returns, the same for every family."""

    family: str
    registered_name: str
    model: PythonModel
    report: Report
    baselines: dict[str, Report]
    test_window: str
    params: dict[str, Any]
    input_example: pd.DataFrame
    output_example: pd.DataFrame
    predict_params: dict[str, Any] | None = None
    extra_metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    train_rows: int = 0
    test_rows: int = 0
    required_inputs: list[str] | None = None  # input columns a caller must send; None: all of them
    candidate: str = ""  # the winning candidate (training.candidates)
    choice: Choice | None = None  # every candidate's validation and test figures, and why the winner won
    warnings: list[str] = field(default_factory=list)  # what the run left out and why (printed, logged)
    # The primary metric of another version of this model (the current champion) on this run's test
    # rows, so that promotion compares like with like.
    rescore: Callable[[Any], float] | None = None

    def best_baseline(self) -> tuple[str, Report]:
        name = max(self.baselines, key=lambda k: self.baselines[k].primary)
        return name, self.baselines[name]


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric model inputs of a feature table (keys, labels and per-category and per-event labels left out)."""
    return [
        c
        for c in frame.columns
        if c not in NOT_FEATURES
        and not c.startswith(PER_EVENT_LABELS)
        and pd.api.types.is_numeric_dtype(frame[c].dtype)
    ]


def select_features(columns: Sequence[str], config: ModelConfig) -> list[str]:
    """The columns the config's feature set keeps: ``exclude_features`` patterns left out."""
    from fnmatch import fnmatchcase

    return [c for c in columns if not any(fnmatchcase(c, pattern) for pattern in config.exclude_features)]


def matrix(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The model inputs in a fixed column order, floats, columns a frame lacks as missing (named
    columns for fitting; scoring passes :func:`training.columns.feature_matrix`'s plain array)."""
    return pd.DataFrame(feature_matrix(frame, columns), columns=list(columns))


def xgb_params(config: ModelConfig) -> dict[str, Any]:
    return config.xgboost.model_dump(exclude={"objective", "tweedie_variance_power", "early_stopping_rounds"})


def params_for_logging(config: ModelConfig) -> dict[str, Any]:
    flat = config.model_dump(exclude={"xgboost", "guards"})
    flat |= {f"xgb_{k}": v for k, v in config.xgboost.model_dump().items()}
    flat |= {f"guard_{k}": v for k, v in config.guards.model_dump().items()}
    return flat


def fit_classifier(
    x: pd.DataFrame, y: np.ndarray, config: ModelConfig, stop_on: tuple[pd.DataFrame, np.ndarray] | None = None
) -> Any:
    """Gradient boosting with calibrated probabilities (scikit-learn's ``CalibratedClassifierCV``).

    ``ensemble=False``: the calibrator is fitted on 5-fold out-of-fold predictions and the booster is
    refitted on all rows, so one booster explains every score (per-row contributions).

    ``stop_on``: held-out rows and labels for xgboost's early stopping (log loss, patience
    ``early_stopping_rounds``), for an uncalibrated fit that chooses the number of trees
    (:func:`stopped_trees`); ignored when the config sets no patience.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from xgboost import XGBClassifier

    patience = config.xgboost.early_stopping_rounds
    stopping = stop_on is not None and patience is not None
    if stopping and config.calibration != "none":
        raise ValueError("early stopping chooses the number of trees on an uncalibrated fit (calibration: none)")
    booster = XGBClassifier(
        **xgb_params(config),
        objective="binary:logistic",
        random_state=config.seed,
        n_jobs=2,
        **({"early_stopping_rounds": patience, "eval_metric": "logloss"} if stopping else {}),
    )
    if stopping:
        assert stop_on is not None
        return booster.fit(x, y, eval_set=[stop_on], verbose=False)
    if config.calibration == "none":
        return booster.fit(x, y)
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(5, shuffle=True, random_state=config.seed)
    return CalibratedClassifierCV(booster, method=config.calibration, cv=folds, ensemble=False).fit(x, y)


def stopped_trees(stopped: Any) -> int | None:
    """The number of trees early stopping found best for ``stopped`` (an :func:`fit_classifier` fit
    with ``stop_on``); None when it did not stop early."""
    best = getattr(stopped, "best_iteration", None)
    return None if best is None else int(best) + 1


def booster_of(classifier: Any) -> Any:
    """The fitted xgboost model inside a calibrated classifier."""
    if hasattr(classifier, "calibrated_classifiers_"):
        return classifier.calibrated_classifiers_[0].estimator
    return classifier


def positive_probability(classifier: Any, x: np.ndarray) -> np.ndarray:
    """``classifier.predict_proba(x)[:, 1]`` as float64, computed without scikit-learn's input checks.

    For one customer those checks cost several times the prediction itself. Two shapes are computed
    here directly, each held equal to ``predict_proba`` by a test: one calibrated classifier
    (``ensemble=False``), whose result is the calibrator applied to the booster's probability (for a
    few rows from :mod:`training.tree_predict`, the same floats as xgboost's); and the
    logistic-regression candidates' pipeline (:func:`linear_probability`). Anything else goes to
    ``predict_proba``.
    """
    calibrated = getattr(classifier, "calibrated_classifiers_", None)
    if calibrated is not None and len(calibrated) == 1 and len(calibrated[0].calibrators) == 1:
        booster = booster_of(classifier)
        if booster.objective == "binary:logistic" and getattr(booster, "best_iteration", None) is None:
            raw = tree_predict.predict(booster.get_booster(), x)
            return np.asarray(_calibrate(calibrated[0].calibrators[0], raw), dtype=np.float64)
    if (linear := linear_probability(classifier, x)) is not None:
        return linear
    return np.asarray(classifier.predict_proba(x)[:, 1], dtype=np.float64)


def regression_values(model: Any, x: np.ndarray) -> np.ndarray:
    """``model.predict(x)``; for an xgboost regressor without early stopping its booster's
    ``inplace_predict``, which is what ``XGBRegressor.predict`` calls, without the configuration
    context it enters around the call (a profile of the API under load: ~3% of a worker's time for
    one customer), and for a few rows :mod:`training.tree_predict`'s walk of the same trees. A test
    holds them equal."""
    from xgboost import XGBRegressor

    if (
        type(model) is XGBRegressor
        and model.booster != "gblinear"
        and getattr(model, "best_iteration", None) is None
        and isinstance(model.missing, float)
        and np.isnan(model.missing)
    ):
        return np.asarray(tree_predict.predict(model.get_booster(), x))
    return np.asarray(model.predict(x))


def linear_probability(pipeline: Any, x: np.ndarray) -> np.ndarray | None:
    """``predict_proba(x)[:, 1]`` of the logistic-regression candidates' pipeline (``SkewedLog1p``
    optional, median ``SimpleImputer``, ``StandardScaler``, binary ``LogisticRegression[CV]``), step by
    step as scikit-learn computes it (same operations in the same order, so the same floats) but
    without its input checks, which cost ~0.8 ms per call while the arithmetic for one customer
    costs microseconds. None for any other estimator, or when ``x`` is empty or holds an infinity
    (scikit-learn's checks then answer as before); a test holds the two equal on fitted pipelines.
    """
    from scipy.special import expit
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from training.candidates import SkewedLog1p

    if type(pipeline) is not Pipeline or not isinstance(x, np.ndarray) or x.dtype != np.float64 or x.ndim != 2:
        return None
    if len(x) == 0:  # scikit-learn refuses an empty matrix: keep its answer
        return None
    steps = [step for _, step in pipeline.steps]
    skewed = steps.pop(0) if steps and type(steps[0]) is SkewedLog1p else None
    if len(steps) != 3:
        return None
    imputer, scaler, model = steps
    if not (
        type(imputer) is SimpleImputer
        and isinstance(imputer.missing_values, float)
        and np.isnan(imputer.missing_values)
        and not imputer.add_indicator
        and imputer.keep_empty_features
        and type(scaler) is StandardScaler
        and scaler.with_mean
        and scaler.with_std
        and isinstance(model, LogisticRegression)
        and len(model.classes_) == 2
        and model.coef_.shape == (1, x.shape[1])
        and imputer.statistics_.dtype == np.float64
    ):
        return None
    if np.isinf(x).any():
        return None
    # Row-major whatever the caller's layout: BLAS sums each row's product in another order for a
    # column-major matrix, so batch (columns of a DataFrame) and the API (rows) would differ in the
    # last bit of some scores (seen: 2 of 66 customers).
    x = np.ascontiguousarray(x)
    values = skewed.transform(x) if skewed is not None else np.array(x, copy=True)
    missing = np.isnan(values)
    if missing.any():
        values[missing] = np.broadcast_to(imputer.statistics_, values.shape)[missing]
    values -= scaler.mean_
    values /= scaler.scale_
    scores = (values @ model.coef_.T + model.intercept_).reshape(-1)
    return np.asarray(expit(scores, out=scores), dtype=np.float64)


def _calibrate(calibrator: Any, raw: np.ndarray) -> np.ndarray:
    """``calibrator.predict(raw)``; for isotonic calibration the steps of scikit-learn's
    ``IsotonicRegression._transform`` without its input checks (the booster's output is finite)."""
    from sklearn.isotonic import IsotonicRegression

    if type(calibrator) is not IsotonicRegression:
        return np.asarray(calibrator.predict(raw))
    values = np.asarray(raw, dtype=calibrator.X_thresholds_.dtype).reshape(-1)
    if calibrator.out_of_bounds == "clip":
        values = np.clip(values, calibrator.X_min_, calibrator.X_max_)
    return np.asarray(calibrator.f_(values)).astype(values.dtype)


def importance(classifier: Any, columns: Sequence[str], sources: Sequence[str] | None = None) -> pd.Series:
    values = pd.Series(booster_of(classifier).feature_importances_, index=list(columns))
    if sources is not None:
        values = values.groupby(np.asarray(sources)).sum()
    return values.sort_values(ascending=False)


def reasons(contributions: np.ndarray, sources: Sequence[str], top: int) -> tuple[list[str], list[str]]:
    """Per row, the ``top`` inputs raising and lowering the score most: per-row contributions to the
    log-odds (rows x encoded columns), summed over the encoded columns of each source column
    ("Lead Origin (+1.20)")."""
    if top == 0:
        return [""] * len(contributions), [""] * len(contributions)
    grouped = pd.DataFrame(np.asarray(contributions).T).groupby(np.asarray(sources), sort=True).sum()
    names, values = grouped.index.to_numpy(), grouped.to_numpy().T
    up, down = [], []
    for row in values:
        order = np.argsort(-row, kind="stable")
        up.append("; ".join(f"{names[i]} (+{row[i]:.2f})" for i in order[:top] if row[i] > 0))
        down.append("; ".join(f"{names[i]} ({row[i]:.2f})" for i in order[::-1][:top] if row[i] < 0))
    return up, down


RFM_COLUMNS = ("days_since_last_order", "order_count", "avg_order_value")


class InputRowsError(ValueError):
    """Rows sent for scoring that the dataset's rules reject; ``problems`` name column, rows and fix."""

    def __init__(self, problems: list[Problem], table: str = "transactions") -> None:
        super().__init__("; ".join(p.message() for p in problems))
        self.problems = problems
        self.table = table  # the request's table they are rows of: transactions or events


def request_dataset(config: DatasetConfig, transactions: pd.DataFrame, events: pd.DataFrame | None = None) -> Dataset:
    """A dataset made of transactions sent with a request, in the contract's column names
    (customer_id, timestamp, amount, optional contract columns, any other column an attribute),
    checked with the trained dataset's cleaning rules; and the customers' ``events`` (customer_id,
    timestamp, event, optional value) when the models read them. Unusable rows fail the request,
    naming them."""
    contract = [c for c in (*TRANSACTION_REQUIRED, *TRANSACTION_OPTIONAL) if c in transactions.columns]
    missing = [c for c in TRANSACTION_REQUIRED if c not in transactions.columns]
    if missing:
        raise ValueError(f"transactions need the column(s) {missing}; got {list(transactions.columns)}")
    table = TableConfig(path="request", columns={c: c for c in contract}, duplicates="keep")
    event_table = None
    if events is not None:
        mapped = [c for c in (*EVENT_REQUIRED, *EVENT_OPTIONAL) if c in events.columns]
        event_table = EventTableConfig(path="request", columns={c: c for c in mapped}, duplicates="keep")
    request_config = DatasetConfig(
        name=config.name,
        source_file="request",
        transactions=table,
        events=event_table,
        missing_values=config.missing_values,
        value_maps={k: v for k, v in config.value_maps.items() if k in transactions.columns},
        features=config.features,
    )
    checked = _checked_request_rows(transactions, table, request_config, "transactions", TRANSACTION_REQUIRED)
    dataset = Dataset(request_config, transactions=checked)
    if event_table is not None and events is not None:
        dataset.events = _checked_request_rows(events, event_table, request_config, "events", EVENT_REQUIRED)
    return dataset


def _checked_request_rows(
    rows: pd.DataFrame, table: TableConfig, config: DatasetConfig, kind: Kind, required: tuple[str, ...]
) -> Checked:
    """One table of a request, checked; no rows is a customer without history (scored as new)."""
    frame = rows.reset_index(drop=True).copy()
    if frame.empty:
        empty = {c: pd.Series([], dtype="datetime64[ns]" if c == "timestamp" else "string") for c in required}
        if "amount" in empty:
            empty["amount"] = pd.Series([], dtype="float64")
        return Checked(pd.DataFrame(empty), pd.DataFrame())
    frame[ROW] = np.arange(1, len(frame) + 1)
    try:
        checked = check_table(frame, table, config, kind, "request")
    except NoUsableRowsError as exc:
        raise InputRowsError([p for p in exc.problems if p.quarantined], kind) from exc
    if not checked.quarantine.empty:
        raise InputRowsError([p for p in checked.problems if p.quarantined], kind)
    return checked


def split_events(model_input: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A logged model's input as (transactions, events): rows with an ``event`` are the customers'
    events (customer_id, timestamp, event, value), the others their transactions; no ``event``
    column, no events."""
    if "event" not in model_input.columns:
        return model_input, None
    is_event = model_input["event"].notna().to_numpy(dtype=bool)
    event_columns = [c for c in ("customer_id", "timestamp", "event", "value") if c in model_input.columns]
    transactions = model_input.loc[~is_event].drop(columns=event_columns[2:])
    return transactions, model_input.loc[is_event, event_columns]


# A customer model's parameters and their defaults in its signature: no as_of means the day after the
# latest input transaction; one row per customer.
PREDICT_PARAMS = {"as_of": "", "output": "customers"}


class CustomerModel(PythonModel):
    """A model of customers with a transaction history.

    ``predict`` takes transactions in the contract's column names and the ``as_of`` date as a
    parameter (default: the day after the last transaction), computes the features with the feature
    code and the categories and encoder fixed at training, and returns one row per customer.
    ``score_features`` scores a feature table that was computed already (batch scoring computes
    features once for every model).
    """

    # Whether :meth:`features` adds columns of its own to the shared feature table (then scoring
    # builds this model's table apart instead of reusing another model's).
    own_features = False

    def __init__(
        self,
        dataset_config: DatasetConfig,
        categories: list[str],
        encoder: AttributeEncoder | None,
        columns: list[str],
        btyd: BTYDModel | None = None,
        horizon_days: int = 90,
        events: list[str] | None = None,
    ) -> None:
        self.dataset_config = dataset_config
        self.categories = categories
        self.encoder = encoder
        self.columns = columns
        self.btyd = btyd
        self.horizon_days = horizon_days
        self.events = events or []

    @property
    def reads_events(self) -> list[str]:
        """The events table's events whose features the model was trained with (none for a model
        logged before events existed: it has no such attribute)."""
        return list(getattr(self, "events", None) or [])

    @property
    def input_columns(self) -> list[str]:
        """The feature table's columns the model reads (drift compares them with the training data's)."""
        return list(self.columns)

    def features(self, dataset: Dataset, as_of: pd.Timestamp | str) -> pd.DataFrame:
        """The customer features as of ``as_of`` plus, when the model uses them, the outputs of the
        BG/NBD model fitted at training (population parameters applied to each customer)."""
        frame = build_customer_features(
            dataset, as_of, categories=self.categories, encoder=self.encoder, events=self.reads_events
        ).frame
        return self.add_btyd(frame)

    def add_btyd(self, frame: Columns) -> Columns:
        if self.btyd is None:
            return frame
        predicted = predict_btyd(self.btyd, frame, self.horizon_days)
        return with_columns(
            frame, {"btyd_expected_orders": predicted["expected_orders"], "btyd_p_alive": predicted["p_alive"]}
        )

    def score_columns(self, features: pd.DataFrame | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for each row of a feature table (a DataFrame or a dict of arrays)."""
        raise NotImplementedError

    def score_features(self, features: pd.DataFrame) -> pd.DataFrame:
        """:meth:`score_columns` as a frame, one row per customer, keyed by ``customer_id``."""
        ids = features["customer_id"].astype(str).to_numpy()
        return pd.DataFrame({"customer_id": ids, **self.score_columns(features)})

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Scores as of ``params['as_of']`` or, when it is absent or empty, as of the day after the latest
        transaction in ``model_input`` (never a date frozen at training). ``params['output']``:
        ``customers`` (default) gives one row per customer; ``rows`` gives each input row its
        customer's scores, in input order, as ``mlflow.pyfunc.spark_udf`` needs (each customer's rows
        must then arrive in one batch, and as_of should be given: a batch only sees its own rows)."""
        params = params or {}
        transactions, events = split_events(model_input)
        if self.reads_events and events is None:
            raise ValueError(
                f"the model reads the customers' events ({', '.join(self.reads_events)}): send them as rows "
                "with an 'event' column (customer_id, timestamp, event, optional value) beside the transactions"
            )
        dataset = request_dataset(self.dataset_config, transactions, events)
        as_of = params.get("as_of") or (
            dataset.transactions.frame["timestamp"].max().normalize() + pd.Timedelta(days=1)  # type: ignore[union-attr]
        )
        scores = self.score_features(self.features(dataset, as_of))
        if params.get("output", "customers") != "rows":
            return scores
        ids = model_input["customer_id"].astype(str).to_numpy()
        return scores.set_index("customer_id").reindex(ids).reset_index()


def contract_example(dataset: Dataset, customers: int = 3, *, with_events: bool = False) -> pd.DataFrame:
    """A few customers' transactions in contract column names: a logged model's input example; with
    ``with_events``, their events too, as rows with an ``event`` (:func:`split_events`)."""
    assert dataset.transactions is not None
    tx = dataset.transactions.frame.drop(columns=[ROW], errors="ignore")
    ids = tx["customer_id"].astype("string")
    chosen = ids.drop_duplicates().iloc[:customers]
    example = tx.loc[ids.isin(chosen)].copy()
    if with_events and dataset.events is not None:
        log = dataset.events.frame.drop(columns=[ROW], errors="ignore")
        example = pd.concat([example, log.loc[log["customer_id"].astype("string").isin(chosen)]], ignore_index=True)
    example["customer_id"] = example["customer_id"].astype(str)
    for column in example.columns:
        if isinstance(example[column].dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(example[column]):
            example[column] = example[column].astype(object)
    return example.reset_index(drop=True)
