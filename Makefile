# The two commands: `make run` (the demo on this machine) and `make test` (the whole suite).
# Both set everything up first; see scripts/bootstrap.sh.

VENV := .venv
BIN := $(VENV)/bin
DEMO_BROKER_PORT ?= 1883

.PHONY: run test bench lint bootstrap clean schemas hil pi-check

bootstrap:
	@bash scripts/bootstrap.sh

## run: start the daemon in --demo mode (web UI on http://127.0.0.1:8080), with a local
## mosquitto on 127.0.0.1:$(DEMO_BROKER_PORT) when one is installed and the port is free; the
## daemon dials that port. State (and the web password) is kept in .demo/ between runs.
run: bootstrap
	@DEMO_BROKER_PORT=$(DEMO_BROKER_PORT) bash scripts/run-demo.sh

## test: lint, type-check and run the whole suite.
test: bootstrap lint
	$(BIN)/pytest

## lint: ruff and mypy --strict.
lint: bootstrap
	$(BIN)/ruff check gateway tests bench hil
	$(BIN)/ruff format --check gateway tests bench hil
	$(BIN)/mypy

## bench: benchmarks, each printed as a ratio against a bare baseline from the same run.
bench: bootstrap
	$(BIN)/python -m bench

## hil: the hardware-in-the-loop suite on a real Pi with the test rig wired (hil/README.md).
## `make test` runs the same tests on a simulated rig (gpiozero's mock pins).
hil: bootstrap
	GPIOZERO_PIN_FACTORY=$${GPIOZERO_PIN_FACTORY:-lgpio} $(BIN)/pytest hil -v

## pi-check: install and run the gateway in an emulated arm64 Debian root, as on a Pi
## (as root; slow, so not part of `make test`). PI_SUITE=trixie for Python 3.13.
pi-check:
	@bash scripts/pi-check

## schemas: regenerate docs/schemas/ from the payload models (a test checks they match).
schemas: bootstrap
	$(BIN)/python -m gateway.schemas docs/schemas

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
