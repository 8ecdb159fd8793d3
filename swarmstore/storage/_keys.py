"""Store keys a node can hold: validation, and the names swarmstore reserves.

Every node kind (local directory, memory, S3, obstore, generic zarr store) holds zarr's
keys as they are, beside a metadata area (``.swarmstore/``) and staged temp files that
listings hide. :func:`check_key` refuses, before any I/O, a key that could escape a
node's root or that some backend cannot hold.
"""

from __future__ import annotations

import functools

import xxhash

from swarmstore.errors import InvalidKeyError

__all__ = ["KEY_MAX", "META", "NAME_MAX", "check_key", "hidden", "tomb_name"]

_TMP_MARK = ".swarm-tmp-"
#: the metadata area's top-level name inside every node root
META = ".swarmstore"
NAME_MAX = 255
KEY_MAX = 1024


def check_key(key: str, *, prefix: bool = False) -> str:
    """Refuse keys that could escape a node's root or that no node can hold; return it.

    Refused: absolute paths, ``..`` or ``.`` components, empty components, backslashes,
    NUL and other control characters, a component longer than 255 bytes (NAME_MAX) or a
    key longer than 1024 bytes (UTF-8), and the reserved metadata area ``.swarmstore/``.
    ``prefix=True`` also accepts ``""`` and a trailing ``/`` (listing prefixes).
    """
    if type(key) is str and _valid(key, prefix):
        return key
    return _check_key(key, prefix=prefix)


@functools.lru_cache(maxsize=65536)
def _valid(key: str, prefix: bool) -> bool:
    """Whether ``key`` passes (cached: zarr asks about the same keys again and again)."""
    try:
        _check_key(key, prefix=prefix)
    except InvalidKeyError:
        return False
    return True


def _check_key(key: str, *, prefix: bool = False) -> str:
    if not isinstance(key, str):
        raise InvalidKeyError(f"store keys are str, got {type(key).__name__}")
    body = key
    if prefix:
        if key == "":
            return key
        body = key[:-1] if key.endswith("/") else key
    if not body:
        raise InvalidKeyError("empty store key")
    if body.startswith("/") or "\\" in body or any(ord(c) < 32 for c in body):
        raise InvalidKeyError(f"store key {key!r} is absolute or holds a forbidden character")
    try:
        size = len(body.encode())
    except UnicodeEncodeError as e:
        raise InvalidKeyError(f"store key {key!r} is not valid UTF-8") from e
    if size > KEY_MAX:
        raise InvalidKeyError(f"store key of {size} bytes is longer than {KEY_MAX} bytes")
    parts = body.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            raise InvalidKeyError(f"store key {key!r} has an empty, '.' or '..' component")
        if p.startswith(_TMP_MARK):
            raise InvalidKeyError(f"store key {key!r} uses the reserved prefix {_TMP_MARK!r}")
        if len(p.encode()) > NAME_MAX:
            raise InvalidKeyError(
                f"store key component {p[:40]!r}... is longer than {NAME_MAX} bytes (NAME_MAX)"
            )
    if parts[0] == META:
        raise InvalidKeyError(f"store key {key!r} is in the reserved metadata area {META}/")
    return key


def tomb_name(key: str) -> str:
    """The metadata-area name of ``key``'s tombstone (hashed: any key fits any backend)."""
    return f"t/{xxhash.xxh3_128_hexdigest(key.encode())}"


def hidden(key: str) -> bool:
    """Whether a listed key is swarmstore's own (metadata area, staged temp files)."""
    return key == META or key.startswith(META + "/") or _TMP_MARK in key
