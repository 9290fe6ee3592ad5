# The two commands of the README, plus the UI and the benchmarks.
.PHONY: setup run foundation test lint ui bench

setup:
	@bash scripts/setup.sh

run: setup  ## materialize the benchmark on AUGASSETS_PROFILE (default mini) and print the results table
	.venv/bin/augassets benchmark

foundation: setup  ## the mini world's web pool, CLIP, KNN index and Stable Diffusion (as Dagster assets)
	.venv/bin/augassets foundation

test: setup  ## the test suite (smoke profile, seconds to minutes)
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup

lint: setup  ## ruff's checks and format (settings in pyproject.toml), and the package's import layers
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q -p no:cacheprovider augassets_tests/test_layers.py

ui: setup  ## the Dagster UI on http://127.0.0.1:3000
	.venv/bin/augassets ui

bench: setup  ## the performance harness; prints its table
	.venv/bin/python -m benchmarks.run
