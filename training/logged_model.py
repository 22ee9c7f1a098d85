"""The code every valuecast model is logged with (MLflow's models from code).

A model is logged as this file plus its fitted state, instead of a cloudpickled Python object (which
MLflow warns can run arbitrary code when loaded, and which ties the artifact to the exact bytecode
of the classes). Loading runs this file's code from the logged source, then :meth:`LoggedModel.load_context`
reads the fitted state: the family's model object (``training.common.CustomerModel`` and the
others, referenced by module and class name, so their code is the logged ``features``/``training``
packages), serialised with joblib. Before unpickling it checks the state's SHA-256 against the digest
recorded at logging in the model's configuration (the ``MLmodel`` file): a state file changed or
swapped after logging is refused instead of run.

Pickle remains the format of the fitted state (scikit-learn and xgboost objects have no other
complete one); the digest makes a swapped artifact fail loudly, it does not make an untrusted model
store safe: only load models from a store you trust (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from training.tracking import DIGEST, STATE, digest_of


class StateDigestError(RuntimeError):
    """A logged model's fitted state does not match the digest recorded when it was logged."""


class LoggedModel(PythonModel):
    """Delegates to the fitted model object it loads from the logged state (``self.model``)."""

    model: Any = None

    def load_context(self, context: Any) -> None:
        import joblib

        path = context.artifacts[STATE]
        expected = (context.model_config or {}).get(DIGEST)
        found = digest_of(path)
        if expected != found:
            raise StateDigestError(
                f"the fitted state {Path(path).name} has SHA-256 {found[:12]}..., but the model was logged with "
                f"{str(expected)[:12]}...: the artifact changed after logging; log the model again"
            )
        self.model = joblib.load(path)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.model.predict(context, model_input, params)


mlflow.models.set_model(LoggedModel())
