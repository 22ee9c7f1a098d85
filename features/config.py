"""Dataset configs: where a company's data lives and how its columns map onto the data contract.

A dataset is described by one YAML file (see docs/data-contract.md). Bundled configs live in
``configs/data/<name>.yaml`` and find their files below the data root (``VALUECAST_DATA_ROOT``,
default ``../shared/data`` beside the project). A path starting with ``lifetimes:`` names a file that
the ``lifetimes`` package ships (CDNOW).
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.attributes import attribute_slug
from features.expressions import ExpressionError, parse_expression

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_CONFIG_DIR = PROJECT_ROOT / "configs" / "data"
LIFETIMES_PREFIX = "lifetimes:"

TRANSACTION_REQUIRED = ("customer_id", "timestamp", "amount")
TRANSACTION_OPTIONAL = ("order_id", "quantity", "product_id", "category", "channel")
CUSTOMER_OPTIONAL = ("signup_date", "cancellation_date", "churned", "do_not_contact", "opted_out")
LEAD_OPTIONAL = ("created_at", "converted")
# A campaign log: who got which arm (the control arm included) and, optionally, when and what followed.
CAMPAIGN_OUTCOMES = ("visit", "conversion", "spend")
CAMPAIGN_COLUMNS = ("customer_id", "arm", "sent_at", *CAMPAIGN_OUTCOMES)
# A behaviour event log: who did what when (a purchase in a category, an e-mail click, a feature used).
EVENT_REQUIRED = ("customer_id", "timestamp", "event")
EVENT_OPTIONAL = ("value",)
# Model inputs derived from a lead's created_at (day of week 0 = Monday, month 1-12, hour 0-23).
LEAD_CALENDAR = ("created_dow", "created_month", "created_hour")
SUPPRESSION_FLAGS = ("do_not_contact", "opted_out")
CONTRACT_NAMES = frozenset(
    {
        *TRANSACTION_REQUIRED,
        *TRANSACTION_OPTIONAL,
        "customer_id",
        *CUSTOMER_OPTIONAL,
        "lead_id",
        *LEAD_OPTIONAL,
        *CAMPAIGN_COLUMNS,
    }
)
# Words for date_format that fix only the order of day and month, for dates such as 01-02-2018.
DATE_ORDERS = ("day_first", "month_first")
# Characters a text file is often separated by; a header holding one of them did not split.
LIKELY_SEPARATORS = (";", "\t", "|", ",")
# An ISO 4217 currency code: three capital letters (the code is printed in reports, never looked up).
CURRENCY_CODE = re.compile(r"[A-Z]{3}")


class ConfigError(ValueError):
    """A dataset config that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileOptions(_Strict):
    """Where a text or Parquet file is and how its bytes are read."""

    path: str = Field(description="File path, relative to the data root, absolute, or 'lifetimes:<file>'.")
    format: Literal["csv", "parquet", "whitespace"] | None = Field(
        default=None, description="File format; inferred from the file ending when absent."
    )
    column_names: list[str] | None = Field(
        default=None, description="Names of the columns of a text file without a header row, in file order."
    )
    separator: str = Field(
        default=",", min_length=1, max_length=1, description="CSV field separator, e.g. ';' or a tab."
    )
    encoding: str = Field(default="utf-8", description="Text encoding of a CSV file, e.g. 'latin-1' or 'cp1252'.")
    encoding_errors: Literal["fail", "quarantine"] = Field(
        default="fail",
        description="Lines with bytes that are not valid in the encoding: stop with the line number "
        "(fail), or quarantine those lines with their reason.",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError as exc:
            raise ValueError(f"unknown encoding '{encoding}'; use e.g. utf-8, latin-1 or cp1252") from exc
        return encoding

    @field_validator("separator")
    @classmethod
    def _usable_separator(cls, separator: str) -> str:
        if separator in ('"', "\n", "\r") or separator.isalnum():
            raise ValueError(f"{separator!r} cannot separate fields; use e.g. ',', ';', '|' or a tab")
        return separator


class LabelSource(FileOptions):
    """A second file whose ids are the positive cases, e.g. the leads that became won deals."""

    id_column: str = Field(description="Column of that file holding the lead's id, e.g. 'Deal Lead ID'.")
    lead_column: str | None = Field(
        default=None,
        description="Column of the leads file those ids are matched against (e.g. 'Email' for a file "
        "without lead ids); default: the column mapped to lead_id.",
    )


class TableConfig(FileOptions):
    """One input table: a file, how to read it, and how its columns map onto the contract."""

    columns: dict[str, str] = Field(
        default_factory=dict, description="Contract column name -> column name in the file."
    )
    derived: dict[str, str] = Field(
        default_factory=dict,
        description="Contract column name -> arithmetic expression over file columns, "
        "e.g. amount: 'Quantity * UnitPrice' (features/expressions.py lists what is allowed).",
    )
    date_format: str | None = Field(
        default=None,
        description="How dates are written: a strptime format such as '%d-%m-%Y', or day_first / "
        "month_first for numeric dates in either order. Default: ISO dates; other numeric "
        "day/month dates must be unambiguous. 'timestamp_format' is its older name.",
    )
    decimal: Literal[".", ","] = Field(
        default=".", description="Decimal mark of numbers in a text file; with ',', '1.234,56' is 1234.56."
    )
    max_abs_amount: float = Field(
        default=1e9, gt=0, description="Amounts larger than this in absolute value are quarantined as absurd."
    )
    exclude: list[str] = Field(
        default_factory=list, description="File columns never used (e.g. columns that leak the outcome)."
    )
    duplicates: Literal["quarantine", "keep"] = Field(
        default="quarantine",
        description="Rows repeating an earlier row exactly: quarantine them, or keep them where the "
        "file has no order id and identical purchases are real.",
    )
    attributes: list[str] | None = Field(
        default=None,
        description="File columns to use as attributes; default: every column not mapped or excluded.",
    )
    label_from: LabelSource | None = Field(
        default=None,
        description="Leads only: converted = 1 when the lead's id is in this file's id_column, else 0.",
    )

    @model_validator(mode="before")
    @classmethod
    def _timestamp_format_is_date_format(cls, raw: Any) -> Any:
        """``timestamp_format`` (the older name) keeps working as ``date_format``."""
        if isinstance(raw, dict) and "timestamp_format" in raw:
            raw = dict(raw)
            if raw.get("date_format") is not None:
                raise ValueError(
                    "date_format and timestamp_format are the same option (timestamp_format is its "
                    "older name): keep only date_format"
                )
            raw["date_format"] = raw.pop("timestamp_format")
        return raw

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, value: str | None) -> str | None:
        if value is not None and value not in DATE_ORDERS and "%" not in value:
            raise ValueError(
                f"'{value}' is neither a strptime format (such as '%d-%m-%Y %H:%M') nor one of {list(DATE_ORDERS)}"
            )
        return value

    @field_validator("derived")
    @classmethod
    def _safe_expressions(cls, derived: dict[str, str]) -> dict[str, str]:
        """Check every expression when the config is loaded: a refused one never reaches the data."""
        for name, expression in derived.items():
            try:
                parse_expression(expression)
            except ExpressionError as exc:
                raise ValueError(
                    f"derived column '{name}' = '{expression}' is refused: {exc}. Use file columns, "
                    "numbers, + - * / // % **, comparisons, and/or/not and abs, log1p, round, min, max, where"
                ) from exc
        return derived

    @property
    def timestamp_format(self) -> str | None:
        """The older name of :attr:`date_format`."""
        return self.date_format


class CampaignTableConfig(TableConfig):
    """A campaign log: one row per customer and send, with the arm each customer was randomised to.

    The outcomes (visit, conversion, spend) are either columns of the file (Hillstrom) or computed
    from the transactions in the ``outcome_window_days`` after ``sent_at`` (a shop's own send log).
    They are never model inputs; every other column is a pre-treatment attribute.
    """

    control_arm: str = Field(description="The value of the arm column that means 'not contacted' (the control).")
    arms: list[str] | None = Field(
        default=None, description="Treatment arms to use; default every arm in the file other than the control."
    )
    min_per_arm: int = Field(default=100, ge=1, description="Fewest rows an arm (the control included) may have.")
    outcome_window_days: int = Field(
        default=14, ge=1, le=366, description="Outcomes from transactions: days after sent_at that count."
    )
    max_imbalance_smd: float = Field(
        default=0.1,
        gt=0,
        description="Randomisation check: a pre-treatment attribute whose standardized mean difference between "
        "an arm and the control is above this (and significant) is reported: the arms are not comparable.",
    )

    @model_validator(mode="after")
    def _campaign_columns(self) -> CampaignTableConfig:
        if "arm" not in self.columns:
            raise ValueError("a campaigns table needs the arm column: map arm under campaigns.columns")
        if self.arms is not None and self.control_arm in self.arms:
            raise ValueError(f"control_arm '{self.control_arm}' is also listed in arms: list treatment arms only")
        if not any(o in self.columns or o in self.derived for o in CAMPAIGN_OUTCOMES) and "sent_at" not in self.columns:
            raise ValueError(
                "campaign outcomes come from outcome columns (visit, conversion, spend) or from the transactions "
                "after sent_at: map one of them under campaigns.columns"
            )
        return self


class EventTableConfig(TableConfig):
    """A behaviour event log: one row per event of a customer (customer_id, timestamp, event name,
    optional value). Event names are other people's text: they reach column names only through
    :func:`features.events.event_slug`, and a file with more distinct names than
    ``max_distinct_events`` (free text or ids mapped as the event) stops the run."""

    max_distinct_events: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most distinct event names the file may hold; more means the event column is not a type.",
    )


class CategoryKeywords(_Strict):
    """Derive the contract's ``category`` from a free-text column by keywords (first match wins)."""

    source: str = Field(description="File column holding the text, e.g. Description.")
    keywords: dict[str, list[str]] = Field(description="category -> keywords (case-insensitive substrings).")
    default: str = "other"


class FeatureSettings(_Strict):
    """Feature settings that depend on the business rather than on the code."""

    top_categories: int = Field(default=5, ge=0, le=50, description="Spend shares for the top-K categories.")
    top_events: int = Field(
        default=5, ge=0, le=50, description="Events table: count, recency and share features for the top-K events."
    )
    windows_days: tuple[int, ...] = (30, 90, 180, 365)
    churn_lookback_days: int = Field(
        default=365, gt=0, description="A customer counts for the churn label if active in this window."
    )
    max_attribute_levels: int = Field(
        default=20, ge=2, description="One-hot levels per attribute; rarer levels are grouped as infrequent."
    )


class DatasetConfig(_Strict):
    """A dataset: transactions and/or a customers table and/or leads, plus value cleaning rules."""

    name: str
    description: str = ""
    source_file: str = Field(default="", description="Where this config was read from (set by the loader).")
    transactions: TableConfig | None = None
    customers: TableConfig | None = None
    leads: TableConfig | None = None
    campaigns: CampaignTableConfig | None = None
    events: EventTableConfig | None = None
    missing_values: list[str] = Field(
        default_factory=list, description="Labels that mean 'not answered' in any column, e.g. 'Select'."
    )
    value_maps: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="File column -> {label: value}. Exhaustive: any other label is an unknown value.",
    )
    category_keywords: CategoryKeywords | None = None
    features: FeatureSettings = FeatureSettings()
    currency: str | None = Field(
        default=None,
        description="ISO 4217 code of the amounts, e.g. USD, GBP, EUR or INR: reports write money with it. "
        "Unset: amounts are shown as plain numbers and the report says the currency is not set.",
    )

    @field_validator("currency")
    @classmethod
    def _currency_code(cls, currency: str | None) -> str | None:
        if currency is not None and not CURRENCY_CODE.fullmatch(currency):
            raise ValueError(f"{currency!r} is not a currency code: write three capital letters, e.g. USD, GBP or EUR")
        return currency

    @field_validator("transactions", "customers", "leads", "campaigns", "events")
    @classmethod
    def _known_contract_columns(cls, table: TableConfig | None, info: Any) -> TableConfig | None:
        if table is None:
            return None
        allowed = {
            "transactions": set(TRANSACTION_REQUIRED + TRANSACTION_OPTIONAL),
            "customers": {"customer_id", *CUSTOMER_OPTIONAL},
            "leads": {"lead_id", *LEAD_OPTIONAL},
            "campaigns": set(CAMPAIGN_COLUMNS),
            "events": {*EVENT_REQUIRED, *EVENT_OPTIONAL},
        }[info.field_name]
        for name in [*table.columns, *table.derived]:
            if name not in allowed:
                raise ValueError(f"'{name}' is not a {info.field_name} contract column; use one of {sorted(allowed)}")
        if table.label_from is not None:
            if info.field_name != "leads":
                raise ValueError("label_from is for leads only (converted = the lead's id is in that file)")
            if "converted" in table.columns or "converted" in table.derived:
                raise ValueError("converted comes from a column or from label_from, not both: remove one")
            if "lead_id" not in table.columns and table.label_from.lead_column is None:
                raise ValueError(
                    "label_from joins on the lead id: map lead_id under leads.columns, or name the leads "
                    "column to match with label_from.lead_column"
                )
        collisions = attribute_name_collisions(table.attributes or [], campaign=info.field_name == "campaigns")
        if collisions:
            raise ValueError("; ".join(collisions) + ": rename the column in the file, or leave it out of attributes")
        return table

    @model_validator(mode="after")
    def _has_a_table(self) -> DatasetConfig:
        if self.transactions is None and self.customers is None and self.leads is None and self.campaigns is None:
            raise ValueError("a dataset needs at least one of 'transactions', 'customers', 'leads' or 'campaigns'")
        if self.events is not None and self.transactions is None:
            raise ValueError(
                "events: an events table describes the customers of a transactions table (its features and "
                "labels are per customer as of a cut-off in the transaction log): add a transactions table"
            )
        campaigns = self.campaigns
        outcomes = campaigns is not None and any(o in campaigns.columns for o in CAMPAIGN_OUTCOMES)
        if campaigns is not None and self.transactions is None and not outcomes:
            raise ValueError(
                "campaigns: outcomes come from the transactions after sent_at, but the dataset has no "
                "transactions table: add one, or map the outcome columns (visit, conversion, spend)"
            )
        return self


def attribute_name_collisions(attributes: list[str], *, campaign: bool = False) -> list[str]:
    """Attribute columns whose name, or the name features.attributes makes of it (``attr_<slug>``),
    is a contract column's or another attribute's: the model inputs could not be told apart. A
    campaign log is a table of its own: only its own contract names are taken (Hillstrom's
    ``channel`` is an attribute there)."""
    reserved = {*CAMPAIGN_COLUMNS, "_row"} if campaign else {*CONTRACT_NAMES, *LEAD_CALENDAR, "_row"}
    # Suppression flags ride along with any table (a request's attributes, a transaction log's per-row
    # flags): the segment rules read them by these names, so carrying them is not a collision.
    reserved -= set(SUPPRESSION_FLAGS)
    problems = []
    seen: dict[str, str] = {}
    for column in attributes:
        slug = attribute_slug(column)
        for candidate in dict.fromkeys((column, slug)):
            if candidate in reserved:
                problems.append(
                    f"attribute column '{column}' collides with the contract column '{candidate}'"
                    + (f" (its feature name is attr_{slug})" if candidate != column else "")
                )
                break
        if slug in seen and seen[slug] != column:
            problems.append(f"attribute columns '{seen[slug]}' and '{column}' both become the feature attr_{slug}")
        seen.setdefault(slug, column)
    return problems


def data_root() -> Path:
    """The folder that bundled configs read their files from."""
    return Path(os.environ.get("VALUECAST_DATA_ROOT", PROJECT_ROOT.parent / "shared" / "data"))


def bundled_dataset_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_CONFIG_DIR.glob("*.yaml"))


def resolve_path(path: str, config_dir: Path | None = None) -> Path:
    """Turn a table path from a config into a file path.

    ``lifetimes:<file>`` is a file shipped by the lifetimes package; a relative path is looked up
    under the data root, then beside the config file (so a user's own YAML can sit next to its data).
    """
    if path.startswith(LIFETIMES_PREFIX):
        import importlib.util

        spec = importlib.util.find_spec("lifetimes")
        if spec is None or spec.origin is None:
            raise ConfigError("the lifetimes package is not installed; run 'make setup'")
        return Path(spec.origin).parent / "datasets" / path[len(LIFETIMES_PREFIX) :]
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    under_root = data_root() / candidate
    if under_root.exists() or config_dir is None:
        return under_root
    beside = config_dir / candidate
    return beside if beside.exists() else under_root


def load_dataset_config(name_or_path: str | Path) -> DatasetConfig:
    """Load a bundled config by name (``cdnow``) or a user's YAML file by path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text).expanduser()
    else:
        path = BUNDLED_CONFIG_DIR / f"{text}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown dataset '{text}': use one of {', '.join(bundled_dataset_names())} "
                "or the path of your own dataset YAML file"
            )
    if not path.exists():
        raise ConfigError(f"{path}: no such dataset config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    raw.setdefault("name", path.stem)
    raw["source_file"] = str(path.resolve())
    try:
        return DatasetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: the key path and what is wrong with it."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        message = message.removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def config_dir(config: DatasetConfig) -> Path | None:
    return Path(config.source_file).parent if config.source_file else None
