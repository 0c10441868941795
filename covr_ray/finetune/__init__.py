"""The RL-tuned VLM path: D_f buffer, EDDF filter, RALW weights, Parquet shards, schedule, LoRA trainer.

Modules (import what you need; torch is imported only by ``lora_trainer``):
``buffer`` (D_f), ``shards`` (schema v1 I/O), ``eddf``, ``ralw``, ``round_data`` (D_f -> kept set),
``schedule``, ``lora_data`` (kept rows -> batches), ``lora_trainer`` (trainer and Ray actor),
``bench`` (``covr bench lora``). See docs/finetune.md.
"""
