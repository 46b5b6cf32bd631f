"""``python -m launcher``: the one process that systemd or Docker runs.

Phases, each logged: downloading (or reusing, or writing the dummy model), patching the delay into
``tekken.json``, loading (vLLM starting; the proxy already answers ``/healthz``), ready. Then the
proxy serves while vLLM is supervised. SIGTERM drains the proxy first, then stops vLLM's group.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import httpx
import structlog

from launcher.capacity import CapacityError, read_capacity
from launcher.command import build_command
from launcher.config import (
    ConfigError,
    LauncherConfig,
    load_config,
    proxy_environ,
    vllm_install_hint,
)
from launcher.model import ModelError, PreparedModel, prepare_model
from launcher.preflight import print_report, run_checks
from launcher.supervisor import Supervisor, VllmStartError
from launcher.tekken import TekkenError, set_transcription_delay
from proxy.config import ProxyConfig
from proxy.config import load_config as load_proxy_config
from proxy.logs import configure_logging
from proxy.server import ProxyServer, run_event_loop

log = structlog.get_logger("launcher")
T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


async def in_daemon_thread(function: Callable[[], T]) -> T:
    """Run blocking work (a download can take an hour) in a daemon thread, so that a stop request
    does not have to wait for it: unlike ``asyncio.to_thread``, the interpreter exits without
    joining it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(setter: Callable[[], None]) -> None:
        if not future.done():
            setter()

    def target() -> None:
        try:
            result = function()
        except BaseException as exc:
            error = exc  # the except block unbinds `exc` before the callback runs
            loop.call_soon_threadsafe(deliver, lambda: future.set_exception(error))
        else:
            loop.call_soon_threadsafe(deliver, lambda: future.set_result(result))

    threading.Thread(target=target, name="launcher-prepare", daemon=True).start()
    return await future


def prepare(config: LauncherConfig) -> PreparedModel:
    log.info("phase", phase="downloading", model_id=config.model_id)
    model = prepare_model(config)
    log.info("phase", phase="patching", delay_ms=config.transcription_delay_ms)
    changed = set_transcription_delay(model.path / "tekken.json", config.transcription_delay_ms)
    log.info(
        "transcription delay set" if changed else "transcription delay already set",
        delay_ms=config.transcription_delay_ms,
    )
    return model


async def apply_capacity(config: LauncherConfig, server: ProxyServer) -> None:
    """Log how many streams vLLM's KV cache holds; with MAX_CONCURRENT_CONNECTIONS=auto the
    proxy's cap becomes that number, otherwise a cap above it is warned about."""
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            capacity = await read_capacity(client, config.vllm_url)
    except CapacityError as exc:
        log.warning("stream capacity unknown", error=str(exc), startup=True)
        return
    log.info(
        "stream capacity",
        streams=capacity.streams,
        kv_cache_tokens=capacity.kv_cache_tokens,
        max_model_len=capacity.max_model_len,
    )
    proxy_config = server.state.config
    if config.connections_auto:
        fit = max(1, capacity.streams)
        cap = min(fit, config.max_num_seqs) if config.max_num_seqs is not None else fit
        server.state.config = dataclasses.replace(proxy_config, max_connections=cap)
        log.info("MAX_CONCURRENT_CONNECTIONS=auto", max_connections=cap)
    elif proxy_config.max_connections > capacity.streams:
        log.warning(
            f"MAX_CONCURRENT_CONNECTIONS={proxy_config.max_connections} is above the "
            f"{capacity.streams} streams of {capacity.max_model_len} tokens that vLLM's KV cache "
            f"holds; streams beyond them may be preempted: set MAX_CONCURRENT_CONNECTIONS="
            f"{capacity.streams} (or auto), or give vLLM more memory",
            startup=True,
        )


async def run(config: LauncherConfig, proxy_config: ProxyConfig) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    server: ProxyServer | None = None

    def on_signal() -> None:
        # The launcher owns SIGTERM/SIGINT for the whole run. Once the proxy exists, the first
        # signal starts its drain and a second one cuts the drain short.
        stop_requested.set()
        if server is not None:
            server.begin_shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    stop_wait = asyncio.create_task(stop_requested.wait())

    preparing = asyncio.ensure_future(in_daemon_thread(lambda: prepare(config)))
    await asyncio.wait({preparing, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not preparing.done():
        log.info("stop requested while preparing the model")
        return EXIT_OK
    model = preparing.result()  # raises ModelError / TekkenError

    command = build_command(config, model.path)
    supervisor = Supervisor(command, config.health_url, config.startup_timeout_s)
    server = ProxyServer(proxy_config, handle_signals=False)
    proxy_task = asyncio.create_task(server.serve())
    log.info("phase", phase="loading", device=config.device, command=command.shell_line())
    starting = asyncio.create_task(supervisor.start())
    supervising: asyncio.Task[None] | None = None
    exit_code = EXIT_OK
    try:
        await asyncio.wait({starting, proxy_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is None:
            await apply_capacity(config, server)
            log.info(
                "phase", phase="ready", pid=supervisor.pid, served_model=config.served_model_name
            )
            supervising = asyncio.create_task(supervisor.supervise())
            await asyncio.wait({proxy_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        elif starting.done():
            log.error("vllm did not start", error=str(starting.exception()))
            exit_code = EXIT_FAILED
    finally:
        for task in (starting, supervising):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if not proxy_task.done() and not stop_requested.is_set():
            server.begin_shutdown()
        if not proxy_task.done():
            log.info("draining the proxy")
        await asyncio.gather(proxy_task, return_exceptions=True)
        # vLLM goes last, so draining connections could finish their utterances.
        await supervisor.stop()
        stop_wait.cancel()
    if not proxy_task.cancelled() and proxy_task.exception() is not None:
        log.error("proxy failed", error=repr(proxy_task.exception()))
        exit_code = EXIT_FAILED
    log.info("stopped", exit_code=exit_code)
    return exit_code


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Prepare the model, run vLLM under supervision and serve the proxy in front.",
    )
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument(
        "--print-command",
        action="store_true",
        help="print the vllm serve command (with its environment) and exit",
    )
    actions.add_argument(
        "--check",
        action="store_true",
        help="check the host and the settings (driver, GPU memory, disk, compiler, ports...), "
        "print one line per problem and exit 1 if there is any",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return print_report(run_checks(os.environ))
    try:
        config = load_config(os.environ)
        if args.print_command:
            print(build_command(config).shell_line())
            return EXIT_OK
        proxy_config = load_proxy_config(proxy_environ(config, os.environ))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(proxy_config.log_level, keys=proxy_config.secrets)
    for warning in config.warnings:
        log.warning(warning, startup=True)
    if shutil.which(config.vllm_bin) is None:
        log.error(f"vllm is not at {config.vllm_bin}: {vllm_install_hint(config.device)}")
        return EXIT_FAILED
    try:
        return run_event_loop(run(config, proxy_config))
    except (ModelError, TekkenError, VllmStartError) as exc:
        log.error("launcher failed", error=str(exc))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
