"""Pieces of the stage trainer (`megaeeve/train.py`): run config, engine, data loop, checkpoints, signals, metrics."""
