"""Pretraining: schedules, FLOP counts, the trainer, checkpoints and run configs."""
