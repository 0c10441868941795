"""LoRA fine-tuning of the VLM on kept sets, apart from the Ray actor that hosts it.

``data`` (kept rows -> prompt, answer tokens, weight; batches), ``loss`` (the RALW loss, answer accuracy),
``trainer`` (:class:`~covr_ray.lora.trainer.LoRATrainer`: one adapter trained round after round),
``actor`` (the trainer as a Ray actor, bounded waits), ``versions`` (the adapter directory's contract,
shared with the prior service), ``random_adapter`` (random adapters for hot-swap benchmarks and tests).
Torch is imported by ``trainer``, ``loss`` and ``random_adapter`` only. See docs/finetune.md.
"""
