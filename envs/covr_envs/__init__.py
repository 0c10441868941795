"""COVR-Ray simulators: DMControl from pixels, embedded driving (highway-env), CARLA, any image Gymnasium env.

    from covr_envs import make_env, get_env_spec, list_envs
    env = make_env("dmc:cartpole-swingup", seed=0)      # obs (9, 84, 84) uint8, actions [-1, 1]^1
    frame = env.render()                                 # (84, 84, 3) uint8: what the VLM sees
    spec = get_env_spec("driving-hw")                    # prompt, action_description, codec, action_dim

Importing this package imports no simulator; each family imports its own when an env is made.
"""

from covr_envs.registry import (EnvSpec, get_env_spec, list_envs, make_env, make_env_from_config, register_env,
                                resolve_env_spec)

__all__ = ["EnvSpec", "get_env_spec", "list_envs", "make_env", "make_env_from_config", "register_env",
           "resolve_env_spec"]
