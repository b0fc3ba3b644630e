"""The benchmarks, `python -m job.bench NAME` (`--help` lists them): numbers printed, never timed tests."""
