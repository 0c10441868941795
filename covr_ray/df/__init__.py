"""D_f, the RL agent's filter buffer: every finished episode as ``(o_i, a_r_i, g_i)`` rows on disk.

``shards`` (the Parquet shard format, schema v2, and atomic shard sets: the contract every reader and
writer of fine-tune rows shares), ``writer`` (:class:`~covr_ray.df.writer.FilterBuffer`: episodes ->
return-to-go -> shards; :func:`~covr_ray.df.writer.delete_consumed`: clearing after a round),
``recorder`` (the RLlib callback that writes each env runner's finished episodes). See docs/finetune.md.
"""
