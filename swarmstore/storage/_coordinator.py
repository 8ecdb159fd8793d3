"""What the read, write, create, repair and hint modules need of the store that runs them.

Those modules are functions over a coordinator: :class:`~swarmstore.storage.ReplicatedStore`
is the one there is, and it imports them. They name it by this protocol instead of by its
class, so the store depends on them and they depend only on this leaf: no import circle
(``tests/test_imports.py``), and what each may touch of the store is written down here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Coroutine, Iterable, Sequence

    from swarmstore.errors import QuorumError
    from swarmstore.network import TransferRouter
    from swarmstore.storage._fragments import Coding
    from swarmstore.storage._hints import HintLog
    from swarmstore.storage._integrity import Version
    from swarmstore.storage._node import Node

__all__ = ["Coordinator"]


class Coordinator(Protocol):
    """A store coordinating reads and writes over replica nodes (``ReplicatedStore``)."""

    nodes: list[Node]
    replicas: int
    write_quorum: int
    read_quorum: int
    read_repair: bool
    min_block: int
    create_patience: float
    router: TransferRouter
    hints: HintLog
    hints_replayed: int
    writer: int
    _by_name: dict[str, Node]
    _replaying: set[str]
    _repairing: set[str]
    _grace_cap: float
    node_timeout: float

    def targets(self, key: str) -> list[Node]: ...

    def coding_for(self, key: str) -> Coding | None: ...

    def _ranked(self, key: str) -> tuple[tuple[Node, ...], tuple[Node, ...]]: ...

    def quorums(self, targets: int) -> tuple[int, int]: ...

    def next_version(self, key: str, seen: Iterable[Version]) -> Version: ...

    def grace(self, elapsed: float) -> float: ...

    @staticmethod
    def _reraise_bugs(results: Iterable[object]) -> None: ...

    def _quorum_error(
        self, key: str, op: str, acked: int, needed: int, failures: dict[Node, BaseException]
    ) -> QuorumError: ...

    async def _fetch(
        self, nodes: Sequence[Node], attempt: Any, key: str, nbytes: int | None = None
    ) -> tuple[Node | None, Any, dict[Node, BaseException]]: ...

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def _hold(self, task: asyncio.Future[Any]) -> asyncio.Future[Any]: ...

    def _late_outcome(self, node: Node, key: str, version: Version, task: Any) -> None: ...

    async def replay_hints(self, *, scan: bool = True) -> int: ...

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...
