"""Jobs and studies built on the library: `experiments.pipeline` (the job of `make run`),
`experiments.demo` (the objectives table) and the scripts that reproduce the studies in
experiments/README.md. A package so that scripts/ and tests import the jobs by name; the
scripts insert the repository root into `sys.path`, so a fresh clone needs no install."""
