# Yap Voxtral STT. `make up` runs the service, `make test` runs every test tier. The client
# targets pass ARGS on to their tool (`make warmup ARGS=--telephony`).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
SERVER ?= localhost:8000

.PHONY: help env test lint fmt doctor up down restart status logs warmup convo idle remote bench bench-proxy bench-vad

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

env:  ## install uv if missing and sync the locked environment
	@source scripts/lib.sh && sync_env

test:  ## every test: unit, integration (fake vLLM), end to end (real vLLM on CPU)
	@scripts/test.sh

lint:  ## ruff, ruff format --check, mypy
	@scripts/lint.sh

fmt:  ## apply ruff's fixes and formatting
	@scripts/lint.sh --fix

doctor: env  ## check the host and the settings before `make up` (driver, GPU memory, disk, ports...)
	@. scripts/ops.sh && load_env_file "$$ENV_FILE" && $(PY) -m launcher --check

up:  ## start the service, wait until ready, follow its log (TAIL_LOGS=0 skips)
	@scripts/main.sh

down:  ## stop the service: drain the connections, then vLLM
	@scripts/stop.sh

restart:  ## make down, then make up with the model the service ran
	@scripts/main.sh --restart

status:  ## pid, uptime, /healthz, /readyz, connections, vLLM state
	@scripts/status.sh

logs:  ## follow logs/server.log
	@tail -n 100 -F "$${VOXTRAL_LOG_DIR:-logs}/server.log"

warmup: env  ## one utterance through a running server
	@$(PY) -m clients.warmup --server $(SERVER) $(ARGS)

convo: env  ## two utterances over one socket
	@$(PY) -m clients.convo --server $(SERVER) $(ARGS)

idle: env  ## connect, send nothing, expect the idle close
	@$(PY) -m clients.idle --server $(SERVER) $(ARGS)

remote: env  ## warmup against a remote host (wss, longer timeouts)
	@$(PY) -m clients.remote --server $(SERVER) $(ARGS)

bench: env  ## concurrency sweep against SERVER (CONCURRENCY=8,32; default: up to its capacity)
	@$(PY) -m clients.bench --server $(SERVER) --sweep "$${CONCURRENCY:-auto}" $(ARGS)

bench-proxy: env  ## proxy overhead: direct vs through the proxy (MODE=turns: turn detection off vs on; MODE=latency: first word per audio shape)
	@$(PY) -m devtools.$(if $(filter turns,$(MODE)),bench_proxy_turns,$(if $(filter latency,$(MODE)),bench_proxy_latency,bench_proxy)) $(if $(STREAMS),--streams $(STREAMS)) $(BENCH_PROXY_ARGS) $(ARGS)

bench-vad: env  ## turn detection's CPU per audio second per stream, in-process, VAD on vs off
	@$(PY) -m devtools.bench_vad --streams "$${STREAMS:-100,300}" $(ARGS)
