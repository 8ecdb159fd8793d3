"""The state machine's nodes, and the backdoors its faults use to damage them at rest:
memory nodes, local directories (records in xattrs), generic nodes (any zarr store: records
in sidecars), obstore nodes (obstore's memory store, or S3 on a moto server) and s3fs
nodes (S3 on a moto server)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from swarmstore.storage import StoreNode
from swarmstore.storage._generic import _sidecar
from swarmstore.storage._local import XATTR, LocalNode
from swarmstore.storage._memory import MemoryNode
from swarmstore.storage._s3 import S3_META, S3Node

PROTO = default_buffer_prototype()


class MemoryNodes:
    """The machine's nodes as memory nodes; ``at_rest``/``put`` reach past the API."""

    def __init__(self, tag: str, n: int) -> None:
        self.tag = tag
        self.raw = [self.node(i) for i in range(n)]

    def node(self, i: int) -> MemoryNode:
        return MemoryNode.named(f"sm-{self.tag}-{i}", name=f"n{i}")

    def state(self, i: int, key: str, run) -> object:
        return self.raw[i].state_now(key, tomb=True)

    def at_rest(self, i: int, key: str) -> tuple[bytes, str] | None:
        """The bytes and record text node ``i`` holds for ``key`` (None: nothing whole)."""
        raw = self.raw[i]
        buf, entry = raw._data.get(key), raw.side.records.get(key)
        if buf is None or entry is None or entry[0] is not buf:
            return None
        return buf.to_bytes(), entry[1]

    def put(self, i: int, key: str, data: bytes, text: str | None) -> None:
        """Store ``data`` with record ``text`` (None: without a record) behind the API."""
        raw, buf = self.raw[i], PROTO.buffer.from_bytes(data)
        raw._data[key] = buf
        if text is None:
            raw.side.records.pop(key, None)
        else:
            raw.side.records[key] = (buf, text)


class LocalNodes:
    """The machine's nodes as local directories (the record in each file's xattr)."""

    def __init__(self, tag: str, n: int) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix=f"sm-{tag}-")
        self.roots = [Path(self.dir.name) / f"n{i}" for i in range(n)]
        for root in self.roots:
            root.mkdir()

    def node(self, i: int) -> LocalNode:
        return LocalNode(self.roots[i], name=f"n{i}")

    def state(self, i: int, key: str, run) -> object:
        return self.node(i).state_now(key, tomb=True)

    def at_rest(self, i: int, key: str) -> tuple[bytes, str] | None:
        path = self.roots[i] / key
        try:
            return path.read_bytes(), os.getxattr(path, XATTR).decode()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError:  # no record: not whole
            return None

    def put(self, i: int, key: str, data: bytes, text: str | None) -> None:
        path = self.roots[i] / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".machine-put")
        tmp.write_bytes(data)
        if text is not None:
            os.setxattr(tmp, XATTR, text.encode())
        os.replace(tmp, path)

    def close(self) -> None:
        self.dir.cleanup()


class GenericNodes:
    """The machine's nodes as generic StoreNodes (records in sidecars) over shared dicts."""

    def __init__(self, tag: str, n: int) -> None:
        self.dicts: list[dict] = [{} for _ in range(n)]

    def node(self, i: int) -> StoreNode:
        return StoreNode(MemoryStore(self.dicts[i]), name=f"n{i}")

    def state(self, i: int, key: str, run) -> object:
        return run(self.node(i).state(key, tomb=True))

    def at_rest(self, i: int, key: str) -> tuple[bytes, str] | None:
        buf, side = self.dicts[i].get(key), self.dicts[i].get(_sidecar(key))
        lines = side.to_bytes().decode().split("\n") if side is not None else []
        if buf is None or len(lines) != 2:  # absent, or a write in flight
            return None
        return buf.to_bytes(), lines[1]

    def put(self, i: int, key: str, data: bytes, text: str | None) -> None:
        self.dicts[i][key] = PROTO.buffer.from_bytes(data)
        if text is None:
            self.dicts[i].pop(_sidecar(key), None)
        else:
            self.dicts[i][_sidecar(key)] = PROTO.buffer.from_bytes(f"{key}\n{text}".encode())


class ObstoreNodes:
    """The machine's nodes as obstore nodes over obstore's in-memory stores (the record in
    each object's attributes)."""

    def __init__(self, tag: str, n: int) -> None:
        from obstore.store import MemoryStore as ObMemory

        self.raw = [ObMemory() for _ in range(n)]

    def node(self, i: int):
        from swarmstore.storage import ObstoreNode

        return ObstoreNode(self.raw[i], name=f"n{i}")

    def state(self, i: int, key: str, run) -> object:
        return run(self.node(i).state(key, tomb=True))

    def at_rest(self, i: int, key: str) -> tuple[bytes, str] | None:
        import obstore

        try:
            got = obstore.get(self.raw[i], key)
        except FileNotFoundError:
            return None
        text = got.attributes.get(S3_META)
        return None if text is None else (bytes(got.bytes()), text)

    def put(self, i: int, key: str, data: bytes, text: str | None) -> None:
        import obstore

        attrs = {S3_META: text} if text is not None else None
        obstore.put(self.raw[i], key, data, attributes=attrs)


class ObstoreS3Nodes(ObstoreNodes):
    """Obstore nodes on S3 (a moto server: real HTTP, S3's own ``If-Match`` and
    ``If-None-Match``), one prefix per node under a fresh prefix per machine. ``place`` is
    ``(endpoint, bucket)``, set by the test module's fixture."""

    place: tuple | None = None

    def __init__(self, tag: str, n: int) -> None:
        assert self.place is not None, "ObstoreS3Nodes needs the moto fixture"
        endpoint, bucket = self.place
        self.raw = [endpoint.object_store(bucket, f"sm-{tag}/n{i}").store for i in range(n)]


class S3Nodes(ObstoreS3Nodes):
    """The machine's nodes as s3fs S3 nodes on a moto server; the backdoors go through
    obstore (both clients keep the record under the same user-metadata name)."""

    def __init__(self, tag: str, n: int) -> None:
        super().__init__(tag, n)
        endpoint, bucket = self.place
        self.fs = endpoint.filesystem(asynchronous=True)
        self.paths = [f"{bucket}/sm-{tag}/n{i}" for i in range(n)]

    def node(self, i: int) -> S3Node:
        return S3Node(self.fs, self.paths[i], name=f"n{i}")

    async def aclose(self) -> None:
        """Close this loop's HTTP sessions (every S3 node of the machine shares them)."""
        await self.node(0).aclose()
