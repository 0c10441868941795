"""ConnectorV2 pieces of the pixel SAC pipeline.

- :class:`PriorColumns` (learner connector): turns each transition's step info into the numeric train
  batch columns ``prior_action (B, A)`` float32 and ``prior_mask (B,)`` float32
  (:mod:`covr_ray.columns`). RLlib's SAC does not put infos into the train batch, so without this piece
  the priors never reach the loss. The step info of transition ``t`` is the episode's info ``t + 1``
  (returned by ``step(a_t)`` together with ``o_t+1``); samples without a prior get mask 0 and a zero
  action. Inside the learner the connector's input spaces are None: the action dimension comes from
  the episode's action space (or the module's). Prior ageing happens before this piece: the replay
  writes mask 0 into the sampled step info of a prior too old for the serving adapter.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import gymnasium as gym
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModule

from covr_ray.columns import PRIOR_ACTION, PRIOR_MASK
from covr_ray.errors import LearnerError
from covr_ray.rl.episode_replay import parse_step_infos


def _action_dim(sa_episode: Any, rl_module: RLModule) -> int:
    space = sa_episode.action_space
    if space is None:
        module = rl_module[sa_episode.module_id or DEFAULT_MODULE_ID] if hasattr(rl_module, "keys") else rl_module
        space = module.action_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise LearnerError(f"prior columns need a 1-D Box action space, got {space!r}")
    return int(space.shape[0])


class PriorColumns(ConnectorV2):
    """Learner connector: step infos -> ``prior_action`` / ``prior_mask`` batch columns."""

    def __call__(self, *, rl_module: RLModule, batch: Dict[str, Any], episodes: List[Any],
                 explore: Optional[bool] = None, shared_data: Optional[dict] = None, **kwargs: Any) -> Any:
        if PRIOR_ACTION in batch and PRIOR_MASK in batch:
            return batch
        for sa_episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            n = len(sa_episode)
            infos = list(sa_episode.get_infos(slice(1, n + 1)))
            _, actions, masks, _, _ = parse_step_infos(infos, _action_dim(sa_episode, rl_module))
            self.add_n_batch_items(batch, PRIOR_ACTION, actions, num_items=n, single_agent_episode=sa_episode)
            self.add_n_batch_items(batch, PRIOR_MASK, masks, num_items=n, single_agent_episode=sa_episode)
        return batch
