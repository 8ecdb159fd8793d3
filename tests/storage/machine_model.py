"""The storage state machine: ReplicatedStore against a model of acknowledged values, under
the widened fault model (run over each node kind by ``test_state_machine.py``).

Several coordinators (separate stores with their own state dirs and writer ids) share four
nodes (memory, local directories, generic stores, obstore or s3fs); reads come from them and from
foreign readers (a fresh store per read). Faults: outages, commit failures on every replica,
replies lost after the work was done (a crash between two steps of a write, create or delete:
after phase 1, a commit, a tombstone or a removal), half-done deletes, full disks, bit rot,
swapped files, stripped records (with rotten bytes, or the bytes intact), flipped version
fields, and clock skew.

Model: ``allowed[key]`` is the set of values a read may return (None: absent). An
acknowledged write or delete makes it one value; a failed one adds its value. A read
returns an allowed value, or raises ReplicaUnavailable only when more replicas are bad
than a read quorum tolerates; after a repair (from any coordinator) every replica agrees.
Faults are injected only while every key keeps at most R - W bad replicas (the guarantees
hold within what the write quorum tolerates).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import tempfile
import uuid

import dask.config
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from machine_nodes import MemoryNodes
from zarr.core.buffer import default_buffer_prototype

from swarmstore import _clock
from swarmstore.errors import QuorumError, ReplicaUnavailable
from swarmstore.storage import ReplicatedStore
from swarmstore.testing import Faults, flip_byte
from swarmstore.testing._faulty_node import FaultyNode

PROTO = default_buffer_prototype()
N, R, W = 4, 3, 2
COORDS = 3
KEYS = ["k0", "k1", "a/c/0", "a/c/1"]
KEY = st.sampled_from(KEYS)
VALUE = st.binary(min_size=0, max_size=48)
NODE = st.integers(0, N - 1)
COORD = st.integers(0, COORDS - 1)
SUBSET = st.sets(st.integers(0, R - 1), max_size=R)
STEP_LIMIT = 120.0


class PinnedRouter:
    """Tries one chosen node first, then the store's order: the machine's reads hit the
    replica a rule just damaged, whatever a real router would measure."""

    def __init__(self) -> None:
        self.first: str | None = None

    async def fetch(self, sources, attempt, *, name, nbytes=None, size=None):
        failures = {}
        for src in sorted(sources, key=lambda s: name(s) != self.first):
            try:
                return src, await attempt(src), failures
            except (OSError, KeyError) as e:
                failures[src] = e
        return None, None, failures

    async def send(self, source, attempt, *, name, nbytes=0):
        return await attempt(source)


class ReplicatedMachine(RuleBasedStateMachine):
    nodes_cls: type = MemoryNodes
    #: W (the read quorum is R - W + 1: every read quorum meets every write quorum)
    write_quorum: int = W

    def __init__(self) -> None:
        super().__init__()
        # a write whose quorum waits on a held commit gives up after 30 s (not 60): a
        # saturated machine takes seconds a step, which must not read as a frozen node
        self.config = dask.config.set(
            {"swarmstore.storage.write-grace": 0.01, "swarmstore.storage.node-timeout": 30}
        )
        self.config.__enter__()
        self.loop = asyncio.new_event_loop()
        self.tag = uuid.uuid4().hex[:8]
        self.faults = [Faults() for _ in range(N)]
        self.dirs = tempfile.TemporaryDirectory()
        self.router = PinnedRouter()
        self.kind = self.nodes_cls(self.tag, N)
        self.coords = [self._store(f"c{i}") for i in range(COORDS)]
        self.allowed: dict[str, set[bytes | None]] = {k: {None} for k in KEYS}
        self.damaged: dict[str, set[int]] = {k: set() for k in KEYS}
        self.fresh = itertools.count()
        self.retired: list[ReplicatedStore] = []  # coordinators replaced after a crash

    def _store(self, label: str) -> ReplicatedStore:
        nodes = [FaultyNode(self.kind.node(i), self.faults[i]) for i in range(N)]
        return ReplicatedStore(
            nodes,
            replicas=R,
            write_quorum=self.write_quorum,
            state_dir=f"{self.dirs.name}/{label}",
            router=self.router,
        )

    def run(self, coro):
        return self.loop.run_until_complete(self._bounded(coro))

    async def _bounded(self, coro):
        """``coro``, failing the step when it hangs (``STEP_LIMIT``: a saturated machine
        takes seconds, a hang forever), with every task's stack to say where."""
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=STEP_LIMIT)
        if task in done:
            return task.result()
        stacks = io.StringIO()
        for t in asyncio.all_tasks():
            t.print_stack(file=stacks)
        for f in self.faults:  # let held requests go, so the teardown can finish
            f.gate = False
        raise AssertionError(f"a step hung for {STEP_LIMIT} s; tasks:\n{stacks.getvalue()}")

    def teardown(self) -> None:
        _clock._OFFSET_NS = 0
        for f in self.faults:
            f.__init__()
        for c in [*self.coords, *self.retired]:  # their background work ends with the test
            self.run(c.flush())
        if hasattr(self.kind, "aclose"):
            self.run(self.kind.aclose())
        self.loop.close()
        self.dirs.cleanup()
        if hasattr(self.kind, "close"):
            self.kind.close()
        self.config.__exit__(None, None, None)

    # --- what is bad right now -------------------------------------------------------------
    def targets(self, key: str) -> list[int]:
        return [int(n.name[1:]) for n in self.coords[0].targets(key)]

    def newest(self, key: str) -> tuple[object, int]:
        """The newest trustworthy version over the key's targets, and how many hold it."""
        seen = []
        for i in self.targets(key):
            st_ = self.kind.state(i, key, self.run)
            if st_.corrupt is None and st_.version is not None:
                seen.append(st_.version)
        best = max(seen, default=None)
        return best, sum(v == best for v in seen)

    def bad(self, key: str) -> set[int]:
        """Targets that are down, damaged at rest, or not at the key's newest version."""
        best, _ = self.newest(key)
        out = set(self.damaged[key])
        for i in self.targets(key):
            st_ = self.kind.state(i, key, self.run)
            if self.faults[i].down or st_.corrupt is not None or st_.version != best:
                out.add(i)
        return out

    def tolerates(self, extra: dict[str, set[int]]) -> bool:
        return all(len(self.bad(k) | extra.get(k, set())) <= R - self.write_quorum for k in KEYS)

    def faulty(self) -> bool:
        return any(f.down or f.full_disk for f in self.faults)

    # --- writes and deletes ----------------------------------------------------------------
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

    @rule(c=COORD, key=KEY, value=VALUE)
    def create(self, c: int, key: str, value: bytes) -> None:
        before = set(self.allowed[key])
        try:
            self.run(self.coords[c].set_if_not_exists(key, PROTO.buffer.from_bytes(value)))
        except QuorumError:
            self.allowed[key].add(value)
            return
        got = self.read_value(key, foreign=True)
        assert got is not None, f"{key}: absent after set_if_not_exists returned"
        assert got in before | {value}, key
        if None not in before:
            assert got in before, f"{key}: set_if_not_exists replaced an existing value"
        self.allowed[key] = {got}

    @rule(c=COORD, key=KEY, value=VALUE)
    def write_with_every_commit_failing(self, c: int, key: str, value: bytes) -> None:
        """Issue 11 item 1: prepare works, every commit fails; nothing may change."""
        for f in self.faults:
            f.fail_commits = True
        try:
            self.run(self.coords[c].set(key, PROTO.buffer.from_bytes(value)))
            raise AssertionError("a write whose every commit failed succeeded")
        except QuorumError:
            pass
        finally:
            for f in self.faults:
                f.fail_commits = False

    def _crashing(self, c: int, key: str, lost, failed, step: str, action) -> None:
        """Run ``action`` while some of ``key``'s targets do ``step`` and lose the reply
        (``lost``) and others fail it (``failed``); the coordinator is then replaced by a
        fresh one (its hints and counters gone), as after a crash of its process."""
        nodes = self.targets(key)
        for j in lost:
            self.faults[nodes[j]].crash_after.add(step)
        for j in failed - lost:
            self.faults[nodes[j]].fail_commits = True
        try:
            action()
        finally:
            for f in self.faults:
                f.crash_after.clear()
                f.fail_commits = False
        self.retired.append(self.coords[c])
        self.coords[c] = self._store(f"c{c}-{next(self.fresh)}")

    @rule(c=COORD, key=KEY, value=VALUE, lost=SUBSET, failed=SUBSET)
    def write_with_lost_replies(self, c: int, key: str, value: bytes, lost, failed) -> None:
        """A crash between two steps: some commits land but their replies are lost, some
        never land."""
        self._crashing(c, key, lost, failed, "commit", lambda: self.write(c, key, value))

    @rule(c=COORD, key=KEY, value=VALUE, lost=SUBSET, failed=SUBSET)
    def create_with_lost_replies(self, c: int, key: str, value: bytes, lost, failed) -> None:
        """The same crashes under a conditional create (creations left behind)."""
        self._crashing(c, key, lost, failed, "commit", lambda: self.create(c, key, value))

    @rule(c=COORD, key=KEY, value=VALUE, lost=SUBSET)
    def write_with_lost_prepares(self, c: int, key: str, value: bytes, lost) -> None:
        """Phase 1 and staging done on some targets, the answers lost."""
        self._crashing(c, key, lost, set(), "prepare", lambda: self.write(c, key, value))

    @rule(c=COORD, key=KEY, lost=SUBSET, step=st.sampled_from(["bury", "remove"]))
    def delete_with_lost_replies(self, c: int, key: str, lost, step: str) -> None:
        """A delete whose tombstones (bury) or removals land with their replies lost."""
        self._crashing(c, key, lost, set(), step, lambda: self.delete(c, key))

    @rule(c=COORD, key=KEY, v1=VALUE, v2=VALUE, j=st.integers(0, R - 1))
    def late_commit(self, c: int, key: str, v1: bytes, v2: bytes, j: int) -> None:
        """A commit of v1 lands on one replica after v2 was acknowledged there: the
        replica's compare-and-swap must refuse it (no regression). Not in the write-all
        profile: there a held commit holds the write itself (until its request would time
        out), and v2 would never start. Where another replica refuses v1's commit, v1's
        quorum waits on the held one: the write fails at ``storage.node-timeout``."""
        if self.faulty() or self.write_quorum == R:
            return
        node, store = self.targets(key)[j], self.coords[c]
        self.faults[node].hold_next["commit"], self.faults[node].gate = 1, True
        try:
            self.write(c, key, v1)  # returns after W acks and the grace; one commit held
            self.write(c, key, v2)
        finally:
            self.faults[node].gate = False
            self.faults[node].hold_next.clear()
        while store._laggards:
            self.run(asyncio.wait(set(store._laggards)))
        self.run(store.flush())
        if self.allowed[key] == {v2}:
            best, _ = self.newest(key)
            got = self.kind.state(node, key, self.run)
            assert got.version == best, f"{key}: a late commit regressed n{node}"

    @rule(c=COORD, key=KEY, half=SUBSET)
    def delete_halfway(self, c: int, key: str, half) -> None:
        """Deletes that remove the data but lose the tombstone on some replicas."""
        nodes = self.targets(key)
        for j in half:
            self.faults[nodes[j]].half.add("bury")
        self.delete(c, key)
        for f in self.faults:
            f.half.clear()

    # --- reads -------------------------------------------------------------------------------
    def read_value(self, key: str, *, foreign: bool, c: int = 0) -> bytes | None:
        store = self._store(f"f{next(self.fresh)}") if foreign else self.coords[c]
        got = self.run(store.get(key, PROTO))
        self.run(store.flush())
        return got.to_bytes() if got is not None else None

    @rule(c=COORD, key=KEY, foreign=st.booleans(), first=NODE)
    def read(self, c: int, key: str, foreign: bool, first: int) -> None:
        self.router.first = f"n{first}"
        tolerable = len(self.bad(key)) <= self.write_quorum - 1  # R - Rq
        try:
            got = self.read_value(key, foreign=foreign, c=c)
        except ReplicaUnavailable:
            assert not tolerable, f"{key}: unavailable with {self.bad(key)} bad replicas"
            return
        assert got in self.allowed[key], f"{key}: read {got!r}, allowed {self.allowed[key]}"

    # --- faults ------------------------------------------------------------------------------
    @rule(node=NODE)
    def take_down(self, node: int) -> None:
        extra = {k: {node} for k in KEYS if node in self.targets(k)}
        if not self.faulty() and self.tolerates(extra):
            self.faults[node].down = True

    @rule(node=NODE)
    def fill_disk(self, node: int) -> None:
        extra = {k: {node} for k in KEYS if node in self.targets(k)}
        if not self.faulty() and self.tolerates(extra):
            self.faults[node].full_disk = True

    @rule()
    def heal(self) -> None:
        for i, f in enumerate(self.faults):
            if f.down or f.full_disk:
                f.down = f.full_disk = False
                self.router.first = f"n{i}"

    def _at_rest(self, key: str, node: int) -> tuple[bytes, str] | None:
        if self.faults[node].down or node not in self.targets(key):
            return None
        if not self.tolerates({key: {node}}):
            return None
        return self.kind.at_rest(node, key)

    @rule(key=KEY, node=NODE)
    def rot(self, key: str, node: int) -> None:
        """Flip a stored byte (bit rot: the record stays)."""
        got = self._at_rest(key, node)
        if got is None or len(got[0]) == 0:
            return
        self.kind.put(node, key, flip_byte(got[0]), got[1])
        self.damaged[key].add(node)
        self.read(0, key, True, node)

    @rule(key=KEY, node=NODE)
    def strip_record(self, key: str, node: int) -> None:
        """The record is lost (a copy tool); the bytes are rotten too (issue 11 item 8)."""
        got = self._at_rest(key, node)
        if got is None:
            return
        self.kind.put(node, key, flip_byte(got[0] or b"\0"), None)
        self.damaged[key].add(node)
        self.read(0, key, True, node)

    @rule(key=KEY, node=NODE)
    def strip_record_only(self, key: str, node: int) -> None:
        """The record is lost and the bytes kept (a copy tool that drops metadata)."""
        got = self._at_rest(key, node)
        if got is None:
            return
        self.kind.put(node, key, got[0], None)
        self.damaged[key].add(node)
        self.read(0, key, True, node)

    @rule(key=KEY, node=NODE, bit=st.integers(0, 62))
    def flip_version(self, key: str, node: int, bit: int) -> None:
        """A bit of the record's version counter flips (issue 11 item 5)."""
        got = self._at_rest(key, node)
        if got is None:
            return
        parts = got[1].split(":")
        parts[2] = str(int(parts[2]) ^ (1 << bit))
        self.kind.put(node, key, got[0], ":".join(parts))
        self.damaged[key].add(node)
        self.read(0, key, True, node)

    @rule(pair=st.sampled_from([("k0", "k1"), ("a/c/0", "a/c/1")]), node=NODE)
    def swap(self, pair: tuple[str, str], node: int) -> None:
        """Two files trade places on one node, records and all (issue 11 item 3)."""
        a, b = pair
        got_a, got_b = self._at_rest(a, node), self._at_rest(b, node)
        if got_a is None or got_b is None or not self.tolerates({a: {node}, b: {node}}):
            return
        self.kind.put(node, a, *got_b)
        self.kind.put(node, b, *got_a)
        self.damaged[a].add(node)
        self.damaged[b].add(node)
        self.read(1, a, True, node)

    @rule(seconds=st.floats(-600, 600))
    def skew_clock(self, seconds: float) -> None:
        """Nothing may order by the wall clock: skew it by up to ten minutes."""
        _clock._OFFSET_NS = int(seconds * 1e9)

    # --- maintenance -------------------------------------------------------------------------
    @precondition(lambda self: not self.faulty())
    @rule(c=COORD)
    def repair(self, c: int) -> None:
        """A repair from any coordinator (another process) leaves every replica agreeing."""
        report = self.run(self.coords[c].repair())
        assert not report.unrecoverable and not report.failed, report
        for key in KEYS:
            self.damaged[key].clear()
            best, holders = self.newest(key)
            assert holders == R or (best is None and holders == 0), (key, best, holders)
            got = self.read_value(key, foreign=True)
            assert got in self.allowed[key], f"{key}: repaired to {got!r}, not allowed"
            self.allowed[key] = {got}
        assert (self.run(self.coords[c].scrub())).ok
