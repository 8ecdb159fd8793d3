"""The storage state machine (``machine_model.py``) over every node kind and quorum profile, and
each of its findings as a plain regression test (each fails on the code before its fix)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from machine_model import COORDS, R, ReplicatedMachine
from machine_nodes import GenericNodes, LocalNodes, ObstoreNodes, ObstoreS3Nodes, S3Nodes

ReplicatedMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,  # up to 40 x 40 = 1,600 steps per run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReplicatedMachine = ReplicatedMachine.TestCase


class WriteAllMachine(ReplicatedMachine):
    """The write-all profile (W = R, so Rq = 1: a read asks one replica): a write needs
    every target, so no fault that leaves a key with a bad replica is injected, but
    failed and crashed writes, creates and deletes are, and every read asks one node."""

    write_quorum = R


WriteAllMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestWriteAllMachine = WriteAllMachine.TestCase


class LocalNodesMachine(ReplicatedMachine):
    """The same machine over local directories (records in xattrs, flock'd swaps)."""

    nodes_cls = LocalNodes


LocalNodesMachine.TestCase.settings = settings(
    max_examples=10, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestLocalNodesMachine = LocalNodesMachine.TestCase


class GenericNodesMachine(ReplicatedMachine):
    """The same machine over generic nodes (any zarr store: records in sidecars)."""

    nodes_cls = GenericNodes


GenericNodesMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestGenericNodesMachine = GenericNodesMachine.TestCase


class ObstoreNodesMachine(ReplicatedMachine):
    """The same rules over obstore nodes (the record in each object's attributes)."""

    nodes_cls = ObstoreNodes


ObstoreNodesMachine.TestCase.settings = settings(
    max_examples=8, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestObstoreNodesMachine = ObstoreNodesMachine.TestCase


class ObstoreS3NodesMachine(ReplicatedMachine):
    """The same rules over obstore nodes on S3 (moto): the server's conditional puts."""

    nodes_cls = ObstoreS3Nodes


@pytest.fixture
def s3_nodes_place(s3_endpoint, storage_bucket):
    ObstoreS3Nodes.place = (s3_endpoint, storage_bucket)
    yield
    ObstoreS3Nodes.place = None


ObstoreS3NodesMachine.TestCase.settings = settings(
    max_examples=2, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestObstoreS3NodesMachine = pytest.mark.usefixtures("s3_nodes_place")(
    ObstoreS3NodesMachine.TestCase
)


class S3NodesMachine(ReplicatedMachine):
    """The same rules over s3fs S3 nodes (moto): conditional puts and deletes."""

    nodes_cls = S3Nodes


S3NodesMachine.TestCase.settings = ObstoreS3NodesMachine.TestCase.settings
TestS3NodesMachine = pytest.mark.usefixtures("s3_nodes_place")(S3NodesMachine.TestCase)

# Found by these machines on 2026-12-03 and not fixed yet ("a late commit regressed n0").
# The likely cause, not yet proven by a plain test: S3's ETag is the MD5 of the bytes
# alone, so a node's compare-and-swap (If-Match on the ETag phase 1 saw) cannot tell the
# same bytes rewritten at a newer version from the old object: a held commit of an older
# write (late_commit with v2 equal to an earlier value) then replaces the newer version on
# that replica (the others keep it; reads and repair still see it, but the replica
# regressed). Not strict: hypothesis finds it only on some runs.
_ETAG_ABA = pytest.mark.xfail(
    strict=False,
    reason="issue 16: a late commit can regress one S3 replica (likely: ETag compare-and-swap "
    "cannot see same-bytes rewrites, ABA; found by this machine, open)",
)
TestS3NodesMachine.pytestmark = [*getattr(TestS3NodesMachine, "pytestmark", []), _ETAG_ABA]
TestObstoreS3NodesMachine.pytestmark = [
    *getattr(TestObstoreS3NodesMachine, "pytestmark", []),
    _ETAG_ABA,
]


def test_a_delete_crashed_on_every_newest_replica_never_resurrects_an_older_value():
    """Found by this machine on a saturated machine: a write missed a full node, then a
    delete crashed on every target between its two steps. With the data removed first the
    newest replicas held nothing and the full node's older value was served as the newest;
    with the tombstone first they hold data the tombstone outranks."""
    m = ReplicatedMachine()
    try:
        m.write_with_lost_replies(c=0, failed=set(), key="k0", lost=set(), value=b"")
        full = m.targets("k0")[0]
        m.fill_disk(node=full)
        assert m.faults[full].full_disk
        m.write_with_lost_replies(c=0, failed=set(), key="k0", lost=set(), value=b"new")
        m.delete_halfway(c=0, half={0, 1, 2}, key="k0")
        m.create(c=0, key="k0", value=b"gC")  # reads back what holds the key: never b""
        for c in range(COORDS):
            m.read(c=c, key="k0", foreign=True, first=full)
        m.heal()
        m.repair(c=1)
    finally:
        m.teardown()


def test_a_second_delete_after_one_left_halfway_everywhere_stays_deleted():
    """Found by the machine: a delete crashed between tombstone and data on every replica;
    a second delete took its version without the tombstones, so its own could rank below
    the first (by writer id: about one run in two), was superseded, and the deleted value
    read back after the delete was acknowledged. Eight fresh machines (fresh writer ids)."""
    for _ in range(8):
        m = ReplicatedMachine()
        try:
            m.create(c=0, key="k0", value=b"")
            m.delete_halfway(c=0, half={0, 1, 2}, key="k0")
            m.delete(c=1, key="k0")
            m.read(c=0, first=0, foreign=False, key="k0")
            m.read(c=1, first=1, foreign=True, key="k0")
        finally:
            m.teardown()


@pytest.mark.parametrize(
    "machine", [ReplicatedMachine, LocalNodesMachine, GenericNodesMachine, ObstoreNodesMachine]
)
def test_a_create_after_a_failed_write_fixes_the_value_later_reads_return(machine):
    """Found by the obstore-node machine (a defect of every node kind: the same steps fail
    over memory and generic nodes): a write failed below its quorum, its one copy on the
    key's last target, where a read does not look; a create then answered "exists" because
    the older value held a write quorum, and reads returned the older value, until repair
    surfaced the failed write's newer one. A create now converges the key first, so what
    reads return after it is what every later read returns."""
    m = machine()
    try:
        m.create(c=0, key="k1", value=b"E")
        m.write_with_lost_replies(c=0, key="k1", value=b"Z", lost=set(), failed={0, 1})
        assert m.allowed["k1"] == {b"E", b"Z"}  # the write failed: either may be read
        m.create(c=2, key="k1", value=b"C")  # "exists"; pins what later reads return
        m.take_down(node=3)
        m.read(c=1, key="k1", foreign=True, first=2)
        m.heal()
        m.repair(c=1)  # asserts the repaired value is the one the create read back
    finally:
        m.teardown()


@pytest.mark.parametrize("machine", [ReplicatedMachine, LocalNodesMachine, GenericNodesMachine])
def test_a_write_that_failed_on_one_replica_never_outranks_a_later_acknowledged_one(machine):
    """Found by this machine on a saturated machine: a write that only one replica
    committed failed; a second write, whose phase 1 did not hear from that replica, was
    acknowledged by the other two at a version that ties the failed one's counter and lost
    the tie on writer ids in about half the runs; reads that met that replica returned the
    failed value, and repair copied it everywhere. The newest version is now passed over
    when ``R - W + 1`` targets hold an older one (it never reached ``W``), and repair
    rewrites the winner above it. Eight fresh machines (fresh writer ids)."""
    for _ in range(8):
        m = machine()
        try:
            m.write_with_lost_replies(c=0, failed={0, 1}, key="k1", lost=set(), value=b"")
            m.write_with_lost_prepares(c=0, key="k1", lost={2}, value=b"\x03")
            assert m.allowed["k1"] == {b"\x03"}  # acknowledged
            for c in range(COORDS):
                m.read(c=c, key="k1", foreign=True, first=m.targets("k1")[2])
            m.heal()
            m.repair(c=1)  # asserts every key repairs to an allowed value
            m.read(c=0, key="k1", foreign=True, first=0)
        finally:
            m.teardown()


def test_a_tombstone_over_older_data_counts_as_what_that_replica_holds():
    """Found by the generic-node machine right after the rule above: deletes that crashed
    between tombstone and data removal left tombstones over older data; the rule read those
    replicas by their data's version, took another replica's older tombstone for a version
    that never completed, and repair left that replica with its stale tombstone."""
    for _ in range(4):
        m = GenericNodesMachine()
        try:
            m.write(c=0, key="k1", value=b"")
            m.delete_halfway(c=0, half={0, 1}, key="k1")
            m.write_with_lost_replies(c=0, failed=set(), key="k0", lost=set(), value=b"")
            m.delete_halfway(c=0, half={0, 1, 2}, key="k0")
            m.repair(c=0)  # asserts every replica agrees afterwards
        finally:
            m.teardown()


def test_a_collection_after_a_passed_over_create_drops_every_older_tombstone():
    """Found by the generic-node machine (500 examples): a delete's tombstones on two
    targets, then a create whose reply was lost on the third (its value landed there, at
    a newer version that never completed). Repair passed it over, re-stamped the delete
    above it and laid that tombstone on the third; the collection then dropped only the
    re-stamped version, so the two older tombstones stayed and the replicas disagreed."""
    for cls in (GenericNodesMachine, ReplicatedMachine):
        m = cls()
        try:
            m.fill_disk(node=0)
            m.delete_with_lost_replies(c=0, key="k0", lost=set(), step="bury")
            m.heal()
            m.create_with_lost_replies(c=0, failed={0, 1, 2}, key="k0", lost={0}, value=b"")
            m.repair(c=0)  # asserts every replica agrees afterwards
        finally:
            m.teardown()
