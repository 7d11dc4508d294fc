"""Tests of `rlhf_jax.losses`.

A package so that pytest imports `tests/losses/test_registry.py` as
`losses.test_registry`, apart from `tests/test_registry.py` (the shared helper's tests):
both mirror a module named `registry.py`, and two test modules of one basename outside
packages collide under pytest's default import mode.
"""
