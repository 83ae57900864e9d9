"""Benchmark of polyplug_isolated against in-process calls and the C floor.

Run from the repository root: ``python -m bench`` (full, about 1-2 minutes),
``python -m bench --quick`` (under 20 s, the CI smoke test), ``--json PATH``,
``--plot PATH``; ``python -m bench --help`` lists the rest. Needs the
``bench`` extra (hdrhistogram; rich and matplotlib are optional).

Modules: ``_measure`` (timing loops and histograms, shared with the
subprocesses), ``_inproc`` (the in-process baselines, each run in its own
subprocess), ``_floor`` (builds and runs ``floor.c``), ``_cases`` (the
isolated runtime, threads, payloads, Pipe, idle worker), ``_report`` (table,
JSON, plot).
"""
