"""``python -m proxy``: serve the envelope proxy in front of a running vLLM."""

from __future__ import annotations

import sys

from proxy.config import ConfigError, load_config
from proxy.logs import configure_logging
from proxy.server import ProxyServer, run_event_loop


def main() -> int:
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, keys=config.secrets)
    run_event_loop(ProxyServer(config).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
