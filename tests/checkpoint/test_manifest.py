"""The manifest format: round trip, strict validation, checksums, safe keys."""

from __future__ import annotations

import json

import pytest

from swarmstore.checkpoint import SCHEMA_VERSION, Manifest, content_hash
from swarmstore.checkpoint._manifest import (
    check_key,
    manifest_key,
    object_key,
    step_from_manifest_key,
)
from swarmstore.errors import InvalidKeyError, ManifestError

H = content_hash(b"chunk")


def _manifest(**kw) -> Manifest:
    args = {
        "step": 7,
        "entries": {"zarr.json": '{"zarr_format": 3}', "x/c/0": (H, 5)},
        "metadata": {"loss": 0.25, "epoch": 3},
        "parent": 6,
        "created": 1.5,
    }
    return Manifest(**{**args, **kw})


def _tamper(data: bytes, edit) -> bytes:
    doc = json.loads(data)
    edit(doc)
    return json.dumps(doc).encode()


def test_round_trip_keeps_everything():
    m = _manifest()
    back = Manifest.from_bytes(m.to_bytes())
    assert back == m
    assert back.hashes() == {H}
    assert back.nbytes == 5 + len('{"zarr_format": 3}')


def test_bytes_are_canonical_json_with_schema_version():
    doc = json.loads(_manifest().to_bytes())
    assert doc["version"] == SCHEMA_VERSION
    assert doc["format"] == "swarmstore-checkpoint"
    assert doc["entries"]["x/c/0"] == {"hash": H, "size": 5}
    assert len(doc["checksum"]) == 32


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["metadata"].update(loss=0.1), "fails its checksum"),
        (lambda d: d["entries"].pop("x/c/0"), "fails its checksum"),
        (lambda d: d.update(checksum="0" * 32), "fails its checksum"),
        (lambda d: d.pop("parent"), "has fields"),
        (lambda d: d.update(extra=1), "has fields"),
        (lambda d: d.update(format="other"), "is not a swarmstore-checkpoint manifest"),
        (lambda d: d.update(version=SCHEMA_VERSION + 1), "upgrade swarmstore"),
        (lambda d: d.update(version="1"), "no integer schema version"),
    ],
)
def test_tampered_or_malformed_manifest_is_refused(edit, match):
    with pytest.raises(ManifestError, match=match):
        Manifest.from_bytes(_tamper(_manifest().to_bytes(), edit), where="m")


def _resigned(edit) -> bytes:
    """A manifest edited and re-checksummed: only field validation can catch it."""
    from swarmstore.checkpoint._manifest import _canonical

    doc = json.loads(_manifest().to_bytes())
    doc.pop("checksum")
    edit(doc)
    doc["checksum"] = content_hash(_canonical(doc))
    return _canonical(doc)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["entries"].update({"../../etc/passwd": {"hash": H, "size": 1}}), "segment"),
        (lambda d: d["entries"].update({"/abs": {"hash": H, "size": 1}}), "segment"),
        (lambda d: d["entries"].update({"x/c/1": {"hash": "../" * 11, "size": 1}}), "malformed"),
        (lambda d: d["entries"].update({"x/c/1": {"hash": H, "size": -1}}), "malformed"),
        (lambda d: d["entries"].update({"x/c/1": {"hash": H}}), "malformed"),
        (lambda d: d["entries"].update({"x/c/1": {"inline": 3}}), "malformed"),
        (lambda d: d.update(step=-1), "invalid step"),
        (lambda d: d.update(step=True), "invalid step"),
        (lambda d: d.update(parent="6"), "bad parent"),
        (lambda d: d.update(id="not-hex"), "bad id"),
        (lambda d: d.update(metadata=[1]), "metadata is not an object"),
        (lambda d: d.update(entries=[]), "entries is not an object"),
        (lambda d: d.update(created="now"), "bad creation time"),
    ],
)
def test_invalid_fields_are_refused_even_with_a_valid_checksum(edit, match):
    with pytest.raises(ManifestError, match=match):
        Manifest.from_bytes(_resigned(edit))


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b"\xff\xfe", b'{"format": 1'])
def test_garbage_is_refused(data):
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data)


def test_metadata_must_be_plain_json():
    with pytest.raises(ManifestError, match="plain JSON"):
        _manifest(metadata={"x": object()}).to_bytes()
    with pytest.raises(ManifestError, match="plain JSON"):
        _manifest(metadata={"loss": float("nan")}).to_bytes()


@pytest.mark.parametrize(
    "key", ["", "/a", "a/", "a//b", "a/../b", "./a", "a\\b", "a\x00", "x" * 2000]
)
def test_unsafe_keys_are_refused(key):
    with pytest.raises(InvalidKeyError):
        check_key(key)


def test_layout_names():
    assert object_key(H) == f"objects/{H[:2]}/{H[2:]}"
    assert manifest_key(12) == "manifests/00000000000000000012.json"
    assert step_from_manifest_key(manifest_key(12)) == 12
    assert step_from_manifest_key("manifests/00000000000000000012.abc.partial") is None
    assert content_hash(b"") == content_hash(bytearray())
