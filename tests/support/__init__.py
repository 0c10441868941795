"""Helpers the test files share, one module per concern (imported as ``support.<module>``: pytest puts
``tests/`` on ``sys.path``, as for conftest.py). Fixtures several files use live in conftest.py instead.

- ``numerics``: rounding-error bounds for comparisons of floating-point results computed in another order;
- ``dot_env``: the RL tests' tiny pixel env, its prior-emitting wrapper and their RLlib env creator;
- ``learner``: local SAC learners on that env and random-action replay collection;
- ``policies``: a small real policy network and a run directory holding one;
- ``prior``: a frame-counting env and a scripted prior client;
- ``carla_fake``: a fake CARLA server behind the real ``carla`` client's value types;
- ``df``: frame-stacked episodes of random frames for the D_f scoring tests;
- ``ray_local``: a fresh local Ray in its own temp dir.
"""
