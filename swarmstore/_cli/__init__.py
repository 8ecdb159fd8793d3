"""The ``swarmstore`` command's implementation (the entry point is :mod:`swarmstore.cli`).

- ``_parser``: the argument parser; imports nothing beyond the standard library, so
  ``swarmstore --help`` answers without importing dask or zarr.
- ``_exit``: exit codes and the classification of every error into one line and a code.
- ``_spec``: stores described by ``--node``/``--config``/``--store``, every option checked.
- ``_maintenance``, ``_checkpoint``, ``_cluster``: the commands; ``_output``: tables, JSON.

May import every swarmstore capability (lazily, inside the commands); nothing in the library
imports it.
"""
