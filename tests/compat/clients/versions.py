"""Prints the installed version of each named distribution, and whether its modules import, as
one JSON object: {"versions": {name: version or null}, "imports": {module: error or null}}."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys


def main() -> None:
    names = sys.argv[1:]
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    imports: dict[str, str | None] = {}
    for module in (
        "openai.resources.realtime",
        "livekit.plugins.openai",
        "pipecat.services.openai.stt",
        "pipecat.services.mistral.stt",
        "mistralai.extra.realtime",
    ):
        try:
            importlib.import_module(module)
            imports[module] = None
        except Exception as error:  # any import failure is the finding
            imports[module] = repr(error)
    print(json.dumps({"versions": versions, "imports": imports}))


if __name__ == "__main__":
    main()
