"""Names of the batch columns and per-step info keys COVR adds, in one place.

RLlib's own columns live in ``ray.rllib.core.columns.Columns``; these are ours. Env wrappers write the
``INFO_*`` keys into each step's ``info``; a learner connector turns them into the numeric ``PRIOR_*``
columns of the train batch; the fine-tune path writes the D_f columns into Arrow shards.
"""

from __future__ import annotations

# --- actions ------------------------------------------------------------------------------------------
#: Every action COVR stores (a_r, a_v) is in the normalised space [-1, 1]. Values beyond the bounds by at
#: most this much are float32 round-off of ``tanh`` / the codecs' arithmetic: they are accepted and
#: clipped; anything further out is refused with a typed error naming it.
ACTION_BOUND_TOLERANCE = 1e-4

# --- train batch columns (learner side) -------------------------------------------------------------
#: float32 (B, action_dim): the VLM's action a_v in the policy's normalised action space [-1, 1].
PRIOR_ACTION = "prior_action"
#: float32 (B,): 1.0 where the sample carries a valid prior, 0.0 where it carries none.
PRIOR_MASK = "prior_mask"

# --- per-step info keys (env side) -------------------------------------------------------------------
#: int64: globally unique id of this transition; lets a prior that arrives late find its step.
INFO_STEP_ID = "covr_step_id"
#: list[float] (action_dim,): prior valid for this step; absent or all-zero when INFO_PRIOR_MASK is 0.
INFO_PRIOR_ACTION = "prior_action"
#: float: 1.0 when INFO_PRIOR_ACTION is valid for this step.
INFO_PRIOR_MASK = "prior_mask"
#: list[tuple[int, list[float], int]]: priors that arrived since the last step for earlier steps, as
#: (step id, a_v, adapter version; -1 = base model) triples. Readers also accept (step id, a_v) pairs
#: from older code and then take version -1.
INFO_PRIOR_LATE = "prior_late"
#: int: adapter version of the VLM that produced the prior (-1 = base model, no adapter).
INFO_PRIOR_VERSION = "prior_adapter_version"

# --- D_f / shard columns (fine-tune side) ------------------------------------------------------------
#: binary: the single RGB frame the VLM sees, PNG-encoded.
FRAME_PNG = "frame_png"
#: float32 list (action_dim,): the RL agent's action a_r in [-1, 1].
RL_ACTION = "rl_action"
#: float32: discounted return-to-go g_i from this step to the episode's end.
RETURN_TO_GO = "return_to_go"
#: float32: immediate reward r_i (EDDF ablation `signal=reward`).
REWARD = "reward"
#: float32: Q(o_i, a_r_i), NaN when not provided (EDDF ablation `signal=q_value`; see select.critic).
Q_VALUE = "q_value"
#: float32: policy entropy estimate when the episode was collected.
ENTROPY = "entropy"
#: string: episode id; int32: step index within the episode.
EPISODE_ID = "episode_id"
STEP_INDEX = "step_index"
#: float32: RALW sample weight w_b written beside the kept samples.
SAMPLE_WEIGHT = "sample_weight"
#: bool: the step's action was a uniform-random warm-up action (``sac.learning_starts``); such rows are
#: kept in D_f (their frames rebuild later observations' stacks) but never selected for fine-tuning.
WARMUP = "warmup"
#: float32: the critic's value V(o_T) of the observation after the episode's last step, already added to
#: ``return_to_go`` as ``gamma^(T-i) V(o_T)``; 0.0 for a true termination; NaN for a time-limit truncation
#: not bootstrapped yet (the round fills it, see select.critic).
BOOTSTRAP_VALUE = "bootstrap_value"
#: binary (nullable): PNG of the newest frame of o_T, on the last row of a truncated episode only (the
#: observation the bootstrap value is computed on); null everywhere else.
FINAL_FRAME_PNG = "final_frame_png"

# --- episode extra model outputs (env runner side) -----------------------------------------------------
#: float32 per step: 1.0 where the module acted uniformly at random (warm-up, ``sac.learning_starts``; see
#: covr_ray.rl.rl_module.PixelSACModule._forward_exploration), 0.0 where the policy acted.
EXTRA_WARMUP = "covr_warmup"
