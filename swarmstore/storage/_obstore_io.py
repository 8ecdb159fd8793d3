"""obstore plumbing for :class:`~swarmstore.storage._obstore.ObstoreNode`: errors by meaning,
node names, and stores built from ``s3://``, ``gs://`` and ``az://`` URLs.

Stores built here retry nothing and time out like the s3fs nodes' botocore clients
(``network.s3-connect-timeout``, ``network.s3-read-timeout``): obstore's default retry
loop (10 attempts over up to 3 minutes) would hide a dead node from the transfer router,
which fails over to another replica instead.
"""

from __future__ import annotations

import datetime
from typing import Any

from swarmstore import config
from swarmstore.errors import ConfigError, NodeRefused, as_node_unavailable

__all__ = [
    "OBSTORE_SCHEMES",
    "classify",
    "client_for",
    "is_past_end",
    "location",
    "obstore_available",
    "same_place",
    "store_from_url",
]

#: URL schemes an obstore node serves (``storage.object-client`` picks obstore or fsspec)
OBSTORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
#: s3fs ``storage_options`` an obstore S3 store understands, and obstore's name for each
_S3FS_KEYS = {"key": "access_key_id", "secret": "secret_access_key", "token": "session_token"}
#: obstore errors that are the service's answer "no", not silence
_REFUSALS = ("PermissionDeniedError", "UnauthenticatedError", "NotSupportedError")


def obstore_available() -> bool:
    """Whether the ``obstore`` package can be imported."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


def client_for(scheme: str, storage_options: dict[str, Any]) -> str:
    """``"obstore"`` or ``"fsspec"``: which client serves a ``scheme://`` node.

    ``storage.object-client``: ``obstore`` or ``fsspec`` as named; ``auto`` picks obstore
    when it is installed and, for ``s3://``, when every storage option translates (s3fs's
    own options, such as ``config_kwargs``, keep s3fs).
    """
    choice = config.value("storage.object-client")
    if choice == "auto":
        if not obstore_available():
            return "fsspec"
        if scheme in ("s3", "s3a") and not _translatable(storage_options):
            return "fsspec"
        return "obstore"
    if choice == "obstore" and not obstore_available():
        raise ConfigError("storage.object-client is 'obstore' but obstore is not installed")
    return str(choice)


def _translatable(options: dict[str, Any]) -> bool:
    extra = set(options) - {*_S3FS_KEYS, "endpoint_url", "client_kwargs", "anon", "config"}
    kwargs = options.get("client_kwargs") or {}
    return not extra and set(kwargs) <= {"region_name", "endpoint_url"}


def _timeouts() -> dict[str, str]:
    connect = config.value("network.s3-connect-timeout")
    read = config.value("network.s3-read-timeout")
    return {"connect_timeout": f"{connect}s", "timeout": f"{read}s"}


def _no_retry() -> dict[str, Any]:
    short = datetime.timedelta(milliseconds=10)
    return {
        "max_retries": 0,
        "backoff": {"init_backoff": short, "max_backoff": short, "base": 2.0},
        "retry_timeout": datetime.timedelta(seconds=1),
    }


def _s3_config(options: dict[str, Any]) -> dict[str, Any]:
    """obstore S3 settings from s3fs-style ``storage_options`` (and obstore's own, under
    ``config``)."""
    out: dict[str, Any] = {_S3FS_KEYS[k]: v for k, v in options.items() if k in _S3FS_KEYS}
    kwargs = options.get("client_kwargs") or {}
    endpoint = options.get("endpoint_url") or kwargs.get("endpoint_url")
    if endpoint:
        out["endpoint"] = endpoint
    if "region_name" in kwargs:
        out["region"] = kwargs["region_name"]
    if options.get("anon"):
        out["skip_signature"] = True
    return {**out, **(options.get("config") or {})}


def store_from_url(url: str, storage_options: dict[str, Any]) -> Any:
    """An obstore store for ``s3://``, ``gs://`` or ``az://`` ``bucket/prefix``, built
    without a request (credentials are read when the first request is signed)."""
    from obstore.store import from_url

    scheme, _, rest = url.partition("://")
    bucket = rest.strip("/").partition("/")[0]
    if not bucket:
        raise ConfigError(f"node URL {url!r}: {scheme}:// needs a bucket")
    options = dict(storage_options)
    client = {**_timeouts(), **(options.pop("client_options", None) or {})}
    cfg = _s3_config(options) if scheme in ("s3", "s3a") else options.get("config", options)
    if str(cfg.get("endpoint", "")).startswith("http://"):
        client["allow_http"] = True
    target = "s3://" + rest if scheme == "s3a" else ("gs://" + rest if scheme == "gcs" else url)
    try:
        return from_url(
            target.rstrip("/"), config=cfg, client_options=client, retry_config=_no_retry()
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"node URL {url!r}: bad storage_options ({e})") from None
    except Exception as e:  # obstore's own errors for unknown settings
        raise ConfigError(f"node URL {url!r}: {type(e).__name__}: {e}") from None


def location(store: Any) -> str:
    """A node name for an obstore store, alike in every process: ``s3://bucket/prefix``
    (the s3fs node's name for the same place), ``gs://...``, ``az://container/...``."""
    kind = type(store).__name__
    cfg = getattr(store, "config", None) or {}
    prefix = str(getattr(store, "prefix", None) or "").strip("/")
    where = {
        "S3Store": ("s3", "bucket"),
        "GCSStore": ("gs", "bucket"),
        "AzureStore": ("az", "container_name"),
    }.get(kind)
    if where is None:
        return f"obstore-{kind.lower()}://{id(store):x}"  # in-process only (MemoryStore)
    scheme, field = where
    return f"{scheme}://{cfg.get(field, '')}/{prefix}".rstrip("/")


def same_place(a: Any, b: Any) -> bool:
    """Whether two obstore stores reach the same prefix of the same service."""
    if a is b:
        return True
    if type(a) is not type(b) or not hasattr(a, "config"):
        return False
    endpoint = ("endpoint", "aws_endpoint")
    return location(a) == location(b) and [a.config.get(k) for k in endpoint] == [
        b.config.get(k) for k in endpoint
    ]


def is_past_end(e: BaseException) -> bool:
    """Whether ``e`` is a range request past the object's end (S3's 416, obstore's
    in-memory "Invalid range")."""
    text = str(e)
    return "416" in text or "InvalidRange" in text or "Invalid range" in text


def classify(e: BaseException, where: str) -> BaseException:
    """An obstore error by meaning: unreachable (:class:`NodeUnavailable`) or refused."""
    if type(e).__name__ in _REFUSALS:
        return NodeRefused(f"{where}: {type(e).__name__}: {_first_line(e)}")
    text = str(e)
    if "non-2xx status code: 4" in text:  # an answer: a client error, not silence
        return NodeRefused(f"{where}: {_first_line(e)}")
    return as_node_unavailable(e, where)


def _first_line(e: BaseException) -> str:
    return str(e).strip().split("\n", 1)[0][:300]
