"""The service layer: what the API, the worker and the CLI do to datasets, classifiers, base
models, keys and jobs. Imports infrastructure and `models`, never HTTP (`app.api`) or `worker`."""
