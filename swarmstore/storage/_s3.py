"""S3Node: an S3 prefix. The record is the object's ``x-amz-meta-swarmstore-xxh3``.

The checksum rides in the PUT that writes the object and comes back in the headers of the
GET that reads it. Every mutation is a compare-and-swap: the PUT carries ``If-Match`` with
the ETag phase 1 saw (or ``If-None-Match: *`` when there was no object), a delete carries
``If-Match`` too, so a request that lands late never replaces a newer value. Requests go
straight to the aiobotocore client (s3fs only builds it): s3fs's own retry loop would hide
a dead node from the router for seconds, and every error is classified here instead
(transport errors become :class:`NodeUnavailable`, missing objects None, refusals
:class:`NodeRefused`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zarr.storage import FsspecStore

from swarmstore.errors import ChecksumMismatch, ConfigError, NodeRefused, as_node_unavailable
from swarmstore.storage import _s3sessions
from swarmstore.storage._integrity import Record
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
    refusal,
    tomb_name,
)

if TYPE_CHECKING:
    from collections.abc import Hashable

    from swarmstore.storage._integrity import Version

__all__ = ["S3_META", "S3Node"]

S3_META = "swarmstore-xxh3"


class _Absent(Exception):
    """The object does not exist (404)."""


class _Conflict(Exception):
    """A conditional request's precondition failed (412): the object changed."""


def _decode(meta: dict[str, str] | None, key: str, tomb: bool) -> tuple[Record | None, str | None]:
    raw = (meta or {}).get(S3_META)
    if raw is None:
        return None, ("tombstone without a record" if tomb else None)
    try:
        record = Record.decode(raw, key)
    except ValueError as e:
        return None, f"unreadable checksum record ({e})"
    if record.deleted != tomb:
        return None, "a record of the wrong kind"
    return record, None


class S3Node(Node):
    """An S3 prefix through an asynchronous s3fs filesystem's aiobotocore client."""

    def __init__(
        self,
        fs: Any,
        path: str,
        *,
        name: str | None = None,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
    ) -> None:
        if not getattr(fs, "asynchronous", False):
            raise ConfigError("S3 nodes need an asynchronous s3fs filesystem")
        self.fs = fs
        self.path = path.strip("/")
        super().__init__(name or f"s3://{self.path}", weight=weight, zone=zone, host=host)
        self.store = FsspecStore(fs, path=self.path)
        self.bucket, _, prefix = self.path.partition("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self._options = _options_of(fs)
        self._token = _token(self._options)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, S3Node)
            and (self.name, self.path, self.weight, self.zone)
            == (other.name, other.path, other.weight, other.zone)
            and _endpoint(self.fs) == _endpoint(other.fs)
        )

    def __hash__(self) -> int:
        return _name_hash(self.name)

    def place(self) -> str:
        return f"s3://{self.path}"

    def __reduce__(self) -> Any:
        attrs = {"name": self.name, "weight": self.weight, "zone": self.zone, "host": self.host}
        return (_rebuild, (self.fs, self.path, attrs))

    def _loc(self, key: str) -> tuple[str, str]:
        return self.bucket, self.prefix + check_key(key)

    def _meta_key(self, name: str) -> str:
        return f"{self.prefix}{META}/{name}"

    # --- one request ---------------------------------------------------------------------
    def _fs_here(self) -> Any:
        """This loop's filesystem for these options (:mod:`._s3sessions`): a clone of
        ``fs``, one per event loop (a session belongs to its loop), shared by every node
        with the same options."""
        return _s3sessions.here(
            self._token,
            lambda loop: type(self.fs)(
                asynchronous=True, skip_instance_cache=True, loop=loop, **self._options
            ),
        )

    async def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            fs = self._fs_here()
            await fs.set_session()
            client = await fs.get_s3(self.bucket)
            return await getattr(client, method)(Bucket=self.bucket, **kwargs)
        except Exception as e:
            raise _classify(e, f"{self.name}: {method}") from e

    async def _head(self, k: str) -> tuple[int, dict[str, str], str] | None:
        try:
            resp = await self._call("head_object", Key=k)
        except _Absent:
            return None
        return int(resp["ContentLength"]), resp.get("Metadata") or {}, resp.get("ETag", "")

    # --- reads ---------------------------------------------------------------------------
    async def read(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        _, k = self._loc(key)
        kwargs: dict[str, Any] = {}
        if start or end is not None:
            if end is not None and end <= start:
                st = await self.state(key, tomb=False)
                return None if st.size is None else _read_of(b"", st, key, self.name)
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            resp = await self._call("get_object", Key=k, **kwargs)
        except _Absent:
            return None
        except NodeRefused as e:
            if "InvalidRange" not in str(e):
                raise
            st = await self.state(key, tomb=False)  # a range past the end
            return None if st.size is None else _read_of(b"", st, key, self.name)
        try:
            data = await resp["Body"].read()
        except Exception as e:
            raise _classify(e, f"{self.name}: reading {key!r}") from e
        finally:
            resp["Body"].close()
        size = int(resp.get("ContentLength", len(data)))
        content_range = resp.get("ContentRange")
        if content_range and "/" in content_range:
            size = int(content_range.rsplit("/", 1)[1])
        record, why = _decode(resp.get("Metadata"), key, tomb=False)
        if why is not None:
            raise ChecksumMismatch(f"{self.name}/{key}: {why}")
        return Read(data, record, size)

    async def state(self, key: str, *, tomb: bool | None = None) -> State:
        _, k = self._loc(key)
        got = await self._head(k)
        size, record, corrupt, etag = None, None, None, None
        if got is not None:
            size, meta, etag = got
            record, corrupt = _decode(meta, key, tomb=False)
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
        _, k = self._loc(pending.key)
        cur = pending.seen
        meta = {S3_META: record.encode(pending.key)}
        for _ in range(4):
            cond = {} if force else _expect(cur.token[0] if cur.size is not None else None)
            try:
                await self._call("put_object", Key=k, Body=pending.data, Metadata=meta, **cond)
                break
            except (_Conflict, _Absent):
                if create:
                    return "exists"
                cur = await self.state(pending.key, tomb=True)
                if not may_replace(pending.seen, cur, record.version, heal):
                    return refusal(cur)
        else:
            raise NodeRefused(f"{self.name}: {pending.key!r} kept changing under the write")
        if cur.tomb is not None and cur.tomb.version < record.version:
            await self._drop(self._meta_key(tomb_name(pending.key)), cur.token[1])
        return "written"

    async def abort(self, pending: Pending) -> None:
        return None

    async def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        _, k = self._loc(key)
        # a tombstone phase 1 did not look at is presumed absent (If-None-Match)
        cur = seen if seen.token is not None else await self.state(key, tomb=True)
        body, meta = key.encode(), {S3_META: tomb.encode(key)}
        for _ in range(4):
            try:
                if not finishes_delete(cur, tomb):
                    if not may_replace(seen, cur, tomb.version):
                        return "superseded"
                    # the tombstone first (see _write.py): a crash before the data's
                    # delete leaves data the tombstone outranks, never a node with neither
                    await self._call(
                        "put_object",
                        Key=self._meta_key(tomb_name(key)),
                        Body=body,
                        Metadata=meta,
                        **_expect(cur.token[1]),
                    )
                if cur.size is not None:
                    await self._call("delete_object", Key=k, **_expect(cur.token[0], put=False))
                return "written"
            except (_Conflict, _Absent):
                cur = await self.state(key, tomb=True)
        raise NodeRefused(f"{self.name}: {key!r} kept changing under the delete")

    async def unbury(self, key: str, tomb: Record) -> None:
        st = await self.state(key, tomb=True)
        if st.tomb is not None and st.tomb.version == tomb.version:
            await self._drop(self._meta_key(tomb_name(key)), st.token[1])

    async def remove(self, key: str, version: Version | None = None) -> bool:
        st = await self.state(key, tomb=False)
        if st.size is None:
            return False
        if version is not None and (st.record.version if st.record else None) != version:
            return False
        return await self._drop(self._loc(key)[1], st.token[0])

    async def _drop(self, k: str, etag: str | None) -> bool:
        try:
            await self._call("delete_object", Key=k, **_expect(etag, put=False))
        except (_Conflict, _Absent):
            return False
        return True

    # --- metadata area -------------------------------------------------------------------
    async def meta_put(self, name: str, body: bytes) -> None:
        await self._call("put_object", Key=self._meta_key(name), Body=bytes(body))

    async def meta_get(self, name: str) -> bytes | None:
        try:
            resp = await self._call("get_object", Key=self._meta_key(name))
        except _Absent:
            return None
        try:
            return bytes(await resp["Body"].read())
        except Exception as e:
            raise _classify(e, f"{self.name}: reading {name}") from e
        finally:
            resp["Body"].close()

    async def meta_list(self, area: str) -> list[str]:
        lead = self._meta_key(area) + "/"
        keys = await self._list(lead, delimiter=False)
        return sorted(f"{area}/{k[len(lead) :]}" for k in keys)

    async def meta_delete(self, name: str) -> None:
        await self._drop(self._meta_key(name), None)

    # --- listing -------------------------------------------------------------------------
    async def _list(self, lead: str, *, delimiter: bool) -> list[str]:
        out: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": lead}
            if delimiter:
                kwargs["Delimiter"] = "/"
            if token:
                kwargs["ContinuationToken"] = token
            try:
                resp = await self._call("list_objects_v2", **kwargs)
            except _Absent as e:
                raise NodeRefused(f"{self.name}: bucket {self.bucket!r} does not exist") from e
            out.extend(o["Key"] for o in resp.get("Contents", []))
            if delimiter:
                out.extend(p["Prefix"].rstrip("/") for p in resp.get("CommonPrefixes", []))
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return out

    async def list_keys(self, prefix: str) -> list[str]:
        keys = await self._list(self.prefix + prefix, delimiter=False)
        cut = len(self.prefix)
        return sorted(k[cut:] for k in keys if not hidden(k[cut:]))

    async def list_entries(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/")
        lead = self.prefix + (f"{base}/" if base else "")
        names = await self._list(lead, delimiter=True)
        rel = {n[len(lead) :] for n in names}
        return sorted(n for n in rel if n and not hidden(f"{base}/{n}" if base else n))

    async def ping(self) -> None:
        await self._call("list_objects_v2", Prefix=self.prefix, MaxKeys=1)

    def close(self) -> None:
        """Close the HTTP sessions for this node's options (any thread; nodes sharing
        them reopen on their next request)."""
        _s3sessions.close_now(self._token)

    async def aclose(self) -> None:
        """Close the HTTP sessions for this node's options, each on the loop that opened
        it (nodes sharing them reopen on their next request)."""
        await _s3sessions.aclose(self._token)


def _options_of(fs: Any) -> dict[str, Any]:
    options = dict(getattr(fs, "storage_options", {}) or {})
    for drop in ("asynchronous", "skip_instance_cache", "loop"):
        options.pop(drop, None)
    return options


def _token(options: dict[str, Any]) -> str:
    import json

    return json.dumps(options, sort_keys=True, default=repr)


def _rebuild(fs: Any, path: str, attrs: dict[str, Any]) -> S3Node:
    return S3Node(fs, path, **attrs)


def _expect(etag: str | None, *, put: bool = True) -> dict[str, str]:
    """The precondition that the object is still what phase 1 saw."""
    if etag:
        return {"IfMatch": etag}
    return {"IfNoneMatch": "*"} if put else {}


def _read_of(data: bytes, st: State, key: str, name: str) -> Read:
    if st.corrupt is not None:
        raise ChecksumMismatch(f"{name}/{key}: {st.corrupt}")
    assert st.size is not None
    return Read(data, st.record, st.size)


def _classify(e: BaseException, where: str) -> BaseException:
    """An S3 error by meaning: absent, changed, unreachable, or refused."""
    response = getattr(e, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = str(response["Error"].get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in ("NoSuchKey", "404", "NotFound"):
            return _Absent(where)
        if status == 412 or code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return _Conflict(where)
        if status == 409 and code == "ConditionalRequestConflict":
            return _Conflict(where)
    mapped = as_node_unavailable(e, where)
    if mapped is not e or isinstance(e, (ChecksumMismatch, ConfigError)):
        return mapped
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return NodeRefused(f"{where}: {err.get('Code')}: {err.get('Message', '')}")
    return e


def _endpoint(fs: Any) -> Any:
    options = getattr(fs, "storage_options", {}) or {}
    return options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
