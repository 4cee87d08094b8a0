# The two commands a newcomer needs:  `make run`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint

$(BIN)/.installed: requirements.txt cli/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# The portal with its embedded defaults: SQLite, three simulated Atlas environments, a worker,
# the embedded broker (unless CELERY_BROKER_URL is set) and DEBUG on: a demo, not a deployment.
run: $(BIN)/.installed
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py runportal

# The test suite. Without CELERY_BROKER_URL / DATABASE_URL it uses SQLite and an embedded broker.
# It runs in PYTEST_WORKERS pytest-xdist processes (the tests mostly wait on workers, simulators
# and a browser); `make test PYTEST_WORKERS=0` runs it in one. PYTEST_ARGS go to pytest last.
PYTEST_WORKERS ?= 4
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
