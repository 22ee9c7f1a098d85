"""Experiments: the hyperparameter sweeps of ``make experiment`` (:mod:`experiments.sweep`) and the
side-by-side runs of ``make compare`` (:mod:`experiments.compare`), beside the experiment YAML files
they read (``experiments/<name>.yaml``)."""
