# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Each installs what it needs first (scripts/setup.sh is idempotent and quick when done).
PYTHON_VENV := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast zoo stack stack-down clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/fledge demo

# The stack's Debian packages (PostgreSQL, Prometheus, Chromium) come with the tests, not the demo.
test: setup
	@bash scripts/stack-setup.sh
	@bash scripts/test.sh $(PYTEST_ARGS)

# Pure logic and in-process integration only (real MLflow and Prefect): no zoo, no vLLM (a few minutes).
test-fast: setup
	@bash scripts/test.sh -m "not vllm and not zoo and not e2e and not stack" $(PYTEST_ARGS)

# The team stack (PostgreSQL, MLflow and Prefect servers, workers, Prometheus): README "Run Fledge as a team".
stack: setup
	.venv/bin/fledge stack up

stack-down: setup
	.venv/bin/fledge stack down

zoo: setup
	.venv/bin/fledge zoo build

clean:
	rm -rf .fledge .pytest_cache
