"""ObstoreNode: an object-store prefix through obstore (S3, GCS, Azure, obstore's memory).

The record rides in the object's own attributes (user metadata: ``x-amz-meta-*`` on S3,
``x-goog-meta-*`` on GCS, ``x-ms-meta-*`` on Azure) under the same name as the s3fs node's
(:data:`~swarmstore.storage._s3.S3_META`), so both clients read each other's records:

- a verified read is **one GET**: the bytes and the record come back together;
- ``state`` is **one HEAD** (a GET with obstore's ``head`` option, which returns the
  attributes; ``obstore.head`` does not), plus one for the tombstone when asked;
- a write is **one PUT**, conditional: obstore's ``mode="create"`` (``If-None-Match: *``)
  when phase 1 saw no object, its e-tag mode (``If-Match``) when it saw one;
- a delete puts the tombstone (conditional, like a write) *before* removing the data, so
  a crash between the two leaves data the tombstone outranks (:func:`finishes_delete`).

obstore has no conditional delete: the data's and tombstones' removals are unconditional,
guarded by a per-key lock within the process (:mod:`._keylock`). A writer in another
process whose PUT lands between a delete's compare and its removal loses that one
replica, which then looks behind and is repaired like any stale replica (docs/storage.md).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import AlreadyExistsError, PreconditionError
from zarr.storage import ObjectStore

from swarmstore.errors import ChecksumMismatch, NodeRefused
from swarmstore.storage._integrity import Record
from swarmstore.storage._keylock import exclusive
from swarmstore.storage._node import (
    META,
    Node,
    Outcome,
    Pending,
    Read,
    State,
    _name_hash,
    check_key,
    finishes_delete,
    hidden,
    may_replace,
    occupied,
    refusal,
    tomb_name,
)
from swarmstore.storage._obstore_io import classify, is_past_end, location, same_place
from swarmstore.storage._s3 import S3_META

if TYPE_CHECKING:
    from collections.abc import Hashable

    from swarmstore.storage._integrity import Version

__all__ = ["ObstoreNode"]

_HEAD = {"head": True}
_Changed = (AlreadyExistsError, PreconditionError, FileNotFoundError)


def _decode(attrs: Any, key: str, tomb: bool) -> tuple[Record | None, str | None]:
    raw = attrs.get(S3_META) if attrs else None
    if raw is None:
        return None, ("tombstone without a record" if tomb else None)
    return _parse(raw, key, tomb)


@functools.lru_cache(maxsize=65536)
def _parse(raw: str, key: str, tomb: bool) -> tuple[Record | None, str | None]:
    """A record's text, parsed once (records are immutable; zarr reads the same chunks,
    and so the same record texts, again and again)."""
    try:
        record = Record.decode(raw, key)
    except ValueError as e:
        return None, f"unreadable checksum record ({e})"
    if record.deleted != tomb:
        return None, "a record of the wrong kind"
    return record, None


def _mode(etag: str | None) -> Any:
    """The precondition that the object is still what phase 1 saw."""
    return {"e_tag": etag} if etag else "create"


class ObstoreNode(Node):
    """One prefix of an obstore store (``S3Store``, ``GCSStore``, ``AzureStore``,
    ``MemoryStore``); the store's own ``prefix`` is the node's root."""

    def __init__(
        self,
        store: Any,
        *,
        name: str | None = None,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
    ) -> None:
        if isinstance(store, ObjectStore):
            store = store.store
        self.raw = store
        super().__init__(name or location(store), weight=weight, zone=zone, host=host)
        self.store = ObjectStore(store)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ObstoreNode)
            and (self.name, self.weight, self.zone) == (other.name, other.weight, other.zone)
            and same_place(self.raw, other.raw)
        )

    def __hash__(self) -> int:
        return _name_hash(self.name)

    def place(self) -> str:
        return location(self.raw)

    def __reduce__(self) -> Any:
        attrs = {"name": self.name, "weight": self.weight, "zone": self.zone, "host": self.host}
        return (_rebuild, (self.raw, attrs))

    # --- one request ---------------------------------------------------------------------
    async def _head(self, k: str) -> tuple[int, Any, str | None] | None:
        try:
            got = await obstore.get_async(self.raw, k, options=_HEAD)
        except FileNotFoundError:
            return None
        except Exception as e:
            raise classify(e, f"{self.name}: HEAD {k}") from e
        meta = got.meta
        return meta["size"], got.attributes, meta["e_tag"]

    async def _put(self, k: str, body: bytes, record: str | None, mode: Any) -> None:
        attrs = {S3_META: record} if record is not None else None
        try:
            await obstore.put_async(self.raw, k, body, attributes=attrs, mode=mode)
        except _Changed:
            raise
        except Exception as e:
            raise classify(e, f"{self.name}: PUT {k}") from e

    async def _drop(self, k: str) -> bool:
        try:
            await obstore.delete_async(self.raw, k)
        except FileNotFoundError:
            return False
        except Exception as e:
            raise classify(e, f"{self.name}: DELETE {k}") from e
        return True

    # --- reads ---------------------------------------------------------------------------
    async def read(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        check_key(key)
        options = None
        if end is not None:
            if end <= start:
                return await self._empty(key)
            options = {"range": (start, end)}
        elif start:
            options = {"range": {"offset": start}}
        try:
            got = await obstore.get_async(self.raw, key, options=options)
            data = await got.bytes_async()
        except FileNotFoundError:
            return None
        except Exception as e:
            if options is not None and is_past_end(e):
                return await self._empty(key)
            raise classify(e, f"{self.name}: GET {key}") from e
        record, why = _decode(got.attributes, key, tomb=False)
        if why is not None:
            raise ChecksumMismatch(f"{self.name}/{key}: {why}")
        return Read(bytes(data), record, got.meta["size"])

    async def _empty(self, key: str) -> Read | None:
        """An empty range of ``key``: its record and size, no bytes (a range past the end)."""
        st = await self.state(key, tomb=False)
        if st.size is None:
            return None
        if st.corrupt is not None:
            raise ChecksumMismatch(f"{self.name}/{key}: {st.corrupt}")
        return Read(b"", st.record, st.size)

    async def state(self, key: str, *, tomb: bool | None = None) -> State:
        got = await self._head(check_key(key))
        size, record, corrupt, etag = None, None, None, None
        if got is not None:
            size, attrs, etag = got
            record, corrupt = _decode(attrs, key, tomb=False)
        if tomb is False or (tomb is None and got is not None and corrupt is None):
            return State(size, record, None, False, corrupt, (etag, None))
        t = await self._head(self._meta_key(tomb_name(key)))
        trec, tetag = None, None
        if t is not None:
            trec, why = _decode(t[1], key, tomb=True)
            tetag = t[2]
            if why is not None and (size is None or corrupt is not None):
                corrupt = corrupt or why
        return State(size, record, trec, True, corrupt, (etag, tetag))

    # --- writes --------------------------------------------------------------------------
    async def prepare(self, key: str, data: bytes) -> Pending:
        # with its tombstone: data a newer tombstone outranks (a delete left halfway) must
        # count as absent, or a write stamped below that tombstone would be lost to it
        return Pending(key, bytes(data), await self.state(key, tomb=True))

    async def commit(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        key, text = pending.key, record.encode(pending.key)
        cur = pending.seen
        if create and occupied(cur):
            return "exists"
        if not force and not may_replace(pending.seen, cur, record.version, heal):
            return refusal(cur)  # phase 1 already saw this version or a newer one
        async with exclusive(self.name, key):  # a delete here removes without a condition
            for _ in range(4):
                token = cur.token[0] if cur.size is not None else None
                try:
                    await self._put(key, pending.data, text, "overwrite" if force else _mode(token))
                    break
                except _Changed:
                    if create:
                        return "exists"
                    cur = await self.state(key, tomb=True)
                    if not may_replace(pending.seen, cur, record.version, heal):
                        return refusal(cur)
            else:
                raise NodeRefused(f"{self.name}: {key!r} kept changing under the write")
            if cur.tomb is not None and cur.tomb.version < record.version:
                await self._drop(self._meta_key(tomb_name(key)))
        return "written"

    async def abort(self, pending: Pending) -> None:
        return None  # nothing is staged before commit

    async def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        check_key(key)
        async with exclusive(self.name, key):
            # a tombstone phase 1 did not look at is presumed absent (create mode)
            cur = seen if seen.token is not None else await self.state(key, tomb=True)
            body, text = key.encode(), tomb.encode(key)
            for _ in range(4):
                try:
                    if not finishes_delete(cur, tomb):
                        if not may_replace(seen, cur, tomb.version):
                            return "superseded"
                        # the tombstone first: a crash before the data's removal leaves
                        # data the tombstone outranks, never a node with neither
                        tk = self._meta_key(tomb_name(key))
                        await self._put(tk, body, text, _mode(cur.token[1]))
                    if cur.size is not None:
                        await self._drop(key)
                    return "written"
                except _Changed:
                    cur = await self.state(key, tomb=True)
        raise NodeRefused(f"{self.name}: {key!r} kept changing under the delete")

    async def unbury(self, key: str, tomb: Record) -> None:
        async with exclusive(self.name, check_key(key)):
            st = await self.state(key, tomb=True)
            if st.tomb is not None and st.tomb.version == tomb.version:
                await self._drop(self._meta_key(tomb_name(key)))

    async def remove(self, key: str, version: Version | None = None) -> bool:
        async with exclusive(self.name, check_key(key)):
            st = await self.state(key, tomb=False)
            if st.size is None:
                return False
            if version is not None and (st.record.version if st.record else None) != version:
                return False
            return await self._drop(key)

    # --- metadata area -------------------------------------------------------------------
    def _meta_key(self, name: str) -> str:
        return f"{META}/{name}"

    async def meta_put(self, name: str, body: bytes) -> None:
        await self._put(self._meta_key(name), bytes(body), None, "overwrite")

    async def meta_get(self, name: str) -> bytes | None:
        try:
            got = await obstore.get_async(self.raw, self._meta_key(name))
            return bytes(await got.bytes_async())
        except FileNotFoundError:
            return None
        except Exception as e:
            raise classify(e, f"{self.name}: GET {name}") from e

    async def meta_list(self, area: str) -> list[str]:
        lead = f"{META}/"
        keys = await self._list(f"{lead}{area}/")
        return sorted(k[len(lead) :] for k in keys)

    async def meta_delete(self, name: str) -> None:
        await self._drop(self._meta_key(name))

    # --- listing -------------------------------------------------------------------------
    async def _list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix`` (a string prefix: obstore lists whole
        path segments, so the listing starts at the last ``/`` and is filtered)."""
        base = prefix.rpartition("/")[0]
        out: list[str] = []
        try:
            async for batch in obstore.list(self.raw, base or None):
                out.extend(m["path"] for m in batch if m["path"].startswith(prefix))
        except Exception as e:
            raise classify(e, f"{self.name}: LIST {prefix}") from e
        return out

    async def list_keys(self, prefix: str) -> list[str]:
        return sorted(k for k in await self._list(prefix) if not hidden(k))

    async def list_entries(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/")
        try:
            got = await obstore.list_with_delimiter_async(self.raw, base or None)
        except Exception as e:
            raise classify(e, f"{self.name}: LIST {base}/") from e
        paths = [*got["common_prefixes"], *(m["path"] for m in got["objects"])]
        names = {p.rstrip("/").rpartition("/")[2] for p in paths}
        return sorted(n for n in names if n and not hidden(f"{base}/{n}" if base else n))

    async def ping(self) -> None:
        """One LIST request: a missing bucket is a refusal here, where a HEAD of a key
        would answer "absent"."""
        try:
            async for _ in obstore.list(self.raw, None, chunk_size=1):
                break
        except Exception as e:
            raise classify(e, f"{self.name}: LIST") from e

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None  # obstore's connection pool lives with the store, closed with it


def _rebuild(store: Any, attrs: dict[str, Any]) -> ObstoreNode:
    return ObstoreNode(store, **attrs)
