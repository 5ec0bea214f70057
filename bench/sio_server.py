"""A python-socketio server for section ``sio`` of the benchmarks, in a process of its own.

Usage: ``python bench/sio_server.py [--max-seconds S]`` (needs bench/requirements.txt)

python-socketio in its threading mode, served by werkzeug's threaded WSGI
server with simple-websocket for the WebSocket transport. It listens on
127.0.0.1 on an ephemeral port, prints ``PORT <n>`` on stdout and serves until
its stdin closes. The ``rpc`` event's handler returns the ack
``{"id": n, "result": {...}}``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

import socketio
from werkzeug.serving import make_server


def main() -> None:
    """Serve until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    # werkzeug logs every request, and a complaint when the socket.io client
    # hangs up; keep the benchmark's output clean.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    sio = socketio.Server(async_mode="threading")

    @sio.on("rpc")
    def rpc(_sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"id": data["id"], "result": {"order": "accepted"}}

    server = make_server("127.0.0.1", 0, socketio.WSGIApp(sio), threaded=True)
    runner = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    runner.start()
    print(f"PORT {server.port}", flush=True)
    done = threading.Event()

    def wait_for_eof() -> None:
        try:
            sys.stdin.read()
        finally:
            done.set()

    threading.Thread(target=wait_for_eof, name="stdin", daemon=True).start()
    done.wait(args.max_seconds)
    server.shutdown()
    runner.join(10)


if __name__ == "__main__":
    main()
