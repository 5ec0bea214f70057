"""The benchmarks' WebSocket server: plain websockets (sync), in a process of its own.

Usage: ``python bench/server.py [--max-seconds S]``

It listens on 127.0.0.1 on an ephemeral port, prints ``PORT <n>`` on stdout,
and serves until its stdin closes (or ``--max-seconds`` pass). Compression is
off. Per text frame:

- ``{"id": n, ...}`` is a JSON-RPC request: it replies
  ``{"id": n, "result": {"order": "accepted", "sends": k}}``, where k counts
  the frames without an id received on this connection since the previous
  reply. With ``"silent": true`` in the request it replies nothing. The
  method ``"cpu"`` replies ``{"id": n, "result": {"cpu": s}}`` with the CPU
  seconds this process has used (all threads), for the client's accounting.
- Anything else is a fire-and-forget frame: counted, not answered.

websockets' sync server runs one thread per connection.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

_REQUEST_PREFIX = '{"id"'


def handle(ws: ServerConnection) -> None:
    """Answer one connection's requests until it closes."""
    sends = 0
    try:
        for message in ws:
            if isinstance(message, str) and message.startswith(_REQUEST_PREFIX):
                request = json.loads(message)
                if request.get("silent"):
                    continue
                if request.get("method") == "cpu":
                    ws.send(
                        json.dumps({"id": request["id"], "result": {"cpu": time.process_time()}})
                    )
                    continue
                reply = {"id": request["id"], "result": {"order": "accepted", "sends": sends}}
                ws.send(json.dumps(reply))
                sends = 0
            else:
                sends += 1
    except ConnectionClosed:
        pass


def _wait_for_eof(done: threading.Event) -> None:
    try:
        sys.stdin.read()
    finally:
        done.set()


def main() -> None:
    """Serve until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = sock.getsockname()[1]
    with serve(handle, sock=sock, compression=None, max_size=2**20) as server:
        runner = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
        runner.start()
        print(f"PORT {port}", flush=True)
        done = threading.Event()
        threading.Thread(target=_wait_for_eof, args=(done,), name="stdin", daemon=True).start()
        done.wait(args.max_seconds)
        server.shutdown()
        runner.join(10)


if __name__ == "__main__":
    main()
