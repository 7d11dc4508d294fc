"""Reading input files, shared by every layer: `ingest` opens a file by format, numbers
its rows, validates them into examples or rejects with reasons, and keeps the lineage.

A leaf package: it imports nothing else of `rlhf_jax`, so the feedback layer (annotation
logs) and the data layer (training files) both import it without a cycle (see `ingest`).
"""
