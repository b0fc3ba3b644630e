"""The Ray job: the `python -m job` CLI, its driver, operators, stages and output layout (README, Architecture)."""
