"""``covr sweep SPEC.yaml``: a grid of named variants x seeds of one preset, each a ``covr train`` run, on
this machine or as Ray jobs; resumable, with a progress view; ``covr report`` labels its groups by variant.

- :mod:`~covr_ray.sweep.spec`: the spec format and its validation (:class:`~covr_ray.sweep.spec.SweepSpec`);
- :mod:`~covr_ray.sweep.state`: a run's status from its directory alone (finished, crashed, running),
  progress from its ``metrics.csv``, and ``sweep.json``;
- :mod:`~covr_ray.sweep.backends`: ``covr train`` as local subprocesses or as Ray jobs;
- :mod:`~covr_ray.sweep.runner`: planning and running the sweep, the progress lines;
- :mod:`~covr_ray.sweep.vlm_stage`: the optional VLM evaluation step after each run (spec ``vlm_eval``).

This package imports nothing at import time beyond its own docstring (``covr report`` reads
``sweep.json`` through :mod:`~covr_ray.sweep.state`, which imports no Ray).
"""
