"""`pykka_ws.jsonrpc`: the JSON-RPC 2.0 endpoint and frame builders.

First the pure parts (builders, the matcher, parse, batches, odd ids,
garbage), then end to end against a real loopback JSON-RPC 2.0 server
(`WsTestServer` with `RpcServer` as its reply function).

The batch tests that need the actor to accept several matches for one frame
(``match_response`` returning a tuple of `WsRequestMatch`) are marked
``xfail(strict=True)`` until the actor does.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

import pykka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pykka_ws import (
    EndpointRejected,
    Unconfirmed,
    WsConfirmMode,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsEndpoint,
    WsInbound,
    WsOutcome,
    WsRequestMatch,
    WsResolved,
    jsonrpc,
)
from pykka_ws.jsonrpc import (
    JsonRpcEndpoint,
    find_reply,
    notification,
    request,
    request_frame,
)
from pykka_ws.testing import WsTestServer

from .support import Collector, next_of, stats, wait_until
from .support import start as start_actor

pytestmark = pytest.mark.timeout(60)


loose: Any = jsonrpc  # to call the builders with values their types refuse


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- the builders -------------------------------------------------------------------------


def test_request_frame_is_compact_json_rpc_2() -> None:
    assert request_frame(7, "public/test") == '{"jsonrpc":"2.0","id":7,"method":"public/test"}'
    assert (
        request_frame("a-1", "sum", [1, 2])
        == '{"jsonrpc":"2.0","id":"a-1","method":"sum","params":[1,2]}'
    )
    assert json.loads(request_frame(1, "buy", {"amount": 2, "label": "é"})) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "buy",
        "params": {"amount": 2, "label": "é"},
    }
    assert request_frame(1, "m", ()) == '{"jsonrpc":"2.0","id":1,"method":"m","params":[]}'


def test_notification_frame_has_no_id() -> None:
    assert notification("ping") == '{"jsonrpc":"2.0","method":"ping"}'
    assert json.loads(notification("drop", {"down_for": 1})) == {
        "jsonrpc": "2.0",
        "method": "drop",
        "params": {"down_for": 1},
    }


def test_request_builds_the_delegated_request_with_its_options() -> None:
    req = request(5, "private/buy", {"amount": 1})
    assert isinstance(req, WsDelegatedRequest)
    assert req.request_id == 5
    assert req.frame == request_frame(5, "private/buy", {"amount": 1})
    assert req.confirm_mode is WsConfirmMode.CONFIRMED
    assert req.timeout is None
    # The fingerprint defaults to the frame's, as for any request.
    assert req.fingerprint == WsDelegatedRequest(5, req.frame).fingerprint
    assert req.join_key == WsDelegatedRequest(5, req.frame).join_key

    ref = Collector.start(queue.Queue())
    req = request(
        "x",
        "m",
        confirm_mode=WsConfirmMode.SENT,
        timeout=2.5,
        fingerprint="fp",
        reply_to=ref,
        context={"order": 1},
    )
    assert (req.request_id, req.confirm_mode, req.timeout) == ("x", WsConfirmMode.SENT, 2.5)
    assert req.fingerprint == "fp"
    assert req.reply_to is ref
    assert req.context == {"order": 1}


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: loose.request(True, "m"), TypeError),  # a bool is not an id
        (lambda: loose.request(1.0, "m"), TypeError),
        (lambda: loose.request("", "m"), ValueError),
        (lambda: loose.request(1, 2), TypeError),  # the method is a str
        (lambda: loose.request(1, "m", "not params"), TypeError),
        (lambda: loose.request(1, "m", {1, 2}), TypeError),
        (lambda: loose.request(1, "m", [object()]), TypeError),  # not JSON serializable
        (lambda: loose.request(1, "m", [float("nan")]), ValueError),  # not JSON
        (lambda: loose.request(1, "m", timeout=0), ValueError),
        (lambda: loose.request(1, "m", confirm_mode="sent"), TypeError),
        (lambda: loose.request(1, "m", no_such_option=1), TypeError),
        (lambda: loose.request_frame(None, "m"), TypeError),
        (lambda: loose.notification(None), TypeError),
        (lambda: loose.notification("m", 3), TypeError),
    ],
)
def test_builders_refuse_bad_values_at_once(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


# -- the matcher ----------------------------------------------------------------------------


def match(frame: str | bytes) -> Any:
    return JsonRpcEndpoint().match_response(frame)


def test_a_result_matches_its_int_or_str_id() -> None:
    assert match('{"jsonrpc":"2.0","id":1,"result":3}') == WsRequestMatch(1)
    assert match('{"jsonrpc":"2.0","id":"abc","result":null}') == WsRequestMatch("abc")
    assert match('{"id":12345678901234567890,"result":[]}') == WsRequestMatch(12345678901234567890)
    assert match(b'{"jsonrpc":"2.0","id":2,"result":{}}') == WsRequestMatch(2)  # a binary frame


def test_an_error_is_a_rejection_naming_its_message_and_code() -> None:
    frame = dumps(
        {"jsonrpc": "2.0", "id": 4, "error": {"code": -32602, "message": "Invalid params"}}
    )
    assert match(frame) == WsRequestMatch(4, ok=False, message="Invalid params (code -32602)")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            {"code": 10009, "message": "not_enough_funds", "data": {"x": 1}},
            "not_enough_funds (code 10009)",
        ),
        ({"message": "no code"}, "no code"),
        ({"code": -32000}, "JSON-RPC error (code -32000)"),
        ({"code": "E42", "message": "text code"}, "text code (code E42)"),
        ({"code": 1, "message": {"nested": True}}, '{"nested": true} (code 1)'),
        ({}, "JSON-RPC error"),
        ("insufficient funds", "insufficient funds"),  # not JSON-RPC 2.0, still a refusal
        (42, "42"),
        (False, "false"),
    ],
)
def test_odd_error_objects_are_still_rejections(error: Any, message: str) -> None:
    assert match(dumps({"id": 9, "error": error})) == WsRequestMatch(9, ok=False, message=message)


def test_a_null_error_beside_a_result_is_a_success() -> None:
    # JSON-RPC 1.0 servers send both members, the unused one null.
    assert match('{"id":1,"result":5,"error":null}') == WsRequestMatch(1)


@pytest.mark.parametrize("odd_id", ["true", "false", "1.0", "1.5", "null", '""', "[1]", '{"a":1}'])
def test_an_id_that_no_request_can_have_matches_nothing(odd_id: str) -> None:
    assert match(f'{{"jsonrpc":"2.0","id":{odd_id},"result":1}}') is None
    assert match(f'{{"jsonrpc":"2.0","id":{odd_id},"error":{{"code":-32700}}}}') is None


@pytest.mark.parametrize(
    "frame",
    [
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"c"}}',  # notification
        '{"jsonrpc":"2.0","id":3,"method":"client/ping"}',  # a request from the server
        '{"jsonrpc":"2.0","id":3}',  # neither result nor error
        '{"result":1}',  # no id
    ],
)
def test_frames_that_are_not_replies_match_nothing(frame: str) -> None:
    assert match(frame) is None


GARBAGE: list[str | bytes] = [
    "",
    "not json",
    "{",
    '{"id":1,"result":',
    b"\xff\xfe\xfd",  # not UTF-8
    b"\x00\x01",
    "1",
    '"a string"',
    "null",
    "true",
    "NaN",
    "[" * 100_000,  # too deep for the decoder: RecursionError
    "9" * 5000,  # more digits than int() converts: ValueError
    '{"id":1,"result":1}trailing',
]


@pytest.mark.parametrize("frame", GARBAGE, ids=lambda f: repr(f)[:20])
def test_garbage_matches_nothing_and_is_passed_on_as_received(frame: str | bytes) -> None:
    endpoint = JsonRpcEndpoint()
    assert endpoint.match_response(frame) is None
    assert endpoint.parse(frame) is frame
    assert JsonRpcEndpoint().parse(frame) is frame  # without a match_response first, too


# -- batches --------------------------------------------------------------------------------


def test_a_batch_reply_matches_each_of_its_replies_in_order() -> None:
    frame = dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "result": 7},
            {"jsonrpc": "2.0", "id": "b", "error": {"code": -32601, "message": "Method not found"}},
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}},
            {"jsonrpc": "2.0", "id": True, "result": 1},
            {"jsonrpc": "2.0", "method": "note"},
            "junk",
            [{"id": 99, "result": 1}],  # nested arrays are not batches
            {"jsonrpc": "2.0", "id": 3, "result": None},
        ]
    )
    assert match(frame) == (
        WsRequestMatch(1),
        WsRequestMatch("b", ok=False, message="Method not found (code -32601)"),
        WsRequestMatch(3),
    )


@pytest.mark.parametrize("frame", ["[]", '[{"jsonrpc":"2.0","method":"n"}]', "[1,2]"])
def test_a_batch_without_replies_matches_nothing(frame: str) -> None:
    endpoint = JsonRpcEndpoint()
    assert endpoint.match_response(frame) is None
    assert endpoint.parse(frame) == json.loads(frame)  # passed on decoded


def test_a_single_reply_in_a_batch_is_still_a_batch() -> None:
    assert match('[{"id":1,"result":1}]') == (WsRequestMatch(1),)


def test_find_reply_picks_a_request_s_reply_by_json_type_and_value() -> None:
    single = '{"jsonrpc":"2.0","id":1,"result":"one"}'
    batch = dumps(
        [{"id": "1", "result": "str"}, {"id": True, "result": "bool"}, {"id": 1, "result": "int"}]
    )
    assert find_reply(single, 1) == {"jsonrpc": "2.0", "id": 1, "result": "one"}
    assert find_reply(single, "1") is None
    assert find_reply(batch, 1) == {"id": 1, "result": "int"}
    assert find_reply(batch, "1") == {"id": "1", "result": "str"}
    assert find_reply(batch, 2) is None
    assert find_reply("not json", 1) is None
    assert find_reply(b"\xff", 1) is None


# -- parse ----------------------------------------------------------------------------------


def test_a_notification_is_passed_on_decoded() -> None:
    frame = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"c","data":[1]}}'
    endpoint = JsonRpcEndpoint()
    assert endpoint.match_response(frame) is None
    assert endpoint.parse(frame) == json.loads(frame)


def test_parse_takes_what_match_response_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | bytes] = []
    real_loads = json.loads

    def counting_loads(frame: str | bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(frame)
        return real_loads(frame, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting_loads)  # what pykka_ws.jsonrpc calls
    endpoint = JsonRpcEndpoint()
    frames = [
        '{"jsonrpc":"2.0","method":"a","params":[1]}',  # a notification
        '{"jsonrpc":"2.0","id":1,"result":1}',  # a reply (to no pending request)
        '[{"jsonrpc":"2.0","id":2,"result":2}]',  # a batch reply
        "garbage",
    ]
    for frame in frames:
        endpoint.match_response(frame)
        parsed = endpoint.parse(frame)
        assert parsed == (frame if frame == "garbage" else real_loads(frame))
    assert calls == frames  # one decode per frame, none by parse

    # The very object match_response decoded, not a copy.
    frame = '{"jsonrpc":"2.0","method":"b"}'
    seen: list[Any] = []

    def keeping_loads(frame: str | bytes) -> Any:
        seen.append(real_loads(frame))
        return seen[-1]

    monkeypatch.setattr(json, "loads", keeping_loads)
    endpoint.match_response(frame)
    assert endpoint.parse(frame) is seen[0]


def test_parse_decodes_a_frame_match_response_did_not_see() -> None:
    endpoint = JsonRpcEndpoint()
    first, second = '{"method":"first"}', '{"method":"second"}'
    endpoint.match_response(first)
    assert endpoint.parse(second) == {"method": "second"}  # not first's object
    # An equal frame that is another object is decoded, not taken from the cache.
    endpoint.match_response(first)
    other = first.encode().decode()
    assert other == first
    assert other is not first
    assert endpoint.parse(other) == {"method": "first"}
    # The cache is used once: a second parse of the same frame decodes again.
    endpoint.match_response(first)
    one = endpoint.parse(first)
    again = endpoint.parse(first)
    assert one == again
    assert one is not again


def test_decode_can_be_overridden() -> None:
    class Upper(JsonRpcEndpoint):
        def decode(self, frame: str | bytes) -> Any:
            if frame == "boom":
                raise ValueError("not mine")
            return {"method": str(frame).upper()}

    endpoint = Upper()
    assert endpoint.match_response("x") is None
    assert endpoint.parse("x") == {"method": "X"}
    assert endpoint.match_response("boom") is None
    assert endpoint.parse("boom") == "boom"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.sampled_from(["id", "result", "error", "method", "code", "message"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "result", "error", "method", "params", "code", "message"])
            | st.text(max_size=3),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES.map(json.dumps) | st.text(max_size=30) | st.binary(max_size=30))
def test_the_hooks_never_raise_and_answer_well_formed(frame: str | bytes) -> None:
    endpoint = JsonRpcEndpoint()
    matched = endpoint.match_response(frame)
    # A WsRequestMatch is a (named) tuple itself: test for it first.
    if isinstance(matched, WsRequestMatch) or matched is None:
        matches: tuple[Any, ...] = () if matched is None else (matched,)
    else:
        assert type(matched) is tuple
        assert matched  # no matches at all is None, not ()
        matches = matched
    for one in matches:
        assert type(one) is WsRequestMatch
        assert type(one.request_id) in {int, str}
        assert one.request_id != ""
        assert isinstance(one.message, str)
    parsed = endpoint.parse(frame)
    assert isinstance(parsed, dict | list) or parsed is frame


# -- end to end -----------------------------------------------------------------------------


class RpcServer:
    """The server side of JSON-RPC 2.0, as a `WsTestServer` reply function.

    Methods: ``add`` (the sum of its params), ``echo`` (its params),
    ``fail`` (error -32602 "Invalid params", with data), ``notify`` (a
    ``tick`` notification carrying its params, then the result True),
    ``hold`` (no reply yet: it is kept, as an error if its params say
    ``{"fail": true}``) and ``release`` (one batch reply: the held replies,
    then its own). Anything else: -32601. A batch request gets a batch reply.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[dict[str, Any]] = []

    def __call__(self, frame: str | bytes) -> list[str] | None:
        try:
            call = json.loads(frame)
        except ValueError:
            return [
                dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32700, "message": "Parse error"},
                    }
                )
            ]
        if isinstance(call, list):
            frames: list[str] = []
            replies = [reply for one in call if (reply := self._answer(one, frames)) is not None]
            return [*frames, dumps(replies)] if replies else frames
        frames = []
        reply = self._answer(call, frames)
        return frames if reply is None else [*frames, dumps(reply)]

    def _answer(self, call: Any, frames: list[str]) -> dict[str, Any] | None:
        if not isinstance(call, dict) or "id" not in call:
            return None  # a notification
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": call["id"]}
        method: Any = call.get("method")
        params: Any = call.get("params")
        if method == "add":
            return {**reply, "result": sum(params)}
        if method == "echo":
            return {**reply, "result": params}
        if method == "fail":
            error = {"code": -32602, "message": "Invalid params", "data": {"got": params}}
            return {**reply, "error": error}
        if method == "notify":
            frames.append(notification("tick", params))
            return {**reply, "result": True}
        if method == "hold":
            if isinstance(params, dict) and params.get("fail"):
                held = {**reply, "error": {"code": 10009, "message": "not_enough_funds"}}
            else:
                held = {**reply, "result": "held"}
            with self._lock:
                self._held.append(held)
            return None
        if method == "release":
            with self._lock:
                held_replies, self._held = self._held, []
            frames.append(dumps([*held_replies, {**reply, "result": "released"}]))
            return None
        return {**reply, "error": {"code": -32601, "message": "Method not found"}}


@pytest.fixture
def rpc_server() -> Iterator[WsTestServer]:
    with WsTestServer(RpcServer()) as srv:
        yield srv


start = partial(start_actor, default_timeout=5.0)


def ask(ref: pykka.ActorRef[Any], req: WsDelegatedRequest) -> WsDelegatedOk:
    ok = ref.ask(req, timeout=10)
    assert isinstance(ok, WsDelegatedOk)
    return ok


def test_a_result_confirms_the_call(rpc_server: WsTestServer) -> None:
    ref = start(rpc_server.url, JsonRpcEndpoint())
    ok = ask(ref, request(1, "add", [1, 2, 3]))
    assert ok.confirmed
    assert ok.request_id == 1
    assert ok.response is not None
    assert json.loads(ok.response) == {"jsonrpc": "2.0", "id": 1, "result": 6}
    assert rpc_server.received == [request_frame(1, "add", [1, 2, 3])]


def test_an_error_is_endpoint_rejected_with_its_message_and_code(
    rpc_server: WsTestServer,
) -> None:
    ref = start(rpc_server.url, JsonRpcEndpoint())
    with pytest.raises(EndpointRejected) as caught:
        ref.ask(request(2, "fail", {"amount": -1}), timeout=10)
    rejected = caught.value
    assert rejected.request_id == 2
    assert rejected.message == "Invalid params (code -32602)"
    assert "Invalid params (code -32602)" in str(rejected)
    # The whole error object stays available in the reply frame.
    reply = find_reply(rejected.response, 2)
    assert reply is not None
    assert reply["error"] == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"got": {"amount": -1}},
    }
    assert stats(ref).outcomes["rejected"] == 1


def test_str_ids_are_request_ids(rpc_server: WsTestServer) -> None:
    ref = start(rpc_server.url, JsonRpcEndpoint())
    ok = ask(ref, request("order-7", "echo", {"a": 1}))
    assert ok.request_id == "order-7"
    assert ok.response is not None
    assert json.loads(ok.response)["result"] == {"a": 1}
    with pytest.raises(EndpointRejected, match="Method not found"):
        ref.ask(request("order-8", "nope"), timeout=10)


def test_a_reply_to_another_id_type_confirms_nothing(rpc_server: WsTestServer) -> None:
    # The server answers id "1" for request 1: it is not request 1's reply.
    rpc_server.set_reply(lambda _frame: dumps({"jsonrpc": "2.0", "id": "1", "result": 1}))
    ref = start(rpc_server.url, JsonRpcEndpoint())
    with pytest.raises(Unconfirmed):
        ref.ask(request(1, "add", [1], timeout=0.5), timeout=10)


def test_the_outcome_reaches_a_reply_to_actor(rpc_server: WsTestServer) -> None:
    outcomes: queue.Queue[Any] = queue.Queue()
    ref = start(rpc_server.url, JsonRpcEndpoint())
    ref.tell(request(3, "add", [2, 2], reply_to=Collector.start(outcomes), context="ctx"))
    outcome = next_of(outcomes, WsOutcome)
    assert outcome.context == "ctx"
    assert json.loads(outcome.result().response)["result"] == 4


def test_a_notification_reaches_subscribers_decoded(
    rpc_server: WsTestServer, collector: pykka.ActorRef[Any], sink: queue.Queue[Any]
) -> None:
    ref = start(rpc_server.url, JsonRpcEndpoint(), inbound=collector)
    ask(ref, request(1, "notify", {"channel": "ticker", "seq": 1}))
    inbound = next_of(sink, WsInbound)
    assert inbound.message == {
        "jsonrpc": "2.0",
        "method": "tick",
        "params": {"channel": "ticker", "seq": 1},
    }
    assert inbound.frame == notification("tick", {"channel": "ticker", "seq": 1})
    # A push not caused by any call, and garbage, too (garbage as received).
    rpc_server.send_to_all(notification("tick", {"seq": 2}))
    assert next_of(sink, WsInbound).message == {
        "jsonrpc": "2.0",
        "method": "tick",
        "params": {"seq": 2},
    }
    rpc_server.send_to_all("not json")
    garbage = next_of(sink, WsInbound)
    assert garbage.message == "not json"
    assert garbage.frame == "not json"
    assert stats(ref).hook_errors == 0


def test_a_reply_to_no_pending_request_reaches_subscribers_decoded(
    rpc_server: WsTestServer, collector: pykka.ActorRef[Any], sink: queue.Queue[Any]
) -> None:
    class Hello(JsonRpcEndpoint):
        def on_open(self) -> list[str]:
            return [request_frame("hello", "echo", ["hi"])]

    start(rpc_server.url, Hello(), inbound=collector)
    inbound = next_of(sink, WsInbound)
    assert inbound.message == {"jsonrpc": "2.0", "id": "hello", "result": ["hi"]}


class CountingEndpoint(JsonRpcEndpoint):
    """Counts the decodes of each frame (on the actor's thread only)."""

    def __init__(self) -> None:
        self.decoded: Counter[str | bytes] = Counter()

    def decode(self, frame: str | bytes) -> Any:
        self.decoded[frame] += 1
        return super().decode(frame)


def test_every_inbound_frame_is_decoded_once(
    rpc_server: WsTestServer, collector: pykka.ActorRef[Any], sink: queue.Queue[Any]
) -> None:
    class Counting(CountingEndpoint):
        def on_open(self) -> list[str]:
            return [request_frame("on-open", "echo", [0])]  # its reply matches no request

    endpoint = Counting()
    ref = start(rpc_server.url, endpoint, inbound=collector)
    ask(ref, request(1, "add", [1]))  # a reply
    with pytest.raises(EndpointRejected):
        ref.ask(request(2, "fail"), timeout=10)  # an error reply
    ask(ref, request(3, "notify", {"n": 3}))  # a notification, then a reply
    rpc_server.send_to_all("garbage")
    wait_until(lambda: stats(ref).frames_in == 6, what="6 frames in")
    got = [next_of(sink, WsInbound).message for _ in range(3)]
    assert {"jsonrpc": "2.0", "id": "on-open", "result": [0]} in got
    assert {"jsonrpc": "2.0", "method": "tick", "params": {"n": 3}} in got
    assert "garbage" in got
    assert sum(endpoint.decoded.values()) == 6
    assert set(endpoint.decoded.values()) == {1}
    assert stats(ref).hook_errors == 0


# -- batches end to end (need the actor to take a tuple of matches) -------------------------


def test_a_batch_reply_completes_each_of_its_ids(rpc_server: WsTestServer) -> None:
    ref = start(rpc_server.url, JsonRpcEndpoint())
    first = ref.ask(request(1, "hold"), block=False)
    second = ref.ask(request("two", "hold", {"fail": True}), block=False)
    rpc_server.wait_for_received(2)
    third = ref.ask(request(3, "release"), block=False)  # the server answers all three at once
    ok = first.get(timeout=10)
    assert isinstance(ok, WsDelegatedOk)
    assert ok.response is not None
    assert find_reply(ok.response, 1) == {"jsonrpc": "2.0", "id": 1, "result": "held"}
    with pytest.raises(EndpointRejected) as caught:
        second.get(timeout=10)
    assert caught.value.message == "not_enough_funds (code 10009)"
    assert caught.value.request_id == "two"
    released = third.get(timeout=10)
    assert isinstance(released, WsDelegatedOk)
    assert released.response == ok.response  # the same batch frame
    counts = stats(ref)
    assert counts.outcomes["confirmed"] == 2
    assert counts.outcomes["rejected"] == 1
    assert counts.hook_errors == 0


def test_a_batch_reply_to_no_pending_request_reaches_subscribers(
    rpc_server: WsTestServer, collector: pykka.ActorRef[Any], sink: queue.Queue[Any]
) -> None:
    class BatchOnOpen(JsonRpcEndpoint):
        def on_open(self) -> list[str]:
            calls = [json.loads(request_frame(f"open-{n}", "echo", [n])) for n in (1, 2)]
            return [dumps(calls)]

    ref = start(rpc_server.url, BatchOnOpen(), inbound=collector)
    inbound = next_of(sink, WsInbound)
    assert inbound.message == [
        {"jsonrpc": "2.0", "id": "open-1", "result": [1]},
        {"jsonrpc": "2.0", "id": "open-2", "result": [2]},
    ]
    assert stats(ref).hook_errors == 0


def test_a_batch_reply_partly_for_no_request_completes_and_passes_on(
    rpc_server: WsTestServer, collector: pykka.ActorRef[Any], sink: queue.Queue[Any]
) -> None:
    # Request 1 is held; the batch answering "release" also carries a reply to
    # an id that is not pending ("stray"), so the frame goes to subscribers too.
    rpc_server.set_reply(
        lambda frame: dumps(
            [
                {"jsonrpc": "2.0", "id": json.loads(frame)["id"], "result": "ok"},
                {"jsonrpc": "2.0", "id": "stray", "result": "?"},
            ]
        )
    )
    ref = start(rpc_server.url, JsonRpcEndpoint(), inbound=collector)
    ok = ask(ref, request(1, "anything"))
    assert ok.response is not None
    assert find_reply(ok.response, 1) == {"jsonrpc": "2.0", "id": 1, "result": "ok"}
    inbound = next_of(sink, WsInbound)
    assert inbound.frame == ok.response
    assert isinstance(inbound.message, list)
    assert stats(ref).hook_errors == 0


# -- the probe hook: resolving Unconfirmed calls ----------------------------------------


class StatusVenue:
    """Holds ``place`` calls silently (the ack is lost); ``status`` says what it holds.

    ``status`` of a label it holds: the result ``"filled"``; of one it never
    got: the error -32004 "order not found" (as venues answer).
    """

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, frame: str | bytes) -> str | None:
        call = json.loads(frame)
        with self.lock:
            self.calls.append(call)
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": call["id"]}
        label = call["params"]["label"]
        if call["method"] == "place":
            if call["params"].get("lost"):
                return None  # it never reached the venue's book
            with self.lock:
                self.held.add(label)
            return None  # executed, the ack lost
        if label in self.held:
            return dumps({**reply, "result": "filled"})
        return dumps({**reply, "error": {"code": -32004, "message": "order not found"}})


class StatusEndpoint(JsonRpcEndpoint):
    probe_timeout = 2.0

    def probe_call(
        self, request_id: Any, call: dict[str, Any]
    ) -> tuple[str, jsonrpc.Params | None] | None:
        if call["method"] != "place":
            return None
        return "status", {"label": call["params"]["label"]}

    def probe_reply(self, reply: dict[str, Any]) -> bool | None:
        if reply.get("result") == "filled":
            return True
        error = reply.get("error") or {}
        return False if error.get("code") == -32004 else None


@pytest.mark.parametrize(("lost", "executed"), [(False, True), (True, False)])
def test_the_status_call_of_probe_call_resolves_an_unconfirmed_call(
    lost: bool, executed: bool
) -> None:
    venue = StatusVenue()
    with WsTestServer(venue) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        ref = start(srv.url, StatusEndpoint(), probe_delay=0.05)
        params = {"label": "o-5", "lost": lost}
        ref.tell(request(5, "place", params, timeout=0.3, reply_to=Collector.start(sink)))
        outcome = next_of(sink, WsOutcome)
        assert isinstance(outcome.error, Unconfirmed)
        resolved = next_of(sink, WsResolved)
        assert resolved.request_id == 5
        assert resolved.executed is executed
        assert venue.calls[-1] == {
            "jsonrpc": "2.0",
            "id": "probe:5",
            "method": "status",
            "params": {"label": "o-5"},
        }
        reply = json.loads(resolved.response)
        assert reply["id"] == "probe:5"
        assert ("result" in reply) is executed  # an error reply is read by probe_reply too
        assert stats(ref).probes == 1


class AskingNothing(StatusEndpoint):
    def __init__(self) -> None:
        self.asked = threading.Event()

    def probe_call(
        self, request_id: Any, call: dict[str, Any]
    ) -> tuple[str, jsonrpc.Params | None] | None:
        self.asked.set()
        return None


def test_probe_call_returning_none_sends_no_probe_and_a_late_reply_still_resolves() -> None:
    with WsTestServer(None) as silent:
        sink: queue.Queue[Any] = queue.Queue()
        endpoint = AskingNothing()
        ref = start(silent.url, endpoint, probe_delay=0.05)
        ref.tell(request(6, "place", {"label": "o-6"}, timeout=0.3, reply_to=Collector.start(sink)))
        assert isinstance(next_of(sink, WsOutcome).error, Unconfirmed)
        assert endpoint.asked.wait(10)  # the probe was due: probe_call said "nothing to ask"
        assert stats(ref).probes == 0
        silent.send_to_all(dumps({"jsonrpc": "2.0", "id": 6, "result": "filled"}))
        resolved = next_of(sink, WsResolved)  # still waiting to be resolved
        assert (resolved.request_id, resolved.executed) == (6, True)
        assert [json.loads(f)["method"] for f in silent.received] == ["place"]


def test_an_endpoint_without_probe_call_has_no_probe_and_costs_nothing() -> None:
    class Plain(JsonRpcEndpoint):
        def probe_reply(self, reply: dict[str, Any]) -> bool | None:
            return True  # no probe_call: never used

    # The actor watches outcomes only for classes that override WsEndpoint.probe.
    assert JsonRpcEndpoint.probe is WsEndpoint.probe
    assert Plain.probe is WsEndpoint.probe
    assert Plain.probe_result is WsEndpoint.probe_result
    assert StatusEndpoint.probe is not WsEndpoint.probe
    frame = request_frame(7, "place", {"label": "x"})
    probe = StatusEndpoint().probe(7, frame)
    assert probe is not None
    assert probe.request_id == "probe:7"
    assert probe.timeout == 2.0
    assert (probe.retry, probe.idempotent) == (True, True)  # a status call is safe to repeat
    text_id = StatusEndpoint().probe("7", request_frame("7", "place", {"label": "x"}))
    assert text_id is not None
    assert text_id.request_id == "probe:'7'"  # not the probe of the int id 7
    assert StatusEndpoint().probe(8, "not json") is None
    assert StatusEndpoint().probe(9, dumps([json.loads(frame)])) is None  # a batch
    assert StatusEndpoint().probe_result(b"\xff") is None


def test_a_subclass_s_own_probe_is_kept() -> None:
    class Own(StatusEndpoint):
        def probe(self, request_id: Any, frame: str | bytes) -> WsDelegatedRequest | None:
            return None

    assert Own().probe(1, request_frame(1, "place", {"label": "x"})) is None
    assert Own.probe_result is StatusEndpoint.probe_result
