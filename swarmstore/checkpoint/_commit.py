"""The commit primitive: create a small object unless it exists, and know who won.

``put_if_absent`` returns True when this call created the key and False when another
writer's bytes are there. The bytes carry a write id unique to the call (every ref and
lock does), so reading them back tells the two apart, as Icechunk's design doc 017
does for its refs: a conditional put whose response was lost (a dropped connection, a
proxy timeout, an SDK retry that then sees 412 against the object it just wrote) is
neither reported as a conflict nor retried into a second commit.

- The create fails with "exists" (S3 412, ``os.link``'s ``FileExistsError``): read
  back; ours → success, anyone else's → lost the race.
- The create fails with a transport error (``is_transport_error``): read back; ours →
  success, anyone else's → lost the race, nothing there → create again (same bytes, so
  the same write id), up to three times; a read-back that itself fails raises.
- The create returns: stores whose ``set_if_not_exists`` says nothing (zarr's API) are
  read back too.

How strong the exclusion is depends on the store (:func:`commit_guarantee`): stores
that announce ``supports_atomic_create`` (ReplicatedStore: a quorum of atomic creates),
S3 through s3fs (``PutObject`` with ``If-None-Match: *``; one ``PutObject`` whatever the
size), zarr's ``ObjectStore`` on obstore (``PutMode.Create``) and ``LocalStore``
(temporary file, then ``os.link``, which fails if the name exists) are atomic;
``MemoryStore`` only within one process; other stores' own ``set_if_not_exists`` is
zarr's check-then-write, "store-defined". A put is whole-or-nothing against a crash in
every case (temporary file and rename, one PUT).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from zarr.core.buffer import default_buffer_prototype

from swarmstore.checkpoint._caps import Guarantee, atomic_create, is_s3, obstore_of
from swarmstore.checkpoint._docs import create_doc, get_doc, inline_io
from swarmstore.errors import is_transport_error

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["commit_guarantee", "put_if_absent"]

logger = logging.getLogger(__name__)

ATTEMPTS = 3


def commit_guarantee(store: Store) -> Guarantee:
    """How atomic a commit on ``store`` is against a concurrent writer (caches looked through)."""
    return atomic_create(store)


async def _create(store: Store, key: str, data: bytes) -> bool:
    """Create ``key``; True when the store's answer alone says this call created it
    (a conditional request that succeeded), False when only a read-back can tell."""
    inner = obstore_of(store)
    if inner is not None:
        import obstore

        store._check_writable()
        try:
            await obstore.put_async(inner[0], key, data, mode="create")
        except obstore.exceptions.AlreadyExistsError as e:
            raise FileExistsError(key) from e
        return inner[1]
    if inline_io(store):
        create_doc(store, key, data)  # type: ignore[arg-type]
        return True
    if is_s3(store):
        store._check_writable()  # type: ignore[attr-defined]
        path = f"{store.path.rstrip('/')}/{key}" if store.path else key  # type: ignore[attr-defined]
        # one PutObject whatever the size (s3fs switches to an unconditional multipart
        # upload past 2 * chunksize)
        await store.fs._pipe_file(path, data, mode="create", chunksize=len(data) + 1)  # type: ignore[attr-defined]
        return True
    await store.set_if_not_exists(key, default_buffer_prototype().buffer.from_bytes(data))
    return False


async def _held(store: Store, key: str) -> bytes | None:
    buf = await get_doc(store, key)
    return None if buf is None else buf.to_bytes()


async def put_if_absent(store: Store, key: str, data: bytes) -> bool:
    """Create ``key`` holding ``data`` unless it exists; True if this call created it.

    ``data`` must be unique to this call (carry a write id): equal bytes read back mean
    this call's write landed.
    """
    for attempt in range(ATTEMPTS):
        try:
            answered = await _create(store, key, data)
        except FileExistsError:
            return await _held(store, key) == data  # maybe our own write, retried below us
        except Exception as e:
            if not is_transport_error(e) or attempt == ATTEMPTS - 1:
                raise
            logger.warning("Create of %s failed (%s); reading it back", key, e)
            held = await _held(store, key)  # a failure here is inconclusive: it propagates
            if held is not None:
                return held == data
            continue  # nothing landed: create again, same bytes
        if answered:
            return True  # the conditional request succeeded
        return await _held(store, key) == data
    raise AssertionError("unreachable")  # pragma: no cover
