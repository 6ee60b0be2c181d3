# Two commands: `make run` (the main job) and `make test` (the whole suite).
# Both build .venv on first use; nothing needs installing by hand.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test setup gpu-test bench clean

$(STAMP): requirements.txt setup.cfg pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $$(./scripts/pick_python.sh)"; $$(./scripts/pick_python.sh) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(PY) -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'devices', jax.devices())"
	@touch $@

setup: $(STAMP)

run: $(STAMP)
	$(PY) experiments/attention_scaling.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# On a CUDA machine: only the tests marked gpu.
gpu-test: $(STAMP)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
