"""COVR-Ray: Collaborative Optimization of VLMs and RL agents for visual control, on Ray.

Kept import-light on purpose: importing ``covr_ray`` loads neither torch nor ray.
"""

__version__ = "0.1.0"
