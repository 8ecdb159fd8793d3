"""A state machine for checkpoints: several managers on one store, faults on every step.

Two managers (coordinators, each with its own caches) commit to one branch of one local
store, through a wrapper that injects one fault at a time into the next write under a
prefix: refused (a reset before the write), lost (the write landed, its reply did not),
or a full disk. Sessions of the two race on the branch, tags are taken, garbage is
collected with retention. After every step a fresh manager (a foreign reader: no caches)
must list exactly the steps the model holds and read each back exactly.

What must hold:

- a save or commit that returned is listed, and reads back exactly its data;
- one that raised committed nothing, or (its reply lost) committed exactly its data:
  never part of it, never someone else's, never twice;
- of two sessions racing on a branch, one wins; the other rebases when they changed
  disjoint chunks, else gets a clear conflict and commits nothing;
- collection never deletes what a kept step or a tag reads, whatever failed before it;
- every fault leaves the store usable: the next save works.
"""

from __future__ import annotations

import errno
import itertools
import tempfile
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from zarr.storage import LocalStore, WrapperStore

from swarmstore.checkpoint import CheckpointManager
from swarmstore.errors import CheckpointConflictError

PREFIXES = ["objects/", "pieces/", "snapshots/", "refs/", "inflight/"]
MODES = ["refuse", "lost", "full"]
FAULT = st.none() | st.tuples(st.sampled_from(PREFIXES), st.sampled_from(MODES))
FILL = st.integers(0, 5)
CHUNKS = [(0, 0), (0, 1), (1, 0), (1, 1)]  # the 2 x 2 chunk grid of a 4 x 4 array


class Flaky(WrapperStore[LocalStore]):
    """A local store whose next write under ``plan["prefix"]`` fails as ``plan["mode"]``."""

    supports_atomic_create = True  # LocalStore's exclusive create, through the wrapper

    def __init__(self, store: LocalStore, plan: dict[str, Any]) -> None:
        super().__init__(store)
        self.plan = plan

    def _with_store(self, store: LocalStore) -> Flaky:
        return type(self)(store, self.plan)

    def _due(self, key: str) -> str | None:
        p = self.plan
        if p.get("left", 0) > 0 and key.startswith(p["prefix"]):
            p["left"] -= 1
            p["hit"] = True
            return str(p["mode"])
        return None

    async def _write(self, key: str, op: Any) -> None:
        mode = self._due(key)
        if mode == "refuse":
            raise ConnectionResetError(f"injected: {key} refused")
        if mode == "full":
            raise OSError(errno.ENOSPC, f"injected: no space left for {key}")
        await op()
        if mode == "lost":
            raise ConnectionResetError(f"injected: the reply to {key} was lost")

    async def set(self, key: str, value: Any) -> None:
        await self._write(key, lambda: self._store.set(key, value))

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        await self._write(key, lambda: self._store.set_if_not_exists(key, value))

    async def delete(self, key: str) -> None:
        await self._write(key, lambda: self._store.delete(key))


def array(fills: dict[tuple[int, int], int]) -> np.ndarray:
    """A 4 x 4 array whose chunk ``(i, j)`` holds ``fills[(i, j)]`` (0 elsewhere)."""
    out = np.zeros((4, 4), dtype="i4")
    for (i, j), v in fills.items():
        out[2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = v
    return out


class CheckpointMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.plan: dict[str, Any] = {}
        self.store = Flaky(LocalStore(f"{self.dir.name}/ck"), self.plan)
        self.managers = [CheckpointManager(self.store) for _ in range(2)]
        #: step -> the array "a" committed at it, on main
        self.model: dict[int, np.ndarray] = {}
        self.tagged: dict[str, np.ndarray] = {}
        self.names = (f"t{i}" for i in itertools.count())

    def teardown(self) -> None:
        for m in self.managers:
            m.close()
        self.dir.cleanup()

    # --- helpers -------------------------------------------------------------------------
    def arm(self, fault: tuple[str, str] | None) -> None:
        self.plan.clear()
        if fault is not None:
            self.plan.update(prefix=fault[0], mode=fault[1], left=1)

    def fresh(self) -> CheckpointManager:
        return CheckpointManager(LocalStore(f"{self.dir.name}/ck"))

    def read(self, mgr: CheckpointManager, **where: Any) -> np.ndarray:
        return np.asarray(mgr.restore(**where)["a"][:])

    def settle(self, before: set[int], expected: np.ndarray, raised: BaseException | None):
        """After a save or commit: what a foreign reader lists must be the model, plus at
        most this one step holding exactly ``expected`` (required when it returned)."""
        self.plan.clear()
        reader = self.fresh()
        new = set(reader.steps()) - before
        assert set(reader.steps()) >= before, "a step disappeared"
        assert len(new) <= 1, f"one save committed {sorted(new)}"
        if raised is None:
            assert new, "a save that returned is not listed"
        if new:
            (step,) = new
            got = self.read(reader, step=step)
            assert np.array_equal(got, expected), f"step {step} holds other data"
            self.model[step] = expected
        reader.close()

    # --- rules ---------------------------------------------------------------------------
    @rule(m=st.integers(0, 1), fills=st.lists(FILL, min_size=4, max_size=4), fault=FAULT)
    def save(self, m: int, fills: list[int], fault: tuple[str, str] | None) -> None:
        data = array(dict(zip(CHUNKS, fills, strict=True)))
        before = set(self.model)
        self.arm(fault)
        raised = None
        try:
            self.managers[m].save({"a": data}, encoding={"a": {"chunks": (2, 2)}})
        except (OSError, CheckpointConflictError) as e:
            raised = e
            assert fault is not None or isinstance(e, CheckpointConflictError), e
        self.settle(before, data, raised)

    @precondition(lambda self: self.model)
    @rule(
        a=st.sampled_from(CHUNKS),
        b=st.sampled_from(CHUNKS),
        va=FILL,
        vb=FILL,
        fault=FAULT,
    )
    def race(self, a, b, va: int, vb: int, fault: tuple[str, str] | None) -> None:
        """Two managers' sessions on the same tip; A commits, then B (with a fault)."""
        base = self.model[max(self.model)]
        s1, s2 = (m.session() for m in self.managers)
        try:
            zarr.open_array(s1.store, path="a", mode="r+")[
                2 * a[0] : 2 * a[0] + 2, 2 * a[1] : 2 * a[1] + 2
            ] = va
            zarr.open_array(s2.store, path="a", mode="r+")[
                2 * b[0] : 2 * b[0] + 2, 2 * b[1] : 2 * b[1] + 2
            ] = vb
            first = base.copy()
            first[2 * a[0] : 2 * a[0] + 2, 2 * a[1] : 2 * a[1] + 2] = va
            s1.commit()
            self.settle(set(self.model), first, None)
            both = first.copy()
            both[2 * b[0] : 2 * b[0] + 2, 2 * b[1] : 2 * b[1] + 2] = vb
            before = set(self.model)
            # the winner changed the chunk B wrote: a conflict (or B's write on top, never
            # the winner's value under B's commit: a lost update)
            clash = a == b and not np.array_equal(first, base)
            self.arm(fault)
            raised = None
            try:
                s2.commit()
            except CheckpointConflictError as e:
                assert clash or fault is not None, f"a spurious conflict: {e}"
                self.plan.clear()
                assert set(self.fresh().steps()) == before, "the losing session committed"
                return
            except OSError as e:
                raised = e
                assert fault is not None, e
            self.settle(before, both, raised)
        finally:
            s1.close()
            s2.close()

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def tag(self, data: st.DataObject) -> None:
        step = data.draw(st.sampled_from(sorted(self.model)))
        name = next(self.names)
        self.managers[0].tag(name, step)
        self.tagged[name] = self.model[step]

    @rule(keep=st.integers(1, 4), fault=FAULT)
    def collect(self, keep: int, fault: tuple[str, str] | None) -> None:
        """Retention (the newest ``keep`` steps, and the tags), then a sweep; a fault may
        break it part way: what it keeps must read back either way."""
        mgr = CheckpointManager(self.store, keep_last=keep)
        self.arm(fault)
        try:
            mgr.collect_garbage()
        except OSError:
            assert fault is not None
        finally:
            self.plan.clear()
            mgr.close()
        listed = set(self.fresh().steps())
        newest = sorted(self.model)[-keep:]
        assert set(newest) <= listed, f"retention dropped a newest step: {newest} {listed}"
        assert listed <= set(self.model), "collection brought a step back"
        self.model = {s: v for s, v in self.model.items() if s in listed}

    @precondition(lambda self: self.model)
    @rule(keep=st.integers(1, 3), a=st.sampled_from(CHUNKS), va=FILL, m=st.integers(0, 1))
    def collect_beside_a_session(self, keep: int, a, va: int, m: int) -> None:
        """Retention and a sweep run while a session of the other manager has written
        and not committed: its objects are in flight, and its commit must land whole."""
        base = self.model[max(self.model)]
        s = self.managers[m].session()
        try:
            zarr.open_array(s.store, path="a", mode="r+")[
                2 * a[0] : 2 * a[0] + 2, 2 * a[1] : 2 * a[1] + 2
            ] = va
            gc = CheckpointManager(self.store, keep_last=keep)
            gc.collect_garbage()
            gc.close()
            self.model = {k: v for k, v in self.model.items() if k in set(self.fresh().steps())}
            want = base.copy()
            want[2 * a[0] : 2 * a[0] + 2, 2 * a[1] : 2 * a[1] + 2] = va
            before = set(self.model)
            s.commit()
            self.settle(before, want, None)
        finally:
            s.close()

    # --- what a foreign reader sees ------------------------------------------------------
    @invariant()
    def a_foreign_reader_sees_the_model(self) -> None:
        self.plan.clear()
        reader = self.fresh()
        try:
            assert reader.steps() == sorted(self.model)
            for step, want in self.model.items():
                assert np.array_equal(self.read(reader, step=step), want), f"step {step}"
            for name, want in self.tagged.items():
                assert np.array_equal(self.read(reader, tag=name), want), f"tag {name}"
            if self.model:
                assert np.array_equal(self.read(reader), self.model[max(self.model)])
        finally:
            reader.close()


CheckpointMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCheckpointMachine = pytest.mark.timeout(300)(CheckpointMachine.TestCase)
