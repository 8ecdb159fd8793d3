"""Erasure-coded keys against a model of acknowledged values (issue 20): a sibling of
``test_state_machine.py`` over RS(3,2) on five memory nodes, three coordinators.

Faults: outages, writes whose commits fail or whose replies are lost (a crash between two
steps; the coordinator is then replaced by a fresh one), bit rot, wiped fragments, deletes;
repairs from any coordinator. Model: ``allowed[key]`` is what a read may return (None:
absent); an acknowledged write or delete makes it one value, a failed one adds its value.
A read returns an allowed value, and fails (``FragmentsUnavailable``) only when more than
``m`` fragments are bad. Faults are injected only while every key keeps at most ``m`` bad
fragments; a repair then leaves every fragment current and every read unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import uuid

import dask.config
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from machine_model import PinnedRouter
from machine_nodes import MemoryNodes
from zarr.core.buffer import default_buffer_prototype

from swarmstore.errors import FragmentsUnavailable, QuorumError
from swarmstore.storage import ReplicatedStore
from swarmstore.testing import Faults, flip_byte
from swarmstore.testing._faulty_node import FaultyNode

PROTO = default_buffer_prototype()
K, M = 3, 2
N = K + M
COORDS = 3
KEYS = ["k0", "k1", "a/c/0"]
KEY = st.sampled_from(KEYS)
VALUE = st.binary(min_size=0, max_size=200)
NODE = st.integers(0, N - 1)
COORD = st.integers(0, COORDS - 1)
SUBSET = st.sets(st.integers(0, N - 1), max_size=N)


class CodedRouter(PinnedRouter):
    """The pinned router, also ordering a coded read's fragments: the pinned node first."""

    def order(self, sources, name, nbytes=None):
        return sorted(sources, key=lambda s: name(s) != self.first)

    #: seconds every other node's answer waits (the pinned node answers first, as a near one
    #: would). 0 in the machine: with lags, background repairs overlap later rules and a
    #: rule's outcome (take_down's tolerance check) depends on timing, which hypothesis
    #: cannot replay (FlakyStrategyDefinition)
    lag = 0.0

    async def send(self, source, attempt, *, name, nbytes=0):
        if self.lag and name(source) != self.first:
            await asyncio.sleep(self.lag)
        return await attempt(source)


class CodedMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # a write whose quorum waits on a held commit gives up after 30 s (not 60): a
        # saturated machine takes seconds a step, which must not read as a frozen node
        self.config = dask.config.set(
            {"swarmstore.storage.write-grace": 0.01, "swarmstore.storage.node-timeout": 30}
        )
        self.config.__enter__()
        self.loop = asyncio.new_event_loop()
        self.faults = [Faults() for _ in range(N)]
        self.dirs = tempfile.TemporaryDirectory()
        self.router = CodedRouter()
        self.kind = MemoryNodes(uuid.uuid4().hex[:8], N)
        self.coords = [self._store(f"c{i}") for i in range(COORDS)]
        self.allowed: dict[str, set[bytes | None]] = {k: {None} for k in KEYS}
        self.damaged: dict[str, set[int]] = {k: set() for k in KEYS}
        self.fresh = itertools.count()

    def _store(self, label: str) -> ReplicatedStore:
        nodes = [FaultyNode(self.kind.node(i), self.faults[i]) for i in range(N)]
        return ReplicatedStore(
            nodes, coding={"": (K, M)}, state_dir=f"{self.dirs.name}/{label}", router=self.router
        )

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for f in self.faults:
            f.__init__()
        for c in self.coords:
            self.run(c.flush())
        pending = asyncio.all_tasks(self.loop)  # lost hedges of replaced coordinators
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending))
        self.loop.close()
        self.dirs.cleanup()
        self.config.__exit__(None, None, None)

    # --- what is bad right now ---------------------------------------------------------------
    def bad(self, key: str) -> set[int]:
        """Nodes down, damaged at rest, or not holding the newest version any node holds."""
        states = [self.kind.state(i, key, self.run) for i in range(N)]
        seen = [s.version for s in states if s.corrupt is None and s.version is not None]
        best = max(seen, default=None)
        out = set(self.damaged[key])
        for i, s in enumerate(states):
            if self.faults[i].down or s.corrupt is not None or s.version != best:
                out.add(i)
        return out

    def tolerates(self, key: str, node: int) -> bool:
        return len(self.bad(key) | {node}) <= M

    # --- writes and deletes ------------------------------------------------------------------
    @rule(c=COORD, key=KEY, value=VALUE)
    def write(self, c: int, key: str, value: bytes) -> None:
        try:
            self.run(self.coords[c].set(key, PROTO.buffer.from_bytes(value)))
            self.allowed[key] = {value}
        except QuorumError:
            self.allowed[key].add(value)

    @rule(c=COORD, key=KEY)
    def delete(self, c: int, key: str) -> None:
        try:
            self.run(self.coords[c].delete(key))
            self.allowed[key] = {None}
        except QuorumError:
            self.allowed[key].add(None)

    @rule(c=COORD, key=KEY, value=VALUE, lost=SUBSET, failed=SUBSET)
    def write_with_lost_replies(self, c: int, key: str, value: bytes, lost, failed) -> None:
        """A crash between two steps: some commits land with their replies lost, some
        never land; the coordinator is replaced by a fresh one (its hints gone)."""
        for j in lost:
            self.faults[j].crash_after.add("commit")
        for j in failed - lost:
            self.faults[j].fail_commits = True
        self.write(c, key, value)
        for f in self.faults:
            f.crash_after.clear()
            f.fail_commits = False
        self.coords[c] = self._store(f"c{c}-{next(self.fresh)}")

    # --- reads -------------------------------------------------------------------------------
    def read_value(self, key: str, *, foreign: bool, c: int = 0) -> bytes | None:
        store = self._store(f"f{next(self.fresh)}") if foreign else self.coords[c]
        got = self.run(store.get(key, PROTO))
        self.run(store.flush())
        return got.to_bytes() if got is not None else None

    @rule(c=COORD, key=KEY, foreign=st.booleans(), first=NODE)
    def read(self, c: int, key: str, foreign: bool, first: int) -> None:
        self.router.first = f"n{first}"
        tolerable = len(self.bad(key)) <= M
        try:
            got = self.read_value(key, foreign=foreign, c=c)
        except FragmentsUnavailable:
            assert not tolerable, f"{key}: unavailable with {self.bad(key)} bad fragments"
            return
        assert got in self.allowed[key], f"{key}: read {got!r}, allowed {self.allowed[key]}"

    @rule(c=COORD, key=KEY, foreign=st.booleans(), first=NODE)
    def exists(self, c: int, key: str, foreign: bool, first: int) -> None:
        """``exists`` and a listing agree with the model, whichever node answers first: a
        wiped fragment is damage, not absence (with ``w = k + m`` the first answer decided)."""
        self.router.first = f"n{first}"
        store = self._store(f"f{next(self.fresh)}") if foreign else self.coords[c]
        tolerable = len(self.bad(key)) <= M

        async def look() -> tuple[bool, bool]:
            return await store.exists(key), key in [k async for k in store.list_prefix("")]

        try:
            there, listed = self.run(look())
        except FragmentsUnavailable:
            assert not tolerable, f"{key}: unavailable with {self.bad(key)} bad fragments"
            return
        finally:
            self.run(store.flush())
        possible = {v is not None for v in self.allowed[key]}
        assert there in possible, f"{key}: exists {there}, allowed {self.allowed[key]}"
        assert listed in possible, f"{key}: listed {listed}, allowed {self.allowed[key]}"

    # --- faults ------------------------------------------------------------------------------
    @rule(node=NODE)
    def take_down(self, node: int) -> None:
        if all(self.tolerates(k, node) for k in KEYS):
            self.faults[node].down = True

    @rule()
    def heal(self) -> None:
        for f in self.faults:
            f.down = f.full_disk = False

    @rule(key=KEY, node=NODE)
    def rot(self, key: str, node: int) -> None:
        got = self.kind.at_rest(node, key)
        if got is None or not got[0] or self.faults[node].down or not self.tolerates(key, node):
            return
        self.kind.put(node, key, flip_byte(got[0]), got[1])
        self.damaged[key].add(node)
        self.read(0, key, True, node)

    @rule(key=KEY, node=NODE, look=st.booleans())
    def wipe(self, key: str, node: int, look: bool = True) -> None:
        """A lost fragment (a replaced disk): the object and its record are gone; ``look``:
        read it at once, from the wiped node first (a read repairs it in the background)."""
        raw = self.kind.raw[node]
        if key not in raw._data or self.faults[node].down or not self.tolerates(key, node):
            return
        raw._data.pop(key)
        raw.side.records.pop(key, None)
        self.damaged[key].add(node)
        if look:
            self.read(1, key, True, node)

    # --- maintenance -------------------------------------------------------------------------
    @precondition(lambda self: not any(f.down for f in self.faults))
    @rule(c=COORD)
    def repair(self, c: int) -> None:
        report = self.run(self.coords[c].repair())
        assert not report.unrecoverable and not report.failed, report
        for key in KEYS:
            self.damaged[key].clear()
            got = self.read_value(key, foreign=True)
            assert got in self.allowed[key], f"{key}: repaired to {got!r}, not allowed"
            self.allowed[key] = {got}
        scrub = self.run(self.coords[c].scrub())
        assert scrub.ok, scrub


CodedMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,  # up to 1,600 steps per run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCodedMachine = CodedMachine.TestCase


def test_an_empty_value_with_one_rotten_fragment_reads_back():
    """A sequence the machine's mutation check found (a read that decided before its
    fragments answered): the empty value, one fragment rotten, read from a fresh store."""
    m = CodedMachine()
    try:
        m.write(c=0, key="k0", value=b"")
        m.rot(key="k0", node=0)
        m.read(c=1, key="k0", foreign=True, first=0)
    finally:
        m.teardown()


def test_a_delete_that_missed_a_down_node_is_not_an_undecodable_fragment():
    """Found by this machine: a delete reached four of five nodes (one down); the one
    fragment left, alone, must be read as outranked by the tombstones, not as a value
    with more than m fragments lost."""
    m = CodedMachine()
    try:
        m.write(c=0, key="a/c/0", value=b"")
        m.take_down(node=0)
        m.delete(c=1, key="a/c/0")
        m.heal()
        m.read(c=0, first=0, foreign=False, key="a/c/0")
        m.repair(c=2)
    finally:
        m.teardown()


def test_a_wiped_fragment_answering_first_is_damage_not_absence():
    """Found by the exists rule: with ``w = k + m`` the read quorum is 1, and a node that
    lost its fragment, answering first, made ``exists`` False and the listing drop the key."""
    m = CodedMachine()
    m.router.lag = 0.002
    try:
        m.write(0, "k0", b"abc")
        m.wipe("k0", 0, look=False)
        m.exists(0, "k0", foreign=True, first=0)
        m.read(0, "k0", foreign=True, first=0)
    finally:
        m.teardown()


def test_a_failed_write_never_replaces_the_shadows_an_unfinished_one_needs():
    """Found by this machine: a write committed 2 of 5 fragments (k = 3) and failed, its
    shadows on every node; a second write failed on every node. The second write's
    shadows replaced the first's (one shadow per key per node), so neither version
    decoded and repair found the key unrecoverable. A writer now finishes an unfinished
    write before it stages its own (or fails, leaving those shadows in place)."""
    m = CodedMachine()
    try:
        m.write_with_lost_replies(c=0, failed={0, 1, 2}, key="k0", lost=set(), value=b"")
        m.write_with_lost_replies(c=0, failed={0, 1, 2, 3, 4}, key="k0", lost=set(), value=b"")
        m.repair(c=0)
        m.read(c=1, key="k0", foreign=True, first=0)
    finally:
        m.teardown()
