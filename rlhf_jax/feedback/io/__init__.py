"""Reading and writing: annotation files in (`records`: JSON Lines, CSV, Parquet and
crowd CSV, with validation, rejects and lineage) and truth files for evaluation."""
