"""Proving a call never hops to zarr's I/O loop: hold the loop, run the call in a thread.

:class:`HeldLoop` blocks the I/O loop's thread until released, so anything that waits on
the loop would hang; :func:`in_thread` runs a call in a thread and fails if it does not
finish by its deadline. Together they test zarr's sync path (``get_sync`` and friends).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from swarmstore import _sync

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["HeldLoop", "in_thread"]


class HeldLoop:
    """Blocks zarr's I/O loop thread until released: any hop to it would wait."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.holding = threading.Event()

    def __enter__(self) -> HeldLoop:
        def hold() -> None:
            self.holding.set()
            self.release.wait(60)

        _sync.io_loop().call_soon_threadsafe(hold)
        assert self.holding.wait(30), "the I/O loop never ran the holder"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()


def in_thread(fn: Callable[[], Any], deadline: float = 30.0) -> Any:
    """Run ``fn`` in a thread; its result, or a failure if it does not finish in time."""
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=main, daemon=True)
    t.start()
    t.join(deadline)
    assert not t.is_alive(), "the call waited on the (held) I/O loop"
    if "error" in out:
        raise out["error"]
    return out.get("value")
