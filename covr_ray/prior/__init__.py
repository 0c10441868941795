"""The VLM prior: action codecs, prompts, the batching Ray service, its backends, adapters and the
env-side client wrapper. Import submodules directly (``from covr_ray.prior.codecs import get_codec``);
this package imports nothing heavy."""
