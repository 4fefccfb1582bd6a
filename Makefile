# Two commands for people: `make demo` and `make test`. Both run the idempotent setup first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# Loopback only: DDS discovery stays on this host, nothing is sent to the cell's network.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export PYTHONUNBUFFERED := 1
# The ROS 2 wheels to build and test with: kilted, or `make test ROS_DISTRO=jazzy` for Jazzy's
# (its own venv, build-jazzy/ and install-jazzy/; scripts/setup.sh). Exported: bags name it.
export ROS_DISTRO ?= kilted
ENV := source scripts/env.sh &&
DURATION ?= 120
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-unit test-ros lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ENV) python -m vla_insertion.tools.demo --duration $(DURATION)

test: setup
	@$(ENV) pytest -q -p no:cacheprovider $(PYTEST_ARGS) test

# Everything but the tests marked slow (programs, ROS nodes as processes, torchrun, the tiny
# VLM, sim episodes): about a minute on 2 cores, for the edit-test loop. CI runs `test`.
test-fast: setup
	@$(ENV) pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS) test

test-unit: setup
	@$(ENV) pytest -q -p no:cacheprovider $(PYTEST_ARGS) test/unit

test-ros: setup
	@$(ENV) pytest -q -p no:cacheprovider $(PYTEST_ARGS) test/ros

lint: setup
	@$(ENV) pytest -q -p no:cacheprovider test/lint

# Every benchmark with its defaults, one after the other (about 20 minutes: the recorder runs
# 10 minutes); figures go to artifacts/benchmarks/*.json, see docs/benchmarks.md.
bench: setup
	@$(ENV) for b in benchmarks/bench_*.py; do echo "== $$b"; python $$b || echo "!! $$b failed"; done

clean:
	rm -rf build install log artifacts build-jazzy install-jazzy
