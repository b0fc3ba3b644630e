"""Job configuration: a YAML file plus command-line overrides (the command line wins), validated up front.

The YAML holds job keys (``input``, ``backend``, ``batch``...) and the method's keys (``scales``, ``tta``,
``refine``, ``crop``, ``ensemble``, ``post``, ``selective``) side by side at the top level::

    input: s3://archive/photos
    prompts: s3://archive/prompts
    output: s3://archive/finedetail-out
    backend: seggpt-sam
    scales: [1, 2]
    tta: [identity, hflip]
    post: {radius: 4, eps: 0.001}

The backend's own defaults (``finedetail.presets.BACKEND_DEFAULTS``, each with the evidence it rests on) are applied
first, then a ``preset`` (``finedetail.presets``); the YAML and then the command line override them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from finedetail.config import PipelineConfig, config_from_dict, config_hash, config_to_dict
from finedetail.models.checkpoints import check_sha256_option

__all__ = ["BACKENDS", "JobConfig", "Resources", "job_config_from_dict", "load_yaml"]

BACKENDS = ("seggpt-sam", "classical", "proxy")
GPU_MODES = ("auto", "on", "off")
_PIPELINE_KEYS = {f.name for f in dataclasses.fields(PipelineConfig)}


@dataclass(frozen=True)
class Resources:
    """Where each stage runs and how big its actor pool may grow.

    ``*_gpus`` are fractions of one GPU per actor. Left unset (None), every model pool gets 1 / (number of model
    pools), so one actor of each pool fits on one GPU together; set explicitly, they are used as given (keep the
    fractions of pools that must share one GPU summing to <= 1). ``gpu``: "on" asks for GPUs (the autoscaler adds GPU
    nodes), "off" runs the model stages on CPU, "auto" asks for GPUs only if the cluster has some when the job starts
    (on an autoscaling cluster whose GPU workers start at zero, pass "on"). ``max_actors`` bounds each
    model pool (``ActorPoolStrategy(min_size=1, max_size=max_actors)``), ``fuse_actors`` the CPU fuse pool.

    ``chain``: "on" runs every step of the plan on a row in ONE actor pool (``job.stages.PlanStage`` with every step:
    one copy of each model per actor, no hand-offs between pools); "off" keeps one pool per stage as above; "auto"
    (default) chains when the model stages run on CPU, where a pool per stage only adds actor start-up and
    hand-offs that the CPUs pay for, and keeps the pools on GPUs, where they overlap and scale independently. With
    GPUs, a chained actor takes ``variant_gpus`` of a GPU (default a whole one).
    """

    gpu: str = "auto"
    coarse_gpus: float | None = None
    variant_gpus: float | None = None
    crop_gpus: float | None = None
    max_actors: int = 4
    fuse_actors: int = 2
    model_cpus: float | None = None
    batch_size: int = 4
    encode_batch: int = 4
    read_batch: int = 8
    chain: str = "auto"

    def __post_init__(self) -> None:
        if self.gpu not in GPU_MODES:
            raise ValueError(f"resources.gpu must be one of {GPU_MODES}, got {self.gpu=}")
        if self.chain not in GPU_MODES:
            raise ValueError(f"resources.chain must be one of {GPU_MODES}, got {self.chain=}")
        for name in ("coarse_gpus", "variant_gpus", "crop_gpus"):
            v = getattr(self, name)
            if v is not None and not (0 < v <= 1):
                raise ValueError(f"resources.{name} is a fraction of one GPU in (0, 1], got {name}={v}")
        for name in ("max_actors", "fuse_actors", "batch_size", "encode_batch", "read_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"resources.{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.model_cpus is not None and self.model_cpus <= 0:
            raise ValueError(f"resources.model_cpus must be > 0, got {self.model_cpus=}")


@dataclass(frozen=True)
class JobConfig:
    input: str
    output: str
    prompts: str | None = None
    coarse: str | None = None
    backend: str = "seggpt-sam"
    sam_checkpoint: str | None = None
    sam_model_type: str | None = None
    #: expected SHA-256 of the SAM checkpoint; None checks the official URLs against their pinned digests and
    #: nothing else; "skip" checks nothing (a file you trust whose digest differs)
    sam_sha256: str | None = None
    seggpt_checkpoint: str | None = None
    device: str | None = None
    limit: int | None = None
    max_pixels: int = 178_956_970
    overlays: bool = True
    classes: tuple[str, ...] = ("object",)
    preset: str | None = None
    max_tries: int = 3
    #: write instances/<key>.json per image (COCO-style) and, at the end, one dataset-level COCO file
    coco: bool = False
    #: rasters with more pixels than this are split into windows that flow through the stages as rows
    window_pixels: int = 16_000_000
    window: int = 2048
    window_overlap: int = 256
    #: 1-based band indices mapped to R, G, B for multi-band rasters (None: first three, or grey replicated)
    bands: tuple[int, ...] | None = None
    #: percentile stretch (low, high) applied to non-8-bit rasters
    stretch: tuple[float, float] = (2.0, 98.0)
    #: optional vector output of the mask for GIS users: "geojson" or "gpkg"
    vector: str | None = None
    vector_tolerance: float = 1.0
    #: keyword options for the backend's models, e.g. {"refiner_input_size": 512} for the classical backend
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    resources: Resources = field(default_factory=Resources)
    #: contents the outputs depend on (prompt bytes, weights' digests): ``job.fingerprint.fingerprint``, computed
    #: once by the driver (``with_fingerprint``) and carried to the workers; None = computed on first use
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not self.input:
            raise ValueError("input is required: pass --input URI (a local folder or s3://bucket/prefix)")
        if not self.output:
            raise ValueError("output is required: pass --output URI (a local folder or s3://bucket/prefix)")
        # Relative local paths are resolved here, in the process that builds the config (the driver): the workers of
        # an existing cluster run in the head's directory, not in the one the command was typed in.
        for name in ("input", "output", "prompts", "coarse", "sam_checkpoint", "seggpt_checkpoint"):
            value = getattr(self, name)
            if value is not None and _is_local_path(value, hub_ids=name == "seggpt_checkpoint",
                                                    names=_SAM_NAMES if name == "sam_checkpoint" else ()):
                object.__setattr__(self, name, os.path.abspath(os.path.expanduser(value)))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend=}")
        if self.prompts is None and self.coarse is None:
            raise ValueError("say what to segment: pass --prompts URI (images/ + masks/) or --coarse URI (masks)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit=}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels=}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries=}")
        check_sha256_option(self.sam_sha256)
        if self.sam_model_type not in (None, "vit_h", "vit_l", "vit_b"):
            raise ValueError(f"sam_model_type must be vit_h, vit_l or vit_b, got {self.sam_model_type=}")
        if not self.classes:
            raise ValueError("classes must name at least one class")
        if self.window < 64 or not (0 <= self.window_overlap < self.window // 2):
            raise ValueError(f"need window >= 64 and 0 <= window_overlap < window/2, got {self.window=}, "
                             f"{self.window_overlap=}")
        if self.window_pixels < self.window * self.window:
            raise ValueError(f"window_pixels must be >= window², got {self.window_pixels=}, {self.window=}")
        if self.vector not in (None, "geojson", "gpkg"):
            raise ValueError(f"vector must be geojson, gpkg or null, got {self.vector=}")
        if self.bands is not None and (len(self.bands) != 3 or min(self.bands) < 1):
            raise ValueError(f"bands must be three 1-based band indices for R, G, B, got {self.bands=}")
        if not (0 <= self.stretch[0] < self.stretch[1] <= 100):
            raise ValueError(f"stretch must be percentiles 0 <= low < high <= 100, got {self.stretch=}")

    @property
    def config_hash(self) -> str:
        """What decides an output's pixels: the method's config, the backend, the classes and the contents of the
        prompts and weights (``fingerprint``; never how their paths are spelled). Resource flags are left out."""
        digest = self.fingerprint or self.__dict__.get("_fingerprint")
        if digest is None:
            from job.fingerprint import fingerprint

            digest = fingerprint(self)
            object.__setattr__(self, "_fingerprint", digest)  # a cache, not a field: replace() recomputes it
        return config_hash(self.pipeline, self.backend, self.sam_model_type, list(self.classes),
                           dict(self.backend_options), digest)

    def with_fingerprint(self) -> "JobConfig":
        """This config with ``fingerprint`` computed now (reads the prompts, hashes or asks for the weights' digests:
        call once, in the driver)."""
        from job.fingerprint import fingerprint

        return dataclasses.replace(self, fingerprint=fingerprint(self))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("pipeline", "resources", "fingerprint")}
        d["classes"] = list(self.classes)
        d["backend_options"] = dict(self.backend_options)
        d.update(config_to_dict(self.pipeline))
        d["resources"] = dataclasses.asdict(self.resources)
        return d


#: ``--sam-checkpoint`` may name the official weights by model type (``finedetail.models.checkpoints.load_sam``)
_SAM_NAMES = ("vit_h", "vit_l", "vit_b")


def _is_local_path(value: str, *, hub_ids: bool = False, names: tuple[str, ...] = ()) -> bool:
    """Whether ``value`` names a local file or folder (no URI scheme such as s3:// or https://; ``file://`` URIs are
    absolute already). ``hub_ids``: a bare ``owner/name`` is a Hugging Face Hub id unless it starts like a path or
    is an existing folder (the rule of ``load_seggpt``). ``names``: values that are names, not paths."""
    if not isinstance(value, str) or not value or value in names:
        return False
    scheme = urlsplit(value).scheme
    if scheme and not (len(scheme) == 1 and os.name == "nt"):
        return False
    if hub_ids:
        return value.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(value))
    return True


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def job_config_from_dict(values: Mapping[str, Any]) -> JobConfig:
    """Flat job keys + pipeline keys (+ ``resources`` mapping) -> JobConfig; unknown keys raise naming the key."""
    from finedetail.presets import backend_defaults, preset_dict

    values = dict(values)
    preset = values.get("preset")
    # backend defaults < preset < YAML < command line, key by key
    base = backend_defaults(str(values.get("backend", JobConfig.backend)))
    if preset:
        base = _merge(base, preset_dict(preset))
    values = _merge(base, values)
    job_names = {f.name for f in dataclasses.fields(JobConfig)} - {"pipeline", "resources", "fingerprint"}
    pipeline_values = {k: values.pop(k) for k in list(values) if k in _PIPELINE_KEYS}
    res_values = values.pop("resources", {}) or {}
    unknown = sorted(set(values) - job_names)
    if unknown:
        valid = sorted(job_names | _PIPELINE_KEYS | {"resources"})
        raise ValueError(f"unknown config key {unknown[0]!r}; valid keys: {valid}")
    res_names = {f.name for f in dataclasses.fields(Resources)}
    bad = sorted(set(res_values) - res_names)
    if bad:
        raise ValueError(f"unknown config key 'resources.{bad[0]}'; valid keys here: {sorted(res_names)}")
    if "classes" in values and isinstance(values["classes"], (list, tuple)):
        values["classes"] = tuple(str(c) for c in values["classes"])
    for key in ("bands", "stretch"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return JobConfig(pipeline=config_from_dict(pipeline_values), resources=Resources(**res_values), **values)


def load_yaml(text: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"a config file must hold a mapping of keys, got {type(data).__name__}")
    return data
