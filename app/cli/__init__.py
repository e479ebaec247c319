"""The `mtl` command: `main` parses and dispatches; `ml`, `ops`, `remote` and `bench` hold the
commands."""
