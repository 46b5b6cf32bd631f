"""Runs inside the CPU build of vLLM 0.32.0 (its interpreter, not the project's): for each
``vllm serve`` command line it is given, parses it with vLLM's own ``serve`` parser, runs the
checks ``vllm serve`` runs on parsed arguments, and builds the engine configuration from them, the
way ``vllm serve`` does before it loads anything. The GPU build has the same parser and the same
configuration classes; only the platform differs (this one adapts GPU settings to the CPU after
validating them).

Reads a JSON list of argument lists (``["serve", MODEL, FLAGS...]``) on stdin; prints one JSON
object per command: ``{"ok": true, ...what vLLM made of it}`` or ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.cli import serve
from vllm.utils.argparse_utils import FlexibleArgumentParser


def check(argv: list[str]) -> dict[str, Any]:
    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(required=True, dest="subparser")
    (command,) = serve.cmd_init()
    command.subparser_init(subparsers)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(argv)
        command.validate(args)
        args.model = args.model_tag
        engine = AsyncEngineArgs.from_cli_args(args).create_engine_config()
    except SystemExit:  # argparse's refusal, already worded on stderr
        return {"ok": False, "error": errors.getvalue().strip()}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    backend = engine.attention_config.backend
    return {
        "ok": True,
        "attention_backend": backend.name if backend is not None else None,
        "max_model_len": engine.model_config.max_model_len,
        "max_num_seqs": engine.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": engine.scheduler_config.max_num_batched_tokens,
        "gpu_memory_utilization": engine.cache_config.gpu_memory_utilization,
        "served_model_name": engine.model_config.served_model_name,
        "tokenizer_mode": engine.model_config.tokenizer_mode,
        "load_format": str(engine.load_config.load_format),
    }


def main() -> None:
    results = [check(argv) for argv in json.load(sys.stdin)]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
