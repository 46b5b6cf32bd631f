"""A stand-in for ``vllm serve`` in supervisor tests: prints a few lines, keeps a grandchild in its
process group (like vLLM's EngineCore), and answers ``GET /health`` on 127.0.0.1."""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import subprocess
import sys
import time


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--child-pid-file", required=True)
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument("--no-health", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()

    print("fake vllm starting", flush=True)
    print(f"secret visible: {'VOXTRAL_API_KEY' in os.environ}", flush=True)
    print(f"extra env: {os.environ.get('FAKE_EXTRA', '-')}", flush=True)
    if args.exit_code is not None:
        sys.exit(args.exit_code)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(args.child_pid_file, "a", encoding="utf-8") as handle:
        handle.write(f"{child.pid}\n")
    if args.no_health:
        time.sleep(600)
        return
    time.sleep(0.3)
    server = http.server.HTTPServer(("127.0.0.1", args.port), Health)
    print("fake vllm ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
