"""Runtime of an exported COVR policy: no Ray, no RLlib."""
