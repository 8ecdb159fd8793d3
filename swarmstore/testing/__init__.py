"""Test helpers other issues and users reuse: fault injection and a local S3 server."""

from swarmstore.testing._faulty import Faults, FaultyStore, flip_byte
from swarmstore.testing._moto import S3Endpoint, free_port, moto_server, s3_storage_options

__all__ = [
    "Faults",
    "FaultyStore",
    "S3Endpoint",
    "flip_byte",
    "free_port",
    "moto_server",
    "s3_storage_options",
]
