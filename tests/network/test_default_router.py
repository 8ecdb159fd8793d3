"""The process-wide router, pickling, and QoS classes inside Dask tasks on real workers."""

import pickle
import uuid

import numpy as np
import zarr
from distributed.utils_test import gen_cluster

from swarmstore.network import TransferRouter, default_router, qos, reset_default_router
from swarmstore.storage import ReplicatedStore


def test_default_router_is_shared_and_resettable():
    reset_default_router()
    r = default_router()
    assert default_router() is r
    reset_default_router()
    assert default_router() is not r


def test_pickling_keeps_settings_not_figures():
    r = TransferRouter(hedge=False, source_concurrency=3, host="h1", zone="z1")
    r.observe("n0", 0.01)
    back = pickle.loads(pickle.dumps(r))
    assert (back.hedge, back.settings.source_concurrency, back.host, back.zone) == (
        False,
        3,
        "h1",
        "z1",
    )
    assert back.sources == {}
    assert pickle.loads(pickle.dumps(default_router())) is default_router()


def _read_in_task(labels: list[str], cls: str) -> dict:
    """A Dask task: open the store with the worker's shared router, read under ``cls``."""
    store = ReplicatedStore([f"memory://{x}" for x in labels], replicas=2, router=default_router())
    with qos(cls):
        data = zarr.open_array(store, mode="r")[:]
    assert (data == np.arange(40)).all()
    return default_router().figures()["classes"]


# zarr's I/O loop and the executor threads it starts live for the whole process by design.
@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)], clean_kwargs={"threads": False})
async def test_qos_class_set_in_a_task_reaches_the_workers_router(c, s, a):
    labels = [f"net-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    store = ReplicatedStore([f"memory://{x}" for x in labels], replicas=2, router=TransferRouter())
    z = await zarr.api.asynchronous.create_array(store, shape=(40,), chunks=(10,), dtype="i4")
    await z.setitem(slice(None), np.arange(40))
    reset_default_router()
    before = await c.submit(_read_in_task, labels, "bulk", pure=False)
    after = await c.submit(_read_in_task, labels, "interactive", pure=False)
    assert before["bulk"]["granted"] >= 4 and before["interactive"]["granted"] == 0
    assert after["interactive"]["granted"] >= 4
    assert after["bulk"]["granted"] == before["bulk"]["granted"]  # one router for both tasks
