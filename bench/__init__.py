"""zq benchmarks: ``python -m zq.bench`` (or ``zq bench``) measures a real local cluster.

Entry point: :func:`bench.cli.main` (``main(argv: list[str] | None = None) -> int``).

Modules:

* ``cli``        argument parsing, the run plan, the printed table, ``--json``
* ``zqbench``    zq measurements against a :class:`zq.nodes.local.LocalCluster`
* ``baselines``  ``concurrent.futures.ProcessPoolExecutor`` in the same run
* ``raw``        the bare pyzmq ventilator -> worker -> sink ceiling (and a 4-hop latency floor)
* ``peers``      dask / ray / ipyparallel when importable (each in a subprocess)
* ``profile``    ``python -m zq.bench.profile``: py-spy on every zq process during a submit loop
* ``workloads``  the task functions (importable by workers)
* ``util``       timing, /proc readers, versions, host, progress
"""
