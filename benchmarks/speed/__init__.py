"""Speed benchmarks, each a module run with `python -m benchmarks.speed.<name>` and writing its
report under benchmarks/results/ (docs/speed.md): `service` (the running service: time to a
classifier, predict, many classifiers, the HTTP stack), `training` (meta-training cost),
`pretraining` (pretraining throughput against the bare step, fp32 and bf16), `evaluation` (an
episodic evaluation's cost per cell) and `distributed` (one process against several). They share
benchmarks/harness.py (a free port, `mtl serve` as a process, the commit and the machine)."""
