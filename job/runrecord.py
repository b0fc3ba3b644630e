"""What a run was: ``run.json`` and ``config.yaml`` written next to its outputs when it starts.

``config.yaml`` is the run's resolved config (backend defaults, ``--preset``, the YAML file and the command line
already merged: every key with the value the run used), so ``python -m job run --config OUTPUT/config.yaml`` runs
the same job again. ``run.json`` holds the same config plus what the config cannot say: the finedetail version, the
command line, the run id, when it started and the config hash its manifest rows carry. Credentials are redacted
(``finedetail.redaction.redact``) from every string in both: give S3 credentials the AWS way, never in the config.
Each run replaces both files (the latest run's; each manifest row carries its own config hash).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from job import io as jio
from job.config import JobConfig

__all__ = ["CONFIG_KEY", "RUN_KEY", "read_run_record", "run_record", "write_run_record"]

RUN_KEY = "run.json"
CONFIG_KEY = "config.yaml"


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return jio.redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def resolved_config(cfg: JobConfig) -> dict[str, Any]:
    """The config as plain YAML/JSON values (tuples as lists), credentials redacted; ``job_config_from_dict`` of it
    builds the same config again (its internal ``fingerprint`` aside, which the run recomputes)."""
    return _redacted(json.loads(json.dumps(cfg.to_dict())))


def run_record(cfg: JobConfig, run_id: str, *, argv: list[str] | None = None) -> dict[str, Any]:
    """The content of ``run.json``."""
    from finedetail import __version__

    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].replace("\\", "/").endswith("job/__main__.py"):
        argv = ["python", "-m", "job", *argv[1:]]
    return {"finedetail_version": __version__, "run_id": run_id,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": _redacted(argv),
            "python": sys.version.split()[0], "config_hash": cfg.config_hash, "config": resolved_config(cfg)}


def write_run_record(storage: jio.Storage, cfg: JobConfig, run_id: str, *, argv: list[str] | None = None
                     ) -> dict[str, Any]:
    """Write ``run.json`` and ``config.yaml`` at the root of the output; returns the record."""
    import yaml

    record = run_record(cfg, run_id, argv=argv)
    jio.write_bytes_atomic(storage, RUN_KEY, (json.dumps(record, indent=2) + "\n").encode())
    head = (f"# The resolved config of run {run_id} (finedetail {record['finedetail_version']}, config hash "
            f"{record['config_hash']}).\n# Run it again: python -m job run --config {CONFIG_KEY}\n")
    body = yaml.safe_dump(record["config"], sort_keys=False, allow_unicode=True)
    jio.write_bytes_atomic(storage, CONFIG_KEY, (head + body).encode())
    return record


def read_run_record(storage: jio.Storage) -> dict[str, Any] | None:
    """``run.json`` of an output, or None when it has none (written by an older version) or it is unreadable."""
    try:
        return json.loads(jio.read_bytes(storage, RUN_KEY))
    except (jio.StorageError, OSError, ValueError):
        return None
