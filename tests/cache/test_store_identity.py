"""Caches key a ReplicatedStore by where its nodes keep data, never by their names.

Found while building peer reads: a ReplicatedStore's identity was its repr, which names
only the nodes, so two stores over different directories (or buckets) whose nodes had the
same names shared one worker cache, and one store's chunks were served for the other's.
"""

from __future__ import annotations

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype

from swarmstore.cache._identity import store_identity
from swarmstore.cache._plugin import CacheRegistry
from swarmstore.storage import NodeSpec, ReplicatedStore

PROTO = default_buffer_prototype()


def _store(root, names=("a", "b", "c")) -> ReplicatedStore:
    nodes = [NodeSpec(f"file://{root}/{n}", name=f"node-{i}") for i, n in enumerate(names)]
    return ReplicatedStore(nodes, replicas=2, state_dir=str(root / "state"), create=True)


def test_stores_with_alike_node_names_over_different_places_get_their_own_cache(tmp_path):
    one, two = _store(tmp_path / "one"), _store(tmp_path / "two")
    assert [n.name for n in one.nodes] == [n.name for n in two.nodes]
    assert store_identity(one) != store_identity(two)
    for store, value in ((one, 1.0), (two, 2.0)):
        arr = zarr.create_array(store, name="x", shape=(4,), chunks=(4,), dtype="f8")
        arr[:] = np.full(4, value)
    registry = CacheRegistry(memory_bytes=1 << 20)
    try:
        c1, c2 = registry.get(one), registry.get(two)
        assert c1 is not c2
        assert zarr.open_array(c1, path="x", mode="r")[0] == 1.0
        assert zarr.open_array(c2, path="x", mode="r")[0] == 2.0  # not one's cached chunk
    finally:
        registry.close()


def test_the_same_places_under_other_names_or_order_are_the_same_data(tmp_path):
    a = _store(tmp_path / "p")
    b = ReplicatedStore(
        [NodeSpec(f"file://{tmp_path}/p/{n}", name=f"other-{n}") for n in ("c", "a", "b")],
        replicas=2,
        state_dir=str(tmp_path / "p" / "state2"),
    )
    assert store_identity(a) == store_identity(b)


def test_hosts_that_reach_one_bucket_through_their_own_endpoints_share_an_identity(tmp_path):
    """On the multi-host bed every host reaches S3 through its own proxy (its own port):
    the data is the same, so the identity (and the invalidations keyed by it) must be."""

    def over(port: int) -> ReplicatedStore:
        opts = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
        node = NodeSpec("s3://bucket/prefix", name="n0", storage_options=opts)
        return ReplicatedStore([node], replicas=1, state_dir=str(tmp_path / f"s{port}"))

    a, b = over(1), over(2)
    try:
        assert store_identity(a) == store_identity(b)
        assert store_identity(a) != store_identity(_store(tmp_path / "local"))
    finally:
        a.close()
        b.close()
