"""COVR-Ray simulators: DMControl, embedded driving, CARLA, any image Gymnasium env."""
