"""The training loop, checkpoints, logging and distributed setup shared by the entry points."""
