"""Resources: memory stays flat over 100,000 requests; no descriptor or thread leaks.

- 100,000 pipelined requests against a confirming server: the memory the
  process holds after 20,000 and after 100,000 requests (measured with
  `tracemalloc`, traced from the 20,000th on) differs by far less than a leak
  of a few dozen bytes per request would make. The server runs in a child
  process, so that only the client is traced and both get a core.
- 100 connection drops and reconnections of one actor, and 100 start, open,
  stop cycles of fresh actors: the file descriptors (``/proc/self/fd``) and
  library threads come back to where they were.
- Limits against a flooding server: a flood of small frames while the actor
  is stuck is held back by ``max_queue`` (TCP backpressure, memory bounded);
  frames over ``max_size`` (raw, compressed "bombs", or a message of many
  small fragments) fail their connection without being buffered, and the
  connection is replaced.
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from pykka_ws import (
    WebSocketActor,
    WsDelegatedRequest,
    WsEndpoint,
    WsRequestMatch,
)
from pykka_ws.testing import WsTestServer

from .support import (
    FAST_BACKOFF,
    BlockingParse,
    JsonEndpoint,
    Tally,
    library_threads,
    pause,
    req_frame,
    stats,
    tally,
    wait_no_library_threads,
    wait_state,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

FD_DIR = Path("/proc/self/fd")

TOTAL = 100_000
WARMUP = 20_000
WINDOW = 256
# A leak of 64 bytes per request over the 80,000 traced ones would be ~5 MB.
GROWTH_BOUND = 5 * 2**20

# A server in a child process, so that tracemalloc sees the client alone and
# both get a core. argv: mode, count, size, compression.
# - confirm: replies "ok <n>" to "r <n>";
# - flood: on every connection, sends `count` text frames of about `size`
#   bytes as fast as the client takes them, then only reads;
# - oversize: on every connection, sends `count` binary frames of `size` bytes;
# - fragments: on every connection, sends one text message in `count`
#   fragments of `size` bytes each.
SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    MODE, COUNT, SIZE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    COMPRESSION = None if sys.argv[4] == "none" else sys.argv[4]

    async def handler(ws):
        try:
            if MODE == "flood":
                pad = "x" * SIZE
                for i in range(COUNT):
                    await ws.send('{"n": %d, "pad": "%s"}' % (i, pad))
            elif MODE == "oversize":
                for _ in range(COUNT):
                    await ws.send(bytes(SIZE))
            elif MODE == "fragments":
                await ws.send(["x" * SIZE] * COUNT)
            async for frame in ws:
                if MODE == "confirm":
                    await ws.send("ok " + frame[2:])
        except ConnectionClosed:
            pass

    async def main():
        async with serve(
            handler, "127.0.0.1", 0, max_queue=None, compression=COMPRESSION
        ) as server:
            print(server.sockets[0].getsockname()[1], flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
    """
)


@contextlib.contextmanager
def child_server(
    mode: str = "confirm", count: int = 0, size: int = 0, compression: str = "deflate"
) -> Iterator[str]:
    """Run the SERVER script in a child process; yield its URL."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", SERVER, mode, str(count), str(size), compression],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"ws://127.0.0.1:{port}"
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the server's signal to exit
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


class CountingEndpoint(WsEndpoint):
    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        if isinstance(frame, str) and frame.startswith("ok "):
            return WsRequestMatch(int(frame[3:]))
        return None


def fd_count() -> int:
    return len(fd_targets())  # listing the directory opens one more: not counted


def fd_targets() -> dict[str, str]:
    """Descriptor number -> what it points at (sockets with their TCP ports)."""
    ports: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            ports[inode] = (
                f"{int(local.rsplit(':', 1)[1], 16)}->{int(remote.rsplit(':', 1)[1], 16)}"
            )
    targets = {}
    for path in FD_DIR.iterdir():
        try:
            target = str(path.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            target += " " + ports.get(target[8:-1], "(not TCP)")
        targets[path.name] = target
    return targets


def wait_for_descriptors(before: dict[str, str], timeout: float = 10.0) -> None:
    """Wait until no more descriptors are open than ``before``; else fail, naming them."""
    deadline = time.monotonic() + timeout
    while fd_count() > len(before):
        if time.monotonic() >= deadline:
            now = fd_targets()
            new = {fd: target for fd, target in now.items() if before.get(fd) != target}
            pytest.fail(f"{len(now) - len(before)} descriptor(s) leaked: {new}")
        pause(0.02)


def test_100k_requests_leave_memory_flat() -> None:
    with child_server() as url:
        _run_100k(url)


def _run_100k(url: str) -> None:
    ref = WebSocketActor.start(url, endpoint=CountingEndpoint())
    wait_state(ref, "open", 10)
    window: deque[pykka.Future[Any]] = deque()
    baseline = 0
    started = time.monotonic()
    try:
        for i in range(TOTAL):
            if i == WARMUP:
                while window:
                    assert window.popleft().get(timeout=30).confirmed
                gc.collect()
                tracemalloc.start()
                baseline = tracemalloc.get_traced_memory()[0]
            request = WsDelegatedRequest(i, f"r {i}", timeout=30.0)
            window.append(ref.ask(request, block=False))
            if len(window) >= WINDOW:
                assert window.popleft().get(timeout=30).confirmed
        while window:
            assert window.popleft().get(timeout=30).confirmed
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = current - baseline
    after = stats(ref)
    print(  # noqa: T201 - the figure belongs in the test output
        f"\n{TOTAL} requests in {time.monotonic() - started:.1f} s; memory growth from request "
        f"{WARMUP} to {TOTAL}: {growth / 2**20:.3f} MiB (peak while traced "
        f"{peak / 2**20:.1f} MiB); pending={after.pending} queued={after.queued}"
    )
    assert after.outcomes["confirmed"] == TOTAL
    assert after.pending == 0
    assert after.queued == 0
    assert growth < GROWTH_BOUND, f"memory grew by {growth / 2**20:.2f} MiB"


@pytest.mark.skipif(not FD_DIR.is_dir(), reason="needs /proc/self/fd")
def test_100_dropped_connections_leak_no_descriptor_or_thread(server: WsTestServer) -> None:
    ref = WebSocketActor.start(server.url, endpoint=JsonEndpoint(), backoff=FAST_BACKOFF)
    wait_state(ref, "open", 10)
    assert ref.ask(WsDelegatedRequest(0, req_frame(0), timeout=5.0), timeout=10).confirmed
    fds_before, threads_before = fd_targets(), len(library_threads())
    for cycle in range(1, 101):
        # The client may see its connection open before the server does.
        server.wait_for_open_connections(1, timeout=10)
        server.close_connections(abrupt=cycle % 2 == 0)
        wait_until(
            lambda cycle=cycle: (s := stats(ref)).reconnects >= cycle and s.state == "open",  # type: ignore[misc]
            10,
            f"reconnection {cycle}",
        )
    assert ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=5.0), timeout=10).confirmed
    server.wait_for_open_connections(1)
    wait_for_descriptors(fds_before)
    wait_until(lambda: len(library_threads()) <= threads_before, 10, "threads to end")
    print(  # noqa: T201
        f"\nafter 100 reconnections: {fd_count()} descriptors (before: {len(fds_before)}), "
        f"{len(library_threads())} library threads (before: {threads_before})"
    )
    ref.stop(timeout=10)
    wait_no_library_threads(10)


@pytest.mark.skipif(not FD_DIR.is_dir(), reason="needs /proc/self/fd")
def test_100_start_and_stop_cycles_leak_no_descriptor_or_thread(server: WsTestServer) -> None:
    server.wait_for_open_connections(0)
    fds_before = fd_targets()
    started = time.monotonic()
    for cycle in range(100):
        ref = WebSocketActor.start(server.url, endpoint=JsonEndpoint(), backoff=FAST_BACKOFF)
        wait_state(ref, "open", 10)
        if cycle % 10 == 0:
            request = WsDelegatedRequest(cycle, req_frame(cycle), timeout=5.0)
            assert ref.ask(request, timeout=10).confirmed
        ref.stop(timeout=10)
        # stop() returns once on_stop() is done; pykka's threads (the actor's
        # and its writer's) then end on their own, very soon after.
        wait_no_library_threads(10)
    server.wait_for_open_connections(0, timeout=10)
    wait_for_descriptors(fds_before)
    print(  # noqa: T201
        f"\n100 start/stop cycles in {time.monotonic() - started:.1f} s: {fd_count()} "
        f"descriptors (before: {len(fds_before)}), {len(library_threads())} library threads"
    )
    assert server.connections_accepted == 100


# -- limits against a flooding server ----------------------------------------------------


FLOOD_FRAMES = 20_000
FLOOD_FRAME_SIZE = 1024
FLOOD_MAX_QUEUE = 16


def test_a_flood_of_small_frames_while_the_actor_is_stuck_is_held_back_by_max_queue() -> None:
    # 20,000 frames of 1 KiB: ~20 MiB if the client buffered them. It may hold
    # max_queue frames in the inbox plus what websockets reads ahead (64 KiB).
    endpoint = BlockingParse(30, result=1)  # small: the subscriber need not hold the frames
    with child_server("flood", FLOOD_FRAMES, FLOOD_FRAME_SIZE, "none") as url:
        counter = Tally.start()
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            ref = WebSocketActor.start(
                url, endpoint=endpoint, inbound=counter, max_queue=FLOOD_MAX_QUEUE
            )
            assert endpoint.entered.wait(10), "no frame reached the actor"
            # The server writes as fast as TCP lets it: a client without
            # flow control would take the whole flood in well under this.
            pause(1.5)
            stuck_at = tracemalloc.get_traced_memory()
            endpoint.release.set()
        finally:
            endpoint.release.set()
            tracemalloc.stop()
        held = stuck_at[1] - baseline
        wait_until(lambda: tally(counter, "WsInbound") == FLOOD_FRAMES, 60, "every flooded frame")
        after = stats(ref)
        print(  # noqa: T201
            f"\nflood of {FLOOD_FRAMES} x {FLOOD_FRAME_SIZE} B frames with the actor stuck: "
            f"peak memory {held / 2**20:.2f} MiB; then all {after.frames_in} delivered"
        )
        assert held < 4 * 2**20, f"the client held {held / 2**20:.1f} MiB of a stalled flood"
        assert after.frames_in == FLOOD_FRAMES
        assert ref.is_alive()
        ref.stop(timeout=10)
    wait_no_library_threads(10)


def flood_peak(url: str, *, replaced: int) -> tuple[Any, Any, int]:
    """Start an actor with max_size=64 KiB against a flooding server.

    Returns the actor, its inbound counter and the peak traced memory
    (bytes) until ``replaced`` connections have been failed and replaced.
    """
    counter = Tally.start()
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        ref = WebSocketActor.start(
            url, endpoint=JsonEndpoint(), inbound=counter, backoff=FAST_BACKOFF, max_size=64 * 1024
        )
        wait_until(
            lambda: stats(ref).reconnects >= replaced, 30, f"{replaced} connections replaced"
        )
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    return ref, counter, peak


@pytest.mark.parametrize("compression", ["none", "deflate"])
def test_a_flood_of_oversized_frames_fails_each_connection_without_buffering_them(
    compression: str,
) -> None:
    # 8 MiB frames against max_size=64 KiB. Compressed, each is a tiny
    # "decompression bomb" on the wire; uncompressed, 8 MiB of bytes.
    size = 8 * 2**20
    with child_server("oversize", 3, size, compression) as url:
        ref, counter, peak = flood_peak(url, replaced=5)
        after = stats(ref)
        print(  # noqa: T201
            f"\noversized flood ({compression}): {after.reconnects} connections failed and "
            f"replaced; peak memory {peak / 2**20:.2f} MiB; last error: {after.last_error}"
        )
        assert after.frames_in == 0
        assert tally(counter, "WsInbound") == 0
        assert "sent 1009" in (after.last_error or "")  # the client failed it: too big
        assert peak < 4 * 2**20, f"the client held {peak / 2**20:.1f} MiB"
        assert ref.is_alive()
        ref.stop(timeout=10)
    wait_no_library_threads(10)


def test_a_message_of_many_small_fragments_over_max_size_fails_the_connection() -> None:
    # Each fragment is small; the message is 8 MiB. max_size bounds the whole
    # message, so the client gives up at 64 KiB instead of assembling it.
    with child_server("fragments", 8 * 1024, 1024, "none") as url:
        ref, counter, peak = flood_peak(url, replaced=3)
        after = stats(ref)
        print(  # noqa: T201
            f"\nfragmented flood: {after.reconnects} connections failed and replaced; peak "
            f"memory {peak / 2**20:.2f} MiB; last error: {after.last_error}"
        )
        assert after.frames_in == 0
        assert tally(counter, "WsInbound") == 0
        assert "sent 1009" in (after.last_error or "")  # the client failed it: too big
        assert peak < 4 * 2**20, f"the client held {peak / 2**20:.1f} MiB"
        ref.stop(timeout=10)
    wait_no_library_threads(10)
