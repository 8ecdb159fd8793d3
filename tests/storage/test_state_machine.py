"""ReplicatedStore against a dict model under random outages and corruption.

Invariant: while at most R-1 replicas of a key are bad (down, corrupt, stale or
missing), a read returns exactly the model's value; a read never returns bytes that
differ from it. Failed quorum writes change nothing.
"""

from __future__ import annotations

import asyncio
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from swarmstore.errors import QuorumError, ReplicaUnavailable
from swarmstore.storage import ReplicatedStore
from swarmstore.testing import Faults, FaultyStore, flip_byte

PROTO = default_buffer_prototype()
N, R, W = 4, 3, 2
KEYS = st.sampled_from(["k0", "k1", "a/c/0", "a/c/1"])
VALUES = st.binary(min_size=0, max_size=64)
NODE = st.integers(0, N - 1)


class PinnedRouter:
    """Tries one chosen node first, then the store's order: makes the machine's reads hit
    the replica a rule just damaged, whatever a real router would measure."""

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
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.faults = [Faults() for _ in range(N)]
        self.mem = [MemoryStore() for _ in range(N)]
        nodes = [FaultyStore(self.mem[i], self.faults[i], name=f"n{i}") for i in range(N)]
        self.state_dir = tempfile.TemporaryDirectory()
        self.router = PinnedRouter()
        self.store = ReplicatedStore(
            nodes, replicas=R, write_quorum=W, state_dir=self.state_dir.name, router=self.router
        )
        self.model: dict[str, bytes] = {}

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.flush())
        self.loop.close()
        self.state_dir.cleanup()

    # --- what is bad right now -------------------------------------------------------------
    def good_replicas(self, key: str) -> int:
        """Target replicas that are up, verified and hold the model's value."""
        want = self.model.get(key)
        good = 0
        for node in self.store.targets(key):
            i = int(node.name[1:])
            if self.faults[i].down:
                continue
            got = self.run(node.inner.read(key))
            if want is None:
                good += got is None
                continue
            if got is None or got[1] is None:
                continue
            data, record, _ = got
            try:
                record.verify(data)
            except OSError:
                continue
            good += data == want
        return good

    def safe_after(self, extra_bad_key: str | None = None, down: int | None = None) -> bool:
        """Would every key keep at least one good replica after the change?"""
        for key in set(self.model) | ({extra_bad_key} if extra_bad_key else set()):
            good = self.good_replicas(key)
            if key == extra_bad_key:
                good -= 1
            if down is not None and any(n.name == f"n{down}" for n in self.store.targets(key)):
                good -= 1
            if good < 1:
                return False
        return True

    # --- rules --------------------------------------------------------------------------------
    @rule(key=KEYS, value=VALUES)
    def write(self, key: str, value: bytes) -> None:
        self.run(self.store.set(key, PROTO.buffer.from_bytes(value)))
        self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.run(self.store.delete(key))
        self.model.pop(key, None)

    @rule(node=NODE)
    def prefer(self, node: int) -> None:
        self.router.first = f"n{node}"

    @rule(key=KEYS)
    def read(self, key: str) -> None:
        want = self.model.get(key)
        try:
            got = self.run(self.store.get(key, PROTO))
        except ReplicaUnavailable:
            # allowed only when fewer than a read quorum of replicas can answer truthfully
            assert self.good_replicas(key) < R - W + 1, key
            return
        assert (got.to_bytes() if got is not None else None) == want, key

    @rule(node=NODE)
    def take_down(self, node: int) -> None:
        if sum(f.down for f in self.faults) >= 1 or not self.safe_after(down=node):
            return
        self.faults[node].down = True

    @rule()
    def bring_back(self) -> None:
        """End the outage, then read every key from the returning node first."""
        for i, f in enumerate(self.faults):
            if f.down:
                f.down = False
                self.router.first = f"n{i}"
                for key in list(self.model):
                    self.read(key)

    @rule(key=KEYS, node=NODE)
    def rot(self, key: str, node: int) -> None:
        """Flip a stored byte in place (bit rot: the checksum record stays)."""
        stored = self.mem[node]._store_dict.get(key)
        if stored is None or len(stored) == 0 or self.faults[node].down:
            return
        if not self.safe_after(extra_bad_key=key):
            return
        inner = self.store.nodes[node].inner
        entry = inner.records.get(key)
        if entry is None or entry[0] is not stored:
            return
        rotten = PROTO.buffer.from_bytes(flip_byte(stored.to_bytes()))
        self.mem[node]._store_dict[key] = rotten
        inner.records[key] = (rotten, entry[1])  # same checksum record: bit rot
        self.router.first = f"n{node}"  # and read the rotten replica first
        self.read(key)

    @rule(key=KEYS, value=VALUES, pair=st.sampled_from([(0, 1), (1, 2), (2, 3), (0, 3)]))
    def write_without_quorum(self, key: str, value: bytes, pair: tuple[int, int]) -> None:
        targets = {int(n.name[1:]) for n in self.store.targets(key)}
        if len(targets - set(pair)) >= W or any(f.down for f in self.faults):
            return
        for i in pair:
            self.faults[i].down = True
        try:
            self.run(self.store.set(key, PROTO.buffer.from_bytes(value)))
            raise AssertionError("write without quorum succeeded")
        except QuorumError:
            pass
        finally:
            for i in pair:
                self.faults[i].down = False

    @precondition(lambda self: not any(f.down for f in self.faults))
    @rule()
    def maintain(self) -> None:
        self.run(self.store.replay_hints())
        self.run(self.store.repair())
        for key in self.model:
            assert self.good_replicas(key) == R, key

    @invariant()
    def background_work_settles(self) -> None:
        self.run(self.store.flush())


ReplicatedMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=50,  # up to 50 x 50 = 2,500 steps per run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReplicatedMachine = ReplicatedMachine.TestCase
