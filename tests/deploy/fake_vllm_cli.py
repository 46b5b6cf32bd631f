"""Stands in for the `vllm` executable in the lifecycle tests: takes the launcher's
`vllm serve DIR --port N --served-model-name M ...` and runs the fake realtime server there."""

from __future__ import annotations

import argparse
import sys

from devtools import fake_vllm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    args, _ = parser.parse_known_args()
    sys.argv = [
        "fake_vllm",
        "--port",
        str(args.port),
        "--served-model-name",
        args.served_model_name,
    ]
    fake_vllm.main()


if __name__ == "__main__":
    main()
