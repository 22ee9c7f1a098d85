"""The ``valuecast`` command: the thin I/O layer that the Makefile targets call.

Every error a user can cause ends in one line naming the file, column, row or value and the fix.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import pandas as pd
import typer

if TYPE_CHECKING:
    from features.io import Dataset
    from serving.drift import Thresholds
    from serving.segments.delivery import WebhookSettings

app = typer.Typer(
    help="valuecast: customer and lead value from your own data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataOption = Annotated[
    str,
    typer.Option(
        "--data", "-d", help="Bundled dataset name (cdnow, online_retail, x_education, telco) or a YAML path."
    ),
]
AsOfOption = Annotated[
    str | None,
    typer.Option(
        help="Cut-off date YYYY-MM-DD: features use data before it. Default: the day after the last transaction."
    ),
]
HorizonOption = Annotated[int, typer.Option("--horizon-days", min=1, help="Label window length in days.")]


def _quiet_libraries() -> None:
    # lifetimes imports pkg_resources, which warns on every start; the warning is not actionable here.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (uv project detected, input example validated...) and two warnings that are
    not actionable here (no pip in a uv venv; the cloudpickle notice on every model) would bury the
    progress. Set after importing mlflow, which configures its loggers on import. Also off: the
    "Downloading artifacts" bar of every model load, and the notice that a dataset's source (a file
    path) could be read as more than one kind of source."""
    import logging
    import os
    import warnings

    import mlflow  # noqa: F401

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    for name in ("mlflow.utils.environment", "mlflow.pyfunc", "mlflow.utils.uv_utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """The message and exit code of an error a user can cause (a missing dataset 3, a config or data
    error 2); None for anything else, which is a bug."""
    from features.config import ConfigError
    from features.io import DatasetMissingError
    from features.validate import DataError

    if isinstance(exc, DatasetMissingError):
        return str(exc), 3
    if isinstance(exc, (ConfigError, DataError)):
        return str(exc), 2
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line and an exit code; let bugs show their traceback."""
    try:
        yield
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        fail(*error)


def parse_date(value: str | None, option: str) -> pd.Timestamp | None:
    from features.validate import parse_day

    try:
        return parse_day(value, option)
    except ValueError as exc:
        fail(str(exc))


@contextmanager
def step(label: str) -> Iterator[None]:
    start = time.perf_counter()
    typer.echo(f"  {label} ...", err=True, nl=False)
    try:
        yield
    except BaseException:
        typer.echo(" failed", err=True)  # the error then starts a line of its own
        raise
    typer.echo(f" {time.perf_counter() - start:.1f}s", err=True)


def _load(data: str, as_of: pd.Timestamp | None) -> Dataset:
    from features.config import load_dataset_config
    from features.io import load_dataset

    config = load_dataset_config(data)
    with step(f"reading and checking '{config.name}'"):
        dataset = load_dataset(config, as_of=as_of)
    for kind, checked in dataset.checked_tables():
        for problem in checked.problems:
            typer.echo(f"warning: {problem.message()}", err=True)
        typer.echo(f"  {kind}: {len(checked.frame):,} usable rows, {len(checked.quarantine):,} quarantined", err=True)
    return dataset


def _finish(dataset: Dataset, out: Path, frame: pd.DataFrame, what: str) -> None:
    from features.io import write_frame, write_quarantine

    write_frame(frame, out)
    for path in write_quarantine(dataset, out):
        typer.echo(f"  quarantined rows with their reasons: {path}", err=True)
    typer.echo(f"wrote {len(frame):,} {what} x {frame.shape[1]} columns to {out}")


@app.command()
def features(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Output file (.parquet or .csv).")],
    as_of: AsOfOption = None,
    entity: Annotated[
        Literal["auto", "customers", "leads"],
        typer.Option(help="Customers, leads, or auto (customers when there are any)."),
    ] = "auto",
) -> None:
    """Features as of a cut-off: one row per customer (or lead), from data before AS_OF only."""
    _quiet_libraries()
    from features.pipeline import build_customer_features, build_lead_features, default_as_of

    cutoff = parse_date(as_of, "AS_OF")
    with user_errors():
        dataset = _load(data, cutoff)
        has_customers = dataset.transactions is not None or dataset.customers is not None
        if entity == "leads" or (entity == "auto" and not has_customers):
            with step("lead features"):
                frame = build_lead_features(dataset).frame
            _finish(dataset, out, frame, "leads")
            return
        cutoff = cutoff if cutoff is not None else default_as_of(dataset)
        with step(f"customer features as of {cutoff:%Y-%m-%d}"):
            frame = build_customer_features(dataset, cutoff).frame
        _finish(dataset, out, frame, "customers")


@app.command()
def labels(
    data: DataOption,
    as_of: Annotated[str, typer.Option(help="Cut-off date YYYY-MM-DD: labels look at the days from it on.")],
    out: Annotated[Path, typer.Option(help="Output file (.parquet or .csv).")],
    horizon_days: HorizonOption = 90,
) -> None:
    """Outcomes in the HORIZON_DAYS after AS_OF for every customer known before it (leads: converted)."""
    _quiet_libraries()
    from features.pipeline import build_customer_features, build_lead_features, labels_for

    cutoff = parse_date(as_of, "AS_OF")
    assert cutoff is not None
    with user_errors():
        dataset = _load(data, None)
        if dataset.transactions is None and dataset.customers is None and dataset.leads is not None:
            frame = build_lead_features(dataset).frame
            if "converted" not in frame.columns:
                fail(f"dataset '{dataset.config.name}': leads have no 'converted' column mapped, so no labels")
            _finish(dataset, out, frame[["lead_id", "converted"]], "leads")
            return
        with step(f"labels for {horizon_days} days from {cutoff:%Y-%m-%d}"):
            feature_set = build_customer_features(dataset, cutoff)
            frame = labels_for(dataset, feature_set, cutoff, horizon_days)
        _finish(dataset, out, frame, "customers")


@app.command("training-set")
def training_set(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Output file (.parquet or .csv).")],
    horizon_days: HorizonOption = 90,
    first: Annotated[
        str | None, typer.Option(help="Earliest cut-off YYYY-MM-DD (default: one horizon after the first transaction).")
    ] = None,
    cutoffs: Annotated[int | None, typer.Option(min=1, help="Keep only the latest N monthly cut-offs.")] = None,
) -> None:
    """Features and labels at monthly cut-offs, stacked with a 'cutoff' column for time-based splits."""
    _quiet_libraries()
    from features.pipeline import build_training_set, monthly_cutoffs

    parse_date(first, "FIRST")
    with user_errors():
        dataset = _load(data, None)
        chosen = monthly_cutoffs(dataset, horizon_days, first=first, count=cutoffs)
        with step(f"{len(chosen)} cut-offs {chosen[0]:%Y-%m-%d} .. {chosen[-1]:%Y-%m-%d}"):
            frame = build_training_set(dataset, chosen, horizon_days)
        _finish(dataset, out, frame, "rows")


@app.command()
def synthesize(
    out: Annotated[Path, typer.Option(help="Output transactions file (.parquet or .csv).")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    start: Annotated[str, typer.Option(help="First day of the log.")] = "2022-01-01",
    days: Annotated[int, typer.Option(min=28, help="Length of the log in days.")] = 730,
    profile: Annotated[
        Literal["cdnow", "dense"],
        typer.Option(help="cdnow: CDNOW's published parameters; dense: about ten transactions per customer."),
    ] = "cdnow",
) -> None:
    """Synthetic transactions drawn from BG/NBD and Gamma-Gamma with known parameters."""
    from features.io import write_frame
    from features.synthetic import SyntheticSpec, generate_transactions

    parse_date(start, "START")
    base = SyntheticSpec.dense(customers, seed) if profile == "dense" else SyntheticSpec(customers=customers, seed=seed)
    spec = base.with_(start=start, days=days)
    with step(f"drawing {customers:,} customers"):
        generated = generate_transactions(spec)
    write_frame(generated.transactions, out)
    write_frame(generated.customers, out.with_name(f"{out.stem}.customers{out.suffix}"))
    typer.echo(f"wrote {len(generated.transactions):,} transactions of {customers:,} customers to {out}")


@app.command()
def demo(
    as_of: AsOfOption = None,
    horizon_days: HorizonOption = 90,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/demo"),
    train_models: Annotated[
        bool, typer.Option("--train/--no-train", help="Also train and register the models.")
    ] = True,
) -> None:
    """Features and labels for every bundled dataset there is, then every model trained, logged and
    registered in MLflow (CDNOW's churn, propensity and CLV, X Education's lead score, Online Retail's
    macro segments, Hillstrom's uplift), a short
    hyperparameter search, and a batch score of every CDNOW customer."""
    _quiet_libraries()
    from features.demo import run_demo

    with user_errors():
        run_demo(out, as_of=parse_date(as_of, "AS_OF"), horizon_days=horizon_days, echo=typer.echo)
    if train_models:
        _demo_training(out)


# The demo's families in two processes side by side, those on CDNOW and those on the other datasets:
# each family uses one core or two by turns, so together they keep both busy (six families on 2
# cores: 188 s one after the other, 133 s in two processes; docs/benchmarks.md).
DEMO_FAMILIES = (
    (("churn", "cdnow"), ("propensity", "cdnow"), ("clv", "cdnow")),
    (("lead_score", "x_education"), ("macro_segment", "online_retail"), ("uplift", "hillstrom")),
)


@contextmanager
def _passive_openmp() -> Iterator[None]:
    """``OMP_WAIT_POLICY=PASSIVE`` (unless set) in the environment of the processes started inside:
    their OpenMP threads sleep when idle instead of spinning. Two processes of spinning xgboost
    threads on two cores took the time each other needed: the six families took 181-215 s side by side
    spinning (as long as one after the other), 133 s passive. Alone, spinning is quicker (churn 33-38
    s vs 38-41 s passive), so the processes that train side by side get it and this one does not."""
    import os

    previous = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


def _demo_training(out: Path) -> None:
    _quiet_mlflow()
    from training import tracking

    typer.echo(f"\nTraining (MLflow store: {tracking.redacted(tracking.tracking_uri())})")
    tracking.ensure_store()  # MLflow creates its tables on first use: once, before two processes use it
    typer.echo("  two processes side by side: " + "; ".join(", ".join(f for f, _ in group) for group in DEMO_FAMILIES))
    # terminated on the way out, so that an error or Ctrl-C in one does not wait for the other
    with training_pool(len(DEMO_FAMILIES)) as pool:
        pending = [pool.apply_async(train_families_in_process, (group,)) for group in DEMO_FAMILIES]
        frames = []
        for result in pending:
            frame, error = result.get()
            if error is not None:
                fail(*error)
            frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    typer.echo(table.drop(columns=["run_id"], errors="ignore").to_string(index=False, float_format="{:.4f}".format))
    _demo_experiment()
    typer.echo("Browse the runs: make ui (http://127.0.0.1:5000)")
    _demo_segments(out / "scores")


def training_pool(processes: int) -> Any:
    """A pool of fresh interpreters (spawn: OpenMP and Arrow's threads do not survive a fork) for the
    demo's training processes, started with :func:`_passive_openmp` and with this project's folder
    first on their ``sys.path``: a process that has loaded a logged model has that model's copy of
    ``features/`` and ``training/`` ahead of it (MLflow puts a model's code there), and a spawned
    process would import those copies (no configs beside them)."""
    import multiprocessing

    root = str(Path(__file__).resolve().parent.parent)
    saved = list(sys.path)
    sys.path.insert(0, root)
    try:
        with _passive_openmp():
            return multiprocessing.get_context("spawn").Pool(processes)
    finally:
        sys.path[:] = saved


def train_families(pairs: Sequence[tuple[str, str]], echo: Callable[[str], None]) -> list[Any]:
    """``train_and_log`` of each (family, dataset); a dataset that is not there is skipped with a line."""
    from features.io import DatasetMissingError
    from training.run import train_and_log

    outcomes = []
    for family, data in pairs:
        try:
            outcomes.append(train_and_log(family, data, echo=echo))
        except DatasetMissingError as exc:
            echo(f"{family} on {data}: skipped, {exc}")
    return outcomes


def train_families_in_process(pairs: Sequence[tuple[str, str]]) -> tuple[pd.DataFrame, tuple[str, int] | None]:
    """:func:`train_families` in one of the demo's processes: their metrics, and the error that stopped
    them (message and exit code: a user's error as :func:`user_errors` words it, a bug with its
    traceback), returned rather than raised, since not every exception survives the trip back. Each
    line it prints names its family."""
    import traceback

    from training.run import metrics_frame

    _quiet_libraries()
    _quiet_mlflow()
    try:
        outcomes = train_families(pairs, echo=lambda m: typer.echo(f"  {m}", err=True))
    except Exception as exc:  # a bug comes back with its traceback, as it would have shown in one process
        return metrics_frame([]), user_error(exc) or (traceback.format_exc(), 1)
    return metrics_frame(outcomes), None


def _demo_experiment(trials: int = 3) -> None:
    """A short sweep of CDNOW churn: trials on the validation window, the best registered as challenger."""
    from experiments.sweep import EXPERIMENT_DIR, run_experiment

    typer.echo(f"\nA {trials}-trial hyperparameter search (make experiment CONFIG=experiments/churn_cdnow.yaml)")
    with user_errors():
        outcome = run_experiment(
            EXPERIMENT_DIR / "churn_cdnow.yaml", trials=trials, echo=lambda m: typer.echo(f"  {m}", err=True)
        )
    for line in outcome.summary():
        typer.echo(line)
    typer.echo(f"Compare the runs: make compare EXPERIMENT={outcome.experiment}")


def _demo_segments(out: Path) -> None:
    """Freeze segment cut-offs on CDNOW with the champions and batch-score every CDNOW customer, so that
    make serve can answer at once and the summary table shows the 20/80 check."""
    from features.config import load_dataset_config
    from features.io import load_dataset
    from serving.batch import run, summary_table
    from serving.scoring import CUSTOMER_FAMILIES, NotReadyError
    from training import tracking

    with user_errors():
        dataset = load_dataset(load_dataset_config("cdnow"), kinds=("transactions",))
        champions = _dataset_champions(dataset.config.name)
        try:
            champions.require(CUSTOMER_FAMILIES)
        except NotReadyError as exc:  # e.g. a version that lost to its baseline stays challenger
            typer.echo(f"\nBatch scoring of CDNOW skipped: {exc}. Promote a version: make promote DATA=cdnow ...")
            return
        with step("batch scoring CDNOW as of 1998-07-01 (segment cut-offs frozen on it)"):
            result = run(champions, dataset, out, as_of=pd.Timestamp("1998-07-01"), refreeze=True)
            tracking.log_batch_run(result.summary, out)
    typer.echo(f"\nBatch scores of {len(result.scores):,} CDNOW customers in {out}/ (report.html, lists/); ")
    typer.echo(f"segment file {result.segment_file}")
    typer.echo(summary_table(result))
    typer.echo("Serve the models: make serve (then POST /score, see README)")


@app.command()
def train(
    data: DataOption,
    model: Annotated[
        str, typer.Option("--model", "-m", help="A family (churn, propensity, clv, lead_score...) or all.")
    ] = "all",
    config: Annotated[
        Path | None,
        typer.Option(
            help="Model config YAML: one family's (with family:), or sections per family (churn: {...}) over the "
            "shipped configs, which works with --model all too."
        ),
    ] = None,
) -> None:
    """Train every candidate, choose on validation data, log to MLflow, register per dataset, and promote
    when at least as good as every baseline and the current champion on the same test rows. With
    --model all: every family the data supports; one table at the end; exit 1 only if none trained."""
    _quiet_libraries()
    _quiet_mlflow()
    from training import families
    from training.guards import TrainingRefusedError
    from training.run import Outcome, Refusal, summary_frame, train_and_log

    with user_errors():
        if model == "all":
            dataset = _load(data, None)
            chosen = families.supported(dataset.config)
        else:
            families.check_name(model)
            dataset = _load(data, None)
            chosen = [model]
        results: list[Outcome | Refusal] = []
        for family in chosen:
            try:
                outcome = train_and_log(
                    family, data, config_path=config, echo=lambda m: typer.echo(m, err=True), dataset=dataset
                )
            except TrainingRefusedError as exc:
                typer.echo(f"{family}: training refused: {exc}", err=True)
                results.append(Refusal(family, str(exc)))
                continue
            results.append(outcome)
            for line in outcome.summary():
                typer.echo(line)
            typer.echo(f"  ({outcome.seconds:.1f}s)")
    if model != "all":
        if isinstance(results[0], Refusal):
            fail(f"{model}: training refused: {results[0].reason}", code=1)
        return
    with pd.option_context("display.width", 250, "display.max_colwidth", 90):
        typer.echo(summary_frame(results).to_string(index=False))
    if not any(isinstance(r, Outcome) for r in results):
        fail(f"no family could be trained on '{data}'", code=1)


@app.command()
def segments(
    data: DataOption,
    as_of: AsOfOption = None,
    rules: Annotated[Path | None, typer.Option(help="Segment rules YAML (default configs/segments.yaml).")] = None,
) -> None:
    """Score DATA with its champion models and freeze the segment tier cut-offs into a versioned file
    (segments/<dataset>/segments-<version>.json) that the API and batch scoring load for that dataset."""
    _quiet_libraries()
    _quiet_mlflow()
    from features.pipeline import default_as_of
    from serving.scoring import NotReadyError, model_scores
    from serving.segments.rules import freeze, load_rules, write_frozen

    cutoff = parse_date(as_of, "AS_OF")
    with user_errors():
        segment_rules = load_rules(rules)
        dataset = _load(data, None)
        cutoff = cutoff if cutoff is not None else default_as_of(dataset)
        champions = _dataset_champions(dataset.config.name)
        try:
            with step(f"scoring {dataset.config.name} as of {cutoff:%Y-%m-%d}"):
                scores, facts = model_scores(champions, dataset, cutoff)
        except NotReadyError as exc:
            fail(f"{exc}. Train them first: make train DATA={data}")
        frozen = freeze(
            pd.concat([scores, facts], axis=1), segment_rules, f"{dataset.config.name} as of {cutoff:%Y-%m-%d}"
        )
        path = write_frozen(frozen, dataset.config.name)
    floors = ", ".join(f"{tier} >= {value:,.2f}" for tier, value in frozen.value_floors.items())
    typer.echo(f"wrote {path}: {frozen.customers:,} customers, CLV floors {floors}")


def _dataset_champions(dataset: str) -> Any:
    """The dataset's own champions (``valuecast-<family>-<dataset>``) and segment file, after moving
    the models of earlier versions (one per family) to per-dataset names, one line each."""
    from serving.scoring import load_champions
    from training import tracking

    tracking.migrate_legacy(echo=lambda m: typer.echo(m, err=True))
    with step(f"loading the champion models of '{dataset}'"):
        return load_champions(dataset)


@contextmanager
def _progress_bars() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per named step, shown while the block runs; yields ``progress(name, done, total)``,
    which adds the step's bar the first time it is named and moves it."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("  {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        yield progress


@app.command()
def score(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Output folder (replaced only when the run succeeds).")],
    as_of: AsOfOption = None,
    engine: Annotated[Literal["local", "spark"], typer.Option(help="local (pandas) or spark.")] = "local",
    refreeze: Annotated[
        bool, typer.Option(help="Freeze new segment cut-offs on this population instead of the latest file.")
    ] = False,
    rules: Annotated[Path | None, typer.Option(help="Segment rules YAML (with --refreeze).")] = None,
    force: Annotated[
        bool,
        typer.Option(help="Replace OUT even when it is not a folder valuecast wrote (no .valuecast-output in it)."),
    ] = False,
) -> None:
    """Score every customer with DATA's own champion models (valuecast-<family>-<dataset>) and segment
    file: scores, segments, report, lists for CRM tools. With an uplift champion, also each customer's
    next best action (actions/<arm>.csv); a dataset of attribute rows (hillstrom) is scored by it alone."""
    _quiet_libraries()
    _quiet_mlflow()
    from serving.batch import check_replaceable, run, summary_table
    from serving.scoring import NotReadyError
    from training import tracking

    cutoff = parse_date(as_of, "AS_OF")
    with user_errors():
        check_replaceable(out, force)  # before minutes of scoring, not after; run() checks again
        if engine == "spark":
            from serving.spark_engine import require_pyspark, start_session_in_background

            require_pyspark()
            start_session_in_background()  # the JVM starts while the data is read
        dataset = _load(data, None)
        champions = _dataset_champions(dataset.config.name)
        with _progress_bars() as progress:
            try:
                result = run(
                    champions,
                    dataset,
                    out,
                    as_of=cutoff,
                    refreeze=refreeze,
                    rules_path=rules,
                    engine=engine,
                    force=force,
                    progress=progress,
                )
            except NotReadyError as exc:
                fail(_not_ready_hint(exc, data))
        with step("logging the batch run to MLflow"):
            run_id = tracking.log_batch_run(result.summary, out)
    typer.echo(
        f"\nscored {len(result.scores):,} customers as of {result.as_of:%Y-%m-%d} into {out} (MLflow run {run_id})"
    )
    if result.leads is not None:
        typer.echo(f"scored {len(result.leads):,} leads")
    typer.echo(summary_table(result))


@app.command()
def refresh(
    data: DataOption,
    as_of: AsOfOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder of this dataset's refreshes (default out/refresh/<dataset>).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Start a new history in OUT even when it holds something else (it is replaced).")
    ] = False,
    webhook: Annotated[
        str | None,
        typer.Option(
            envvar="VALUECAST_WEBHOOK_URL",
            help="Deliver the changes to this URL (https; http only to localhost), signed with the secret of "
            "VALUECAST_WEBHOOK_SECRET.",
        ),
    ] = None,
    webhook_batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Changes per request.")] = 100,
    webhook_timeout: Annotated[float, typer.Option(min=0.1, max=300, help="Seconds to wait for an answer.")] = 10.0,
    webhook_attempts: Annotated[int, typer.Option(min=1, max=20, help="Attempts per batch before it fails.")] = 5,
    psi_threshold: Annotated[
        float, typer.Option(min=0.001, max=10, help="Drift: an input's PSI above this recommends a retrain.")
    ] = 0.25,
    score_psi_threshold: Annotated[
        float, typer.Option(min=0.001, max=10, help="Drift: a score's PSI above this recommends a retrain.")
    ] = 0.25,
    max_age_days: Annotated[
        int, typer.Option(min=1, max=36_500, help="Drift: days from a champion's last training cut-off to AS_OF.")
    ] = 180,
) -> None:
    """Score DATA as of AS_OF with its champions and compare with the previous refresh in OUT: transition
    matrix, change files for CRM import (who entered and left each segment, and why) and the history of
    every refresh (a Parquet table partitioned by as_of). With a webhook, the changes are delivered too,
    each at most once."""
    import os

    _quiet_libraries()
    _quiet_mlflow()
    from features.pipeline import default_as_of
    from serving.drift import Thresholds
    from serving.segments import delivery
    from serving.segments.refresh import default_out, exclusive

    cutoff = parse_date(as_of, "AS_OF")
    with user_errors():
        settings = delivery.settings_from(
            webhook,
            os.environ.get(delivery.SECRET_ENV),
            batch_size=webhook_batch_size,
            timeout_seconds=webhook_timeout,
            max_attempts=webhook_attempts,
        )
        thresholds = Thresholds(psi_threshold, score_psi_threshold, max_age_days)
        dataset = _load(data, None)
        name = dataset.config.name
        target = out if out is not None else default_out(name)
        day = cutoff if cutoff is not None else default_as_of(dataset)
        with exclusive(target):
            _refresh_and_deliver(data, dataset, target, day, force, settings, thresholds)


@app.command()
def retrain(
    data: DataOption,
    out: Annotated[
        Path | None, typer.Option(help="Folder of this dataset's refreshes (default out/refresh/<dataset>).")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Retrain every customer family, drifted or not.")] = False,
) -> None:
    """Retrain the families whose inputs, scores or age the latest refresh of DATA flagged (make refresh
    first); each new version is promoted only through the usual gate (it must beat the baselines and
    the current champion on the same test rows)."""
    _quiet_libraries()
    _quiet_mlflow()
    from serving.scoring import CUSTOMER_FAMILIES
    from serving.segments.refresh import default_out, latest_drift
    from training.run import train_and_log

    with user_errors():
        from features.config import load_dataset_config

        name = load_dataset_config(data).name
        section = latest_drift(out if out is not None else default_out(name))
        if section is None and not every:
            fail(f"no refresh of {name} yet: run make refresh DATA={data} first (or retrain everything with --all)")
        chosen = list(CUSTOMER_FAMILIES) if every else list(section["retrain_recommended"] if section else [])
        if not chosen:
            typer.echo(f"nothing to retrain: the latest refresh of {name} found no drift above the thresholds")
            return
        for family in chosen:
            reasons = "; ".join(section["families"].get(family, {}).get("reasons", [])) if section else "--all"
            typer.echo(f"retraining {family} on {name} ({reasons or 'asked for'})")
            outcome = train_and_log(family, data, echo=lambda m: typer.echo(f"  {m}", err=True))
            typer.echo(f"  {outcome.promotion.message()}")


def _not_ready_hint(exc: Exception, data: str) -> str:
    """A NotReadyError's message and what to do: train, unless it already says (a challenger to promote)."""
    text = str(exc)
    return text if "make promote" in text else f"{text}. Train the models first: make train DATA={data}"


def _refresh_and_deliver(
    data: str,
    dataset: Dataset,
    target: Path,
    day: pd.Timestamp,
    force: bool,
    settings: WebhookSettings | None,
    thresholds: Thresholds,
) -> None:
    """The refresh command's steps while it holds OUT."""
    from serving.scoring import NotReadyError
    from serving.segments import delivery
    from serving.segments.refresh import check_out, matrix_text
    from serving.segments.refresh import refresh as run_refresh

    name = dataset.config.name
    check_out(target, name, day, force)  # before minutes of scoring, not after
    champions = _dataset_champions(name)
    try:
        with step(f"scoring {name} as of {day:%Y-%m-%d} and comparing with the previous refresh"):
            result = run_refresh(champions, dataset, target, as_of=day, force=force, thresholds=thresholds)
    except NotReadyError as exc:
        fail(_not_ready_hint(exc, data))
    typer.echo(matrix_text(result))
    from serving import drift

    typer.echo("")
    for line in drift.lines(result.summary["drift"]):
        typer.echo(line)
    if result.summary["drift"]["retrain_recommended"]:
        typer.echo(f"retrain: make retrain DATA={data}")
    typer.echo(f"\nwrote {result.folder} and history/as_of={result.as_of:%Y-%m-%d} in {target}")
    typer.echo(f"report: {result.folder / 'report.html'}")
    typer.echo(f"models {result.summary['models']}, segment file {result.summary['segment_file']}")
    if settings is not None:
        typer.echo(f"delivering {len(result.changes):,} change(s) to {delivery.display_url(settings.url)}", err=True)
        delivered = delivery.deliver(
            result.changes,
            result.folder / "delivery",
            settings,
            dataset=name,
            as_of=result.summary["as_of"],
            previous_as_of=result.summary["previous_as_of"],
            echo=lambda m: typer.echo(m, err=True),
        )
        typer.echo(delivered.line())
        if delivered.dead_letter:
            raise typer.Exit(4)


@app.command()
def paths(
    data: DataOption,
    customer: Annotated[list[str], typer.Option(help="A customer id (repeat the option for more).")],
    out: Annotated[Path | None, typer.Option(help="Folder of the refreshes (default out/refresh/<dataset>).")] = None,
) -> None:
    """Each customer's segment at every refresh of DATA, read back from the history table."""
    from features.config import load_dataset_config
    from serving.segments.refresh import customer_paths, default_out

    with user_errors():
        name = load_dataset_config(data).name
        table = customer_paths(out if out is not None else default_out(name), customer)
    unknown = sorted(set(customer) - set(table.index))
    if len(table):
        with pd.option_context("display.width", 250, "display.max_columns", 60):
            typer.echo(table.fillna("-").to_string())
    if unknown:
        fail(f"customer(s) {', '.join(unknown[:10])} not in any refresh of '{name}': check the id")


FamilyOption = Annotated[str, typer.Option("--model", "-m", help="Model family: churn, propensity, clv, lead_score...")]


def _registered_name(family: str, data: str) -> str:
    """The registered model of a family on a dataset (``valuecast-<family>-<dataset>``)."""
    from features.config import ConfigError, load_dataset_config
    from training import families

    try:
        return families.registered_name(family, load_dataset_config(data).name)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def experiment(
    config: Annotated[Path, typer.Option(help="Experiment definition, e.g. experiments/churn_cdnow.yaml.")],
    trials: Annotated[int | None, typer.Option(min=1, help="Number of trials (default: the file's).")] = None,
) -> None:
    """Hyperparameter search (Optuna, seeded) as nested MLflow runs; the best model becomes a challenger."""
    _quiet_libraries()
    _quiet_mlflow()
    from experiments.sweep import run_experiment
    from training.guards import TrainingRefusedError

    with user_errors():
        try:
            outcome = run_experiment(config, trials=trials, echo=lambda m: typer.echo(m, err=True))
        except TrainingRefusedError as exc:
            fail(f"training refused: {exc}")
        except KeyboardInterrupt:
            fail("interrupted before any trial finished; nothing was kept", code=130)
    for line in outcome.summary():
        typer.echo(line)
    typer.echo(f"  ({outcome.seconds:.1f}s)")
    if outcome.interrupted:
        raise typer.Exit(130)


@app.command()
def compare(
    experiment: Annotated[str, typer.Option(help="MLflow experiment name, e.g. valuecast-churn or a sweep's name.")],
    metric: Annotated[str | None, typer.Option(help="Sort by this metric (default: the runs' primary metric).")] = None,
    out: Annotated[Path | None, typer.Option(help="Figure file (default out/compare-<experiment>.png).")] = None,
    top: Annotated[int, typer.Option(min=1, help="Rows to print.")] = 30,
) -> None:
    """The runs of an experiment sorted by a metric, with the best baseline and registered versions."""
    _quiet_mlflow()
    from experiments.compare import comparison_figure, comparison_table, default_metric
    from training import tracking

    try:
        runs = tracking.search_runs(experiment)
        chosen = metric or default_metric(runs)
        table = comparison_table(runs, chosen)
    except (tracking.RegistryError, ValueError) as exc:
        fail(str(exc))
    path = out or Path("out") / f"compare-{experiment.replace('/', '_')}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = comparison_figure(table, chosen, f"{experiment}: {chosen}")
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, format=path.suffix.lstrip(".") or "png", dpi=110)
    partial.replace(path)
    table.to_csv(path.with_suffix(".csv"), index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 48):
        typer.echo(table.drop(columns=["run_id"]).head(top).to_string(index=False, float_format="{:.4f}".format))
    typer.echo(f"{len(table)} run(s) sorted by {chosen}; figure: {path}, table: {path.with_suffix('.csv')}")


@app.command()
def promote(
    model: FamilyOption,
    data: DataOption,
    version: Annotated[str, typer.Option(help="Registered version to make the champion.")],
) -> None:
    """Point the champion alias of the family's model for DATA at VERSION (recorded as tags); the API
    serves it after a reload."""
    _quiet_mlflow()
    from training import tracking

    try:
        moved = tracking.promote(_registered_name(model, data), version)
    except tracking.RegistryError as exc:
        fail(str(exc))
    typer.echo(moved.message("promoted"))
    typer.echo("the running API switches after: make reload")


@app.command()
def rollback(model: FamilyOption, data: DataOption) -> None:
    """Move the champion alias of the family's model for DATA back to the previous champion (recorded
    as tags)."""
    _quiet_mlflow()
    from training import tracking

    try:
        moved = tracking.rollback(_registered_name(model, data))
    except tracking.RegistryError as exc:
        fail(str(exc))
    typer.echo(moved.message("rolled back"))
    typer.echo("the running API switches after: make reload")


@app.command("prepare-store")
def prepare_store() -> None:
    """Create or upgrade the tracking store's tables and move models of earlier versions to their
    per-dataset names, once. make serve runs it before the API's workers start, so that they never
    race on a schema migration of a new store."""
    _quiet_mlflow()
    from training import tracking

    tracking.connect().search_registered_models(max_results=1)  # the store creates or upgrades its tables
    tracking.migrate_legacy(echo=lambda m: typer.echo(m, err=True))
    typer.echo(f"store ready: {tracking.redacted(tracking.tracking_uri())}", err=True)


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of objects (for scripts).")] = False,
) -> None:
    """Every registered model: dataset, family, champion version, the winning candidate, its test metric
    and the best baseline's, and when it was trained. Reads the registry only."""
    import json

    _quiet_mlflow()
    from training import tracking

    tracking.migrate_legacy(echo=lambda m: typer.echo(m, err=True))
    rows = tracking.registered_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no registered models in {tracking.redacted(tracking.tracking_uri())}: run make train DATA=...")
        return
    table = pd.DataFrame(rows)[
        [
            "dataset",
            "family",
            "champion_version",
            "candidate",
            "metric",
            "test_value",
            "best_baseline",
            "best_baseline_value",
            "trained_at",
        ]
    ]
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        typer.echo(table.to_string(index=False, float_format="{:.4f}".format))


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    workers: Annotated[int, typer.Option(min=1, help="Server processes (this machine has 2 cores).")] = 1,
) -> None:
    """The MLflow UI and REST API on HOST:PORT against valuecast's tracking store and registry.

    Requests whose Host is not this server's address, and browser requests from other origins than
    its own page (plus VALUECAST_UI_ALLOWED_ORIGINS, comma-separated), are refused by MLflow."""
    import os
    import shutil

    from training import tracking

    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    names = [host, *(["localhost"] if host in ("127.0.0.1", "::1") else [])]
    own_names = [f"{name}:{port}" for name in names]
    extra = os.environ.get("VALUECAST_UI_ALLOWED_ORIGINS", "")
    origins = [f"http://{name}" for name in own_names] + [o.strip() for o in extra.split(",") if o.strip()]
    command = [
        mlflow,
        "server",
        "--backend-store-uri",
        tracking.tracking_uri(),
        "--default-artifact-root",
        tracking.artifact_root(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        # A web page the user visits must not reach the registry through the browser: only this
        # server's own name as Host (DNS rebinding) and only its own page as Origin (cross-site POSTs).
        "--allowed-hosts",
        ",".join(own_names),
        "--cors-allowed-origins",
        ",".join(origins),
    ]
    typer.echo(f"MLflow UI on http://{host}:{port} (store {tracking.tracking_uri()}); Ctrl-C stops it", err=True)
    os.execv(command[0], command)


@app.command("model-quality")
def model_quality(
    out: Annotated[Path | None, typer.Option(help="Output page (default docs/model-quality.md).")] = None,
) -> None:
    """Train every family on the bundled datasets and write the models-against-baselines page."""
    _quiet_libraries()
    from training.quality import write

    with user_errors():
        path = write(out, echo=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {path}")


@app.command()
def lookalike(
    data: DataOption,
    seed: Annotated[
        str,
        typer.Option(help="The seed: a CSV of ids (column customer_id), or a segment name / tier:A of SCORES."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder (replaced only when the run succeeds).")],
    size: Annotated[int | None, typer.Option(help="Audience size (default: the seed's size).")] = None,
    scores: Annotated[
        Path | None, typer.Option(help="A make score output folder of DATA (needed for a segment-name seed).")
    ] = None,
    as_of: AsOfOption = None,
    method: Annotated[
        Literal["pu_classifier", "nearest_neighbours"], typer.Option(help="Ranking method (the other is measured too).")
    ] = "pu_classifier",
    random_state: Annotated[int, typer.Option(help="Seed of the 20% hold-out and the folds.")] = 0,
    force: Annotated[
        bool,
        typer.Option(help="Replace OUT even when it is not a folder valuecast wrote (no .valuecast-output in it)."),
    ] = False,
) -> None:
    """Customers outside SEED ranked by how much they resemble it, with reasons; suppressed customers and
    the seed left out; the top SIZE into OUT/lookalikes.csv; quality on a hidden 20% of the seed."""
    _quiet_libraries()
    _quiet_mlflow()
    from serving.batch import check_replaceable
    from serving.segments import lookalike as lookalikes
    from training import tracking

    cutoff = parse_date(as_of, "AS_OF")
    with user_errors():
        check_replaceable(out, force)
        dataset = _load(data, None)
        with step("ranking the customers outside the seed and measuring on a hidden 20%"):
            result = lookalikes.run(
                dataset,
                seed,
                out,
                size=size,
                as_of=cutoff,
                scores_dir=scores,
                method=method,
                random_state=random_state,
                force=force,
            )
        with step("logging the look-alike run to MLflow"):
            run_id = tracking.log_lookalike_run(result.summary, out)
    info = result.summary
    typer.echo(
        f"\nwrote {info['audience']:,} look-alikes of {info['seed']} ({info['seed_size']:,} customers) to "
        f"{out / lookalikes.OUTPUT_FILE} (MLflow run {run_id}); {info['suppressed_excluded']:,} suppressed left out"
    )
    for quality in result.quality:
        typer.echo(
            f"  {quality.method:<20} recall of the hidden 20% in the top {quality.top_n:,}: {quality.recall:.3f} "
            f"(random {quality.random_recall:.3f}, lift {quality.lift:.1f}x)"
        )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted; outputs of finished steps are complete, the step under way wrote nothing", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
