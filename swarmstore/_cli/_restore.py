"""Copy one checkpoint into a plain zarr store, all or nothing.

- A target that already holds keys is refused unless ``force``; with ``force`` the whole
  step is verified first, then the target is cleared and written.
- Every object is verified as it is read (the checkpoint's ManifestStore checks its
  xxh3-128); on any failure the keys written so far are deleted, so a failed restore
  leaves the target as empty as it was.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore._cli import _output
from swarmstore._cli._exit import BAD_INPUT, CLIError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["restore"]

_CONCURRENCY = 16


async def _has_keys(store: Any) -> bool:
    async for _ in store.list():
        return True
    return False


async def _copy(
    src: Any, dest: Any, written: list[str], progress: Callable[..., Any] | None
) -> int:
    from zarr.core.buffer import default_buffer_prototype

    keys = [k async for k in src.list()]
    sem = asyncio.Semaphore(_CONCURRENCY)
    done = 0
    failed = False

    async def one(key: str) -> None:
        nonlocal done, failed
        async with sem:
            if failed:
                return
            try:
                value = await src.get(key, default_buffer_prototype())
                if value is not None and not failed:
                    written.append(key)
                    await dest.set(key, value)
            except BaseException:
                failed = True  # start nothing new; what is in flight finishes, then undo
                raise
            done += 1
            if progress is not None:
                progress(done, len(keys))

    results = await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return len(keys)


async def _undo(dest: Any, written: list[str]) -> None:
    for key in written:
        try:
            await dest.delete(key)
        except FileNotFoundError:
            pass


async def _restore(mgr: Any, step: int, src: Any, dest: Any, force: bool, progress: Any) -> int:
    if await _has_keys(dest):
        if not force:
            raise CLIError(
                "the --to target already holds data; restore into an empty place, or add "
                "--force to replace what is there",
                BAD_INPUT,
            )
        await asyncio.to_thread(mgr.verify_step, step)  # damage found before anything changes
        await dest.delete_dir("")
    written: list[str] = []
    try:
        return await _copy(src, dest, written, progress)
    except BaseException:
        await asyncio.shield(_undo(dest, written))
        raise


def restore(mgr: Any, step: int, dest: Any, *, force: bool, quiet: bool) -> int:
    """Copy checkpoint ``step`` of ``mgr`` into ``dest``; the number of keys copied."""
    src = mgr.open_store(step)  # reads the manifest (zarr's sync API: not on the I/O loop)
    return _output.with_progress(
        quiet, "restore", lambda cb: _restore(mgr, step, src, dest, force, cb)
    )
