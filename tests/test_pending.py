from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pykka_ws import WsConfirmMode
from pykka_ws._pending import Insert, PendingTable, RecentIds

from .support import FakeClock

C = WsConfirmMode.CONFIRMED
S = WsConfirmMode.SENT

pytestmark = pytest.mark.timeout(60)


def new_table(limit: int = 10) -> tuple[PendingTable, FakeClock]:
    clock = FakeClock()
    return PendingTable(limit, clock=clock), clock


def test_insert_then_same_id_and_fingerprint_joins_the_same_entry() -> None:
    table, _ = new_table()
    r1, e1 = table.insert_or_join(1, "fp", C, 1010.0, "f")
    r2, e2 = table.insert_or_join(1, "fp", C, 1020.0, "f")
    assert (r1, r2) == (Insert.INSERTED, Insert.JOINED)
    assert e1 is e2
    assert len(table) == 1


def test_joiner_with_earlier_deadline_shortens_the_shared_deadline() -> None:
    table, _ = new_table()
    table.insert_or_join(1, "fp", C, 1010.0, "f")
    _, entry = table.insert_or_join(1, "fp", C, 1005.0, "f")
    assert entry is not None
    assert entry.deadline == 1005.0
    assert table.next_deadline() == 1005.0
    assert [e.request_id for e in table.expire_due(1005.0)] == [1]


def test_joiner_with_later_deadline_does_not_extend_it() -> None:
    table, _ = new_table()
    table.insert_or_join(1, "fp", C, 1010.0, "f")
    table.insert_or_join(1, "fp", C, 1050.0, "f")
    assert table.next_deadline() == 1010.0


@pytest.mark.parametrize(("fingerprint", "mode"), [("other", C), ("fp", S)])
def test_same_id_with_other_fingerprint_or_mode_is_a_mismatch(
    fingerprint: str, mode: WsConfirmMode
) -> None:
    table, _ = new_table()
    _, first = table.insert_or_join(1, "fp", C, 1010.0, "f")
    result, entry = table.insert_or_join(1, fingerprint, mode, 1001.0, "g")
    assert result is Insert.MISMATCH
    assert entry is first
    assert first is not None
    assert first.deadline == 1010.0  # untouched


def test_cap_counts_distinct_ids_not_joiners() -> None:
    table, _ = new_table(limit=2)
    table.insert_or_join(1, "a", C, 1010.0, "f")
    table.insert_or_join(2, "b", C, 1010.0, "f")
    assert table.insert_or_join(1, "a", C, 1010.0, "f")[0] is Insert.JOINED
    assert table.insert_or_join(3, "c", C, 1010.0, "f") == (Insert.FULL, None)


def test_cap_frees_up_after_expiry() -> None:
    table, clock = new_table(limit=1)
    table.insert_or_join(1, "a", C, 1010.0, "f")
    assert table.insert_or_join(2, "b", C, 1010.0, "f")[0] is Insert.FULL
    clock.now = 1010.0
    assert len(table.expire_due()) == 1
    assert table.insert_or_join(2, "b", C, 1020.0, "f")[0] is Insert.INSERTED


def test_expire_due_returns_only_due_entries_in_deadline_order() -> None:
    table, _ = new_table()
    for request_id, deadline in [(1, 1003.0), (2, 1001.0), (3, 1005.0), (4, 1002.0)]:
        table.insert_or_join(request_id, request_id, C, deadline, "f")
    assert [e.request_id for e in table.expire_due(1003.0)] == [2, 4, 1]
    assert len(table) == 1
    assert table.next_deadline() == 1005.0


def test_removed_entry_is_not_expired_and_its_id_can_be_reused() -> None:
    table, _ = new_table()
    _, entry = table.insert_or_join(1, "a", C, 1001.0, "f")
    assert entry is not None
    assert table.remove(entry)
    assert not table.remove(entry)
    _, again = table.insert_or_join(1, "b", C, 1009.0, "f")
    assert again is not entry
    assert table.expire_due(1005.0) == []
    assert table.next_deadline() == 1009.0


def test_drain_returns_everything_and_leaves_table_and_heap_empty() -> None:
    table, _ = new_table()
    for i in range(5):
        table.insert_or_join(i, i, C, 1000.0 + i, "f")
    assert [e.request_id for e in table.drain()] == [0, 1, 2, 3, 4]
    assert len(table) == 0
    assert table.heap_size == 0
    assert table.next_deadline() is None


def test_ten_thousand_expired_requests_leave_table_and_heap_empty() -> None:
    table, clock = new_table(limit=10_000)
    for i in range(10_000):
        assert table.insert_or_join(i, i, C, 1001.0 + i / 1000, "f")[0] is Insert.INSERTED
    clock.now = 2000.0
    assert len(table.expire_due()) == 10_000
    assert len(table) == 0
    assert table.heap_size == 0


def test_heap_stays_within_a_constant_factor_of_live_entries() -> None:
    table, _ = new_table(limit=100)
    # Many joins that each shorten the deadline push stale heap items.
    table.insert_or_join(1, "a", C, 10_000.0, "f")
    for step in range(5000):
        table.insert_or_join(1, "a", C, 9_999.0 - step, "f")
        assert table.heap_size <= 2 * len(table) + 65
    # Many inserts and removals too.
    for i in range(5000):
        _, entry = table.insert_or_join(f"x{i}", "b", C, 20_000.0, "f")
        assert entry is not None
        table.remove(entry)
        assert table.heap_size <= 2 * len(table) + 65


def test_pending_table_rejects_bad_limits() -> None:
    with pytest.raises(TypeError):
        PendingTable("10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1"):
        PendingTable(0)


def test_recent_ids_forget_by_count_and_by_age() -> None:
    clock = FakeClock()
    recent = RecentIds(max_count=3, max_age=10.0, clock=clock)
    for i in range(5):
        recent.add(i)
    assert len(recent) == 3
    assert 0 not in recent
    assert 4 in recent
    clock.now += 11.0
    assert [i for i in range(5) if i in recent] == []
    assert len(recent) == 0  # forgotten, not merely hidden


def test_recent_ids_discard_forgets_an_id() -> None:
    recent = RecentIds()
    recent.add("a")
    recent.discard("a")
    recent.discard("never")
    assert "a" not in recent


# -- the table against a simple model -------------------------------------


@dataclass
class ModelEntry:
    fingerprint: int
    mode: WsConfirmMode
    deadline: float


class PendingTableMachine(RuleBasedStateMachine):
    LIMIT = 5

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.table: PendingTable = PendingTable(self.LIMIT, clock=self.clock)
        self.model: dict[int, ModelEntry] = {}

    @rule(
        request_id=st.integers(0, 8),
        fingerprint=st.integers(0, 2),
        mode=st.sampled_from([C, S]),
        timeout=st.floats(0.001, 10.0),
    )
    def insert_or_join(
        self, request_id: int, fingerprint: int, mode: WsConfirmMode, timeout: float
    ) -> None:
        deadline = self.clock.now + timeout
        result, entry = self.table.insert_or_join(request_id, fingerprint, mode, deadline, "f")
        existing = self.model.get(request_id)
        if existing is None:
            if len(self.model) >= self.LIMIT:
                assert result is Insert.FULL
                assert entry is None
            else:
                assert result is Insert.INSERTED
                self.model[request_id] = ModelEntry(fingerprint, mode, deadline)
        elif existing.fingerprint == fingerprint and existing.mode is mode:
            assert result is Insert.JOINED
            existing.deadline = min(existing.deadline, deadline)
        else:
            assert result is Insert.MISMATCH
        if entry is not None:
            assert entry.deadline == self.model[request_id].deadline

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.model)))
        entry = self.table.get(request_id)
        assert entry is not None
        assert self.table.remove(entry)
        del self.model[request_id]

    @rule(step=st.floats(0.0, 5.0))
    def advance_and_expire(self, step: float) -> None:
        self.clock.now += step
        expired = {e.request_id for e in self.table.expire_due()}
        due = {rid for rid, e in self.model.items() if e.deadline <= self.clock.now}
        assert expired == due
        for rid in due:
            del self.model[rid]

    @rule()
    def drain(self) -> None:
        assert {e.request_id for e in self.table.drain()} == set(self.model)
        self.model.clear()

    @invariant()
    def agrees_with_model(self) -> None:
        assert len(self.table) == len(self.model)
        expected = min((e.deadline for e in self.model.values()), default=None)
        assert self.table.next_deadline() == expected
        assert self.table.heap_size <= 2 * len(self.table) + 65


TestPendingTableModel = PendingTableMachine.TestCase
TestPendingTableModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
