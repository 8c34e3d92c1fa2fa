# aha-siem-forwarder: `make run` and `make test` are all a new machine needs (Python 3.11+ and make;
# Java 17 and Maven for the Apache Kafka test broker).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The broker the tests run against: Apache Kafka from Maven Central jars (`tansu` where there is no JVM).
KAFKA_KIND ?= kafka
KAFKA_TEST_PORT ?= 19092
KAFKA_TEST_STATE ?= .run/test-kafka
PYTEST_ARGS ?=

SOAK_MINUTES ?= 30

.PHONY: help venv run test unit integration lint format bench bench-latency bench-memory chaos soak kafka-up kafka-down clean

help:
	@echo "make run    - broker + ingest + worker + file sink on this machine (aha-siem dev)"
	@echo "make test   - lint, then unit and integration tests against a real Apache Kafka"
	@echo "make bench  - throughput benchmarks beside their baselines"
	@echo "make bench-memory  - RSS of the worker and each sink process over 1M events (long)"
	@echo "make bench-latency - end-to-end latency per sink at 50 webhooks/s, default and shorter batching"
	@echo "make chaos  - every chaos scenario, the slow ones too (each starts a broker of its own)"
	@echo "make soak   - $(SOAK_MINUTES) min of steady load with broker restarts and a SIEM outage"
	@echo "make lint   - ruff and mypy"
	@echo "make kafka-up / kafka-down - the development broker on 127.0.0.1:9092"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/aha-siem dev

lint: venv
	$(BIN)/ruff check forwarder tests bench
	$(BIN)/ruff format --check forwarder tests bench
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format forwarder tests bench
	$(BIN)/ruff check --fix forwarder tests bench

# Starts a fresh test broker unless KAFKA_BOOTSTRAP names a cluster, runs every test, always stops it.
test: lint
	@set -e; started=""; \
	if [ -z "$$KAFKA_BOOTSTRAP" ]; then \
	  $(BIN)/aha-siem broker stop --state-dir $(KAFKA_TEST_STATE) >/dev/null; \
	  rm -rf $(KAFKA_TEST_STATE); \
	  $(BIN)/aha-siem broker start --state-dir $(KAFKA_TEST_STATE) --port $(KAFKA_TEST_PORT) --kind $(KAFKA_KIND); \
	  KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_TEST_PORT); export KAFKA_BOOTSTRAP; started=1; \
	fi; \
	status=0; $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	if [ -n "$$started" ]; then $(BIN)/aha-siem broker stop --state-dir $(KAFKA_TEST_STATE); fi; \
	exit $$status

unit: venv
	$(BIN)/pytest -m "not integration and not chaos" $(PYTEST_ARGS)

# Fault injection (tests/chaos): each module starts its own broker, which scenarios stop and kill,
# so KAFKA_BOOTSTRAP is not used. `make test` runs the fast scenarios; this runs the slow ones too.
chaos: venv
	CHAOS_SLOW=1 $(BIN)/pytest -m chaos tests/chaos $(PYTEST_ARGS)

# Not a test: a long run that reports loss, duplicates, delay and memory as a markdown table.
soak: venv
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python -m bench.soak

# wrk is the load generator of the ingest benchmark (a Python client would measure itself).
bench: venv
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; }; } || \
	  echo "wrk is not installed: the ingest benchmark falls back to an httpx client"
	$(BIN)/python -m bench

# End-to-end latency per sink at 50 webhooks/s: the sinks' default batching, then every sink at
# 0.5 s and at 0.25 s (about 5 minutes; `make bench` runs the defaults' pass only).
bench-latency: venv
	$(BIN)/python -m bench --only latency --latency-batch-seconds 0.5,0.25

# RSS of the worker and of its sink processes over 1M distinct records (realtime dedupe, retention
# shortened to 120 s so that it applies within the run): long (21 minutes here), niced, not in `make bench`.
BENCH_MEMORY_EVENTS ?= 1000000
bench-memory: venv
	nice -n 10 $(BIN)/python -m bench.memory --events $(BENCH_MEMORY_EVENTS)

kafka-up: venv
	$(BIN)/aha-siem broker start --state-dir .run/kafka --port 9092 --kind auto

kafka-down: venv
	$(BIN)/aha-siem broker stop --state-dir .run/kafka

clean:
	-$(BIN)/aha-siem broker stop --state-dir .run/kafka
	-$(BIN)/aha-siem broker stop --state-dir $(KAFKA_TEST_STATE)
	rm -rf .run $(VENV) .pytest_cache .mypy_cache .ruff_cache
