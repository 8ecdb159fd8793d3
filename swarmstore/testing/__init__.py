"""Test helpers other issues and users reuse: fault injection and a local S3 server.

Imports: any room (it builds faulty stores, nodes and hosts around them); nothing in the
library imports it, except the demo, which runs its moto server.
"""

from swarmstore.testing._faults import Faults, flip_byte
from swarmstore.testing._faulty import FaultyStore
from swarmstore.testing._moto import S3Endpoint, free_port, moto_server, s3_storage_options
from swarmstore.testing._requestlog import RequestLog

__all__ = [
    "Faults",
    "FaultyStore",
    "RequestLog",
    "S3Endpoint",
    "flip_byte",
    "free_port",
    "moto_server",
    "s3_storage_options",
]
