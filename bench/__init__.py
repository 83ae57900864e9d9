"""Benchmark of polyplug_isolated against in-process calls and the C floor.

Run from the repository root: ``python -m bench`` (full, about 1-2 minutes),
``python -m bench --quick`` (seconds on a quiet machine, the CI smoke test), ``--json PATH``,
``--plot PATH``; ``python -m bench --help`` lists the rest. Needs the
``bench`` extra (hdrhistogram; rich and matplotlib are optional).

Modules: ``_runner`` (the steps, the comparisons behind the targets, the
result document), ``_rounds`` (alternating rounds and the verdict rules),
``_load`` (what else used the machine: disturbed rounds), ``_measure``
(timing loops and histograms, shared with the subprocesses), ``_inproc`` (the
in-process baselines, each a subprocess serving rounds), ``_shim`` (builds
``shim.c``, the baseline's C half), ``_floor`` (builds and runs ``floor.c``),
``_cases`` (the isolated runtime, threads, payloads, Pipe, idle worker),
``_report`` (table, JSON, plot). ``switch_floor.c`` stands alone: what the two context
switches of a call between bundles on two CPUs cost (its header has the command).
"""
