"""Which D_f rows teach the VLM, and how much: the kept set of a fine-tune round.

``critic`` (the learner's critic completes D_f: truncated returns bootstrapped, Q-values for the
``eddf.signal=q_value`` ablation), ``eddf`` (entropy-driven dynamic filtering), ``ralw`` (return-aware
loss weights), ``kept`` (D_f -> EDDF -> RALW -> the round's kept shard set). See docs/finetune.md.
"""
