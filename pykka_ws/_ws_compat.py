"""Every websockets internal pykka-ws relies on, in one place.

pykka-ws uses websockets' threading client (`websockets.sync.client`) through
its public ``connect(create_connection=...)`` hook, with a `ClientConnection`
subclass (`_connection.Connection`). Beyond that public surface it relies on
these internals, which are not promised stable; an upgrade of websockets is
checked here, and `TESTED_VERSIONS` says which releases were tested:

Attributes and methods read or called (wrapped below):

- ``ClientConnection.protocol_mutex``: the lock held for every write and for
  feeding received bytes to the protocol (`protocol_mutex`).
- ``ClientConnection.close_socket()``: shut the socket down and close it, as
  websockets does after a failed write (`close_socket`).
- ``ClientConnection.set_connection_exc()`` (websockets >= 17) /
  ``set_recv_exc()`` (15 and 16): record the transport error that ended the
  connection (`set_transport_error`); read back as ``connection_exc`` /
  ``recv_exc`` (`transport_error`).
- ``ClientConnection.recv_events_thread`` and ``keepalive_thread``: the
  threads it starts, renamed and joined by us.
- ``ClientConnection.protocol`` (a `websockets.protocol.Protocol`):
  ``send_text``, ``send_binary``, ``data_to_send``, ``state``, ``fail``,
  ``close_exc``, ``receive_data`` (public Sans-I/O API of the protocol).
- ``ClientConnection.send_data()``: flush the protocol's output after
  ``protocol.fail()``.
- ``ClientConnection.acknowledge_pings()``: settle keepalive pings on a pong;
  ``pending_pings`` (read, as a hint, to tell a solicited pong from another).
- ``ClientConnection.ping(ack_on_close=True)`` (public): the owner's keepalive
  pings, written by the writer. websockets is given ``ping_interval=None``,
  so it starts no keepalive thread of its own.

Methods overridden by `_connection.Connection`:

- ``process_event(event)``: complete messages go to the owner actor instead
  of websockets' assembler (no second queue).
- ``recv_events()``: wrapped to tell the owner when the connection ends.
- ``start_keepalive()``: wrapped to name the keepalive thread (none is
  started: pykka-ws sends its own pings).
- ``maybe_raise_legacy_warning()``: silenced (we never use the connection
  as a context manager).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

    from websockets.sync.client import ClientConnection

__all__ = [
    "TESTED_VERSIONS",
    "close_socket",
    "protocol_mutex",
    "set_transport_error",
    "transport_error",
]

TESTED_VERSIONS = ("15.0.1", "16.0", "17.4")
"""websockets releases the suite was run against."""


def protocol_mutex(connection: ClientConnection) -> threading.Lock:
    """The lock websockets holds for every write (and to feed received bytes)."""
    return connection.protocol_mutex


def close_socket(connection: ClientConnection) -> None:
    """Shut the socket down and close it, as websockets does after a failed write."""
    connection.close_socket()


def set_transport_error(connection: ClientConnection, exc: BaseException) -> None:
    """Record the transport error that ended the connection."""
    # websockets >= 17: set_connection_exc(); 15 and 16: set_recv_exc().
    setter = getattr(connection, "set_connection_exc", None) or getattr(
        connection, "set_recv_exc", None
    )
    if setter is not None:
        setter(exc)


def transport_error(connection: ClientConnection) -> BaseException | None:
    """The transport error that ended the connection, if websockets recorded one."""
    # websockets >= 17 names it connection_exc, older versions recv_exc.
    error: BaseException | None = getattr(connection, "connection_exc", None) or getattr(
        connection, "recv_exc", None
    )
    return error
