"""jailshell's benchmarks: the engine side by side with the tools people know.

`python -m bench` (or `bench/run`) measures everything in one run on this
machine and writes the results table into bench/README.md; `--quick` runs each
benchmark a couple of times only, to prove it still works (CI).
"""
