"""Node backends (kept for imports of the old module path): local, memory, S3."""

from swarmstore.storage._local import XATTR, LocalNode
from swarmstore.storage._memory import MemoryNode
from swarmstore.storage._s3 import S3_META, S3Node

__all__ = ["S3_META", "XATTR", "LocalNode", "MemoryNode", "S3Node"]
