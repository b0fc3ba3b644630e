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
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from finedetail.config import REFINERS, PipelineConfig, config_from_dict, config_hash, config_to_dict, unknown_key_error
from finedetail.knobs import knob
from finedetail.models.weights import check_sha256_option

__all__ = ["BACKENDS", "JobConfig", "Resources", "job_config_from_dict", "load_yaml"]

BACKENDS = ("seggpt-sam", "classical", "proxy")
GPU_MODES = ("auto", "on", "off")
_PIPELINE_KEYS = {f.name for f in dataclasses.fields(PipelineConfig)}


@dataclass(frozen=True)
class Resources:
    """Where each operator runs and how big its actor pool may grow (README, Architecture, Operators).

    ``*_gpus`` are fractions of one GPU per actor. Left unset (None), every model pool gets 1 / (number of model
    pools: coarse and refiner), so one actor of each pool fits on one GPU together; set explicitly, they are used as
    given (keep the fractions of pools that must share one GPU summing to <= 1). ``gpu``: "on" asks for GPUs (the
    autoscaler adds GPU nodes), "off" runs the model operators on CPU, "auto" asks for GPUs only if the cluster has
    some when the job starts (on an autoscaling cluster whose GPU workers start at zero, pass "on"). ``max_actors``
    bounds each model pool (``ActorPoolStrategy(min_size=1, max_size=max_actors)``).

    ``chain``: "on" runs every model step of the plan on a row in ONE actor pool (``job.stages.PlanStage`` with every
    model step: one copy of each model per actor, no hand-off between pools); "off" keeps a pool per model as above;
    "auto" (default) chains when the models run on CPU, where a second pool only adds actor start-up and a hand-off
    that the CPUs pay for, and keeps the pools on GPUs, where they overlap and scale independently. With GPUs, a
    chained actor takes ``refiner_gpus`` of a GPU (default a whole one). The fuse step runs in the write tasks.
    """

    gpu: str = knob("auto", "'on' asks for GPUs (the autoscaler adds GPU nodes), 'off' runs the models on CPU, "
                            "'auto' asks for GPUs only if the cluster has some when the job starts",
                    range=f"one of: {', '.join(GPU_MODES)}")
    coarse_gpus: float | None = knob(None, "fraction of a GPU per coarse actor; null: 1 / (number of model pools)",
                                     range="in (0, 1] or null")
    refiner_gpus: float | None = knob(None, "fraction of a GPU per refiner actor (refine and crop steps; per "
                                            "chained actor with chain; null: 1 / (number of model pools), a whole "
                                            "GPU when chained)", range="in (0, 1] or null")
    max_actors: int = knob(4, "upper bound of each model actor pool (pools start at 1 actor)", range=">= 1")
    model_cpus: float | None = knob(None, "CPUs per model actor; null: at most half a CPU on GPU clusters, a fair "
                                          "share of the CPUs on CPU-only ones", range="> 0 or null")
    batch_size: int = knob(4, "rows per batch of the model and write operators (and SegGPT's batch)",
                           range=">= 1")
    encode_batch: int = knob(4, "images per SAM encoder forward (1 is faster on CPU)", range=">= 1",
                             backends="seggpt-sam")
    read_batch: int = knob(8, "inputs per read + decode task", range=">= 1")
    chain: str = knob("auto", "'on' runs every model step in ONE actor pool, 'off' one pool per model (coarse, "
                              "refiner), 'auto' chains when the models run on CPU",
                      range=f"one of: {', '.join(GPU_MODES)}")

    def __post_init__(self) -> None:
        if self.gpu not in GPU_MODES:
            raise ValueError(f"resources.gpu must be one of {GPU_MODES}, got {self.gpu=}")
        if self.chain not in GPU_MODES:
            raise ValueError(f"resources.chain must be one of {GPU_MODES}, got {self.chain=}")
        for name in ("coarse_gpus", "refiner_gpus"):
            v = getattr(self, name)
            if v is not None and not (0 < v <= 1):
                raise ValueError(f"resources.{name} is a fraction of one GPU in (0, 1], got {name}={v}")
        for name in ("max_actors", "batch_size", "encode_batch", "read_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"resources.{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.model_cpus is not None and self.model_cpus <= 0:
            raise ValueError(f"resources.model_cpus must be > 0, got {self.model_cpus=}")


@dataclass(frozen=True)
class JobConfig:
    """One run of the job: its data, models, method (``pipeline``) and resources. Every key is described by
    ``python -m job config --doc`` (README, "Configuration reference")."""

    input: str = knob(doc="input images: a local folder or s3://bucket/prefix")
    output: str = knob(doc="where masks/, probs/, rle/, overlays/ and manifest/ go: a local folder or s3://")
    prompts: str | None = knob(None, "prompt pairs: images/NAME.<ext> + masks/NAME.png under this folder or s3:// "
                                     "prefix", range="a folder or s3:// URI; prompts or coarse is required")
    coarse: str | None = knob(None, "coarse masks made elsewhere (same relative keys as the inputs, .png); they "
                                    "replace the coarse step", range="a folder or s3:// URI")
    backend: str = knob("seggpt-sam", "the models: 'seggpt-sam' (needs weights), 'classical' (weight-free, CPU, "
                                      "lower quality), 'proxy' (benchmarks only)",
                        range=f"one of: {', '.join(BACKENDS)}")
    refiner: str = knob("sam", "the promptable refiner: 'sam' (segment-anything), 'sam-hq' (HQ-SAM, finer "
                               "boundaries) or 'sam2' (SAM 2.1, faster encoder); README, Choosing the refiner",
                        range=f"one of: {', '.join(REFINERS)}", backends="seggpt-sam")
    sam_checkpoint: str | None = knob(None, "the refiner's weights. sam: a .pth (local path, s3:// or https://; "
                                            "null: the official URL of sam_model_type); sam-hq / sam2: a "
                                            "transformers directory, s3:// prefix or Hub id (null: "
                                            "syscv-community/sam-hq-vit-huge by sam_model_type, "
                                            "facebook/sam2.1-hiera-large)", backends="seggpt-sam")
    sam_model_type: str | None = knob(None, "SAM / SAM-HQ architecture (null: inferred from the weights, vit_h for "
                                            "the default weights); not for sam2", range="vit_h, vit_l, vit_b or null",
                                      backends="seggpt-sam")
    sam_sha256: str | None = knob(None, "expected SHA-256 of the SAM checkpoint; null checks the official URLs "
                                        "against their pinned digests and nothing else; 'skip' checks nothing",
                                  range="64 hex digits, skip or null", backends="seggpt-sam")
    seggpt_checkpoint: str | None = knob(None, "SegGPT: transformers directory, s3:// prefix or Hub id (null: "
                                               "BAAI/seggpt-vit-large)", backends="seggpt-sam")
    device: str | None = knob(None, "torch device of the models: cuda, cuda:1 or cpu (null: cuda when available)",
                              backends="seggpt-sam")
    limit: int | None = knob(None, "process at most this many inputs (trial runs)", range=">= 1 or null")
    max_pixels: int = knob(178_956_970, "refuse images with more pixels than this (decompression bombs)",
                           range=">= 1")
    overlays: bool = knob(True, "write overlays/<stem>.png (the mask over the image: fill, outline, dark halo)")
    classes: tuple[str, ...] = knob(("object",), "class names in prompt-mask index order (mask value 1, 2, ...)",
                                    range="at least one")
    preset: str | None = knob(None, "a bundle of method keys for a domain (README, Presets); explicit keys win",
                              range="wildlife, satellite, medical, technical or null")
    max_tries: int = knob(3, "an input whose worker dies this many times becomes an error row; a model that fails "
                             "to build this many times fails the job", range=">= 1")
    coco: bool = knob(False, "write instances/<key>.json per image (COCO-style) and one dataset-level COCO file")
    window_pixels: int = knob(16_000_000, "rasters with more pixels than this are split into windows that flow "
                                          "through the steps as rows", range=">= window^2")
    window: int = knob(2048, "side of a raster window (px)", range=">= 64")
    window_overlap: int = knob(256, "overlap of raster windows (px)", range=">= 0 and < window / 2")
    bands: tuple[int, ...] | None = knob(None, "1-based band indices mapped to R, G, B for multi-band rasters "
                                               "(null: first three, or grey replicated)",
                                         range="three indices >= 1 or null")
    stretch: tuple[float, float] = knob((2.0, 98.0), "percentiles (low, high) mapped to 0..255 for non-8-bit "
                                                     "rasters", range="0 <= low < high <= 100")
    vector: str | None = knob(None, "also write the mask of a georeferenced raster as polygons in its CRS to "
                                    "vectors/<stem>.<geojson|gpkg>", range="geojson, gpkg or null")
    vector_tolerance: float = knob(1.0, "simplification tolerance of the polygons (px)")
    backend_options: Mapping[str, Any] = knob(factory=dict, doc="options of the weight-free backends' own models: "
                                                                "coarse_<field> / refiner_<field> (listed below)",
                                              backends="classical, proxy")
    pipeline: PipelineConfig = knob(factory=PipelineConfig, doc="the method's keys (they sit at the top level of "
                                                                "the YAML file)")
    resources: Resources = knob(factory=Resources, doc="where each step runs (section)")
    fingerprint: str | None = knob(None, "internal, not a YAML key: contents the outputs depend on (prompt bytes, "
                                         "weights' digests), computed once by the driver (``with_fingerprint``)")

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required: pass --{name} URI (a local folder or s3://bucket/prefix) or "
                                 f"set {name}: in the --config file")
        # Relative local paths are resolved here, in the process that builds the config (the driver): the workers of
        # an existing cluster run in the head's directory, not in the one the command was typed in.
        for name in ("input", "output", "prompts", "coarse", "sam_checkpoint", "seggpt_checkpoint"):
            value = getattr(self, name)
            hub = name == "seggpt_checkpoint" or (name == "sam_checkpoint" and self.refiner != "sam")
            if value is not None and _is_local_path(value, hub_ids=hub,
                                                    names=_SAM_NAMES if name == "sam_checkpoint" else ()):
                object.__setattr__(self, name, os.path.abspath(os.path.expanduser(value)))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend=}")
        if self.refiner not in REFINERS:
            raise ValueError(f"refiner must be one of {REFINERS}, got {self.refiner=}")
        if self.refiner == "sam2" and self.sam_model_type is not None:
            raise ValueError(f"sam_model_type ({self.sam_model_type}) names a SAM / SAM-HQ ViT size; SAM 2's size is "
                             "chosen by its checkpoint: drop --sam-model-type and pass --sam-checkpoint (e.g. "
                             "facebook/sam2.1-hiera-base-plus)")
        if self.prompts is None and self.coarse is None:
            raise ValueError("say what to segment: pass --prompts URI (images/ + masks/) or --coarse URI (masks)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit (--limit) must be >= 1, got {self.limit=}; leave it out to run every input")
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


#: ``--sam-checkpoint`` may name the official weights by model type (``finedetail.models.weights.resolve_sam_checkpoint``)
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
        raise unknown_key_error(unknown[0], job_names | _PIPELINE_KEYS | {"resources"})
    res_names = {f.name for f in dataclasses.fields(Resources)}
    bad = sorted(set(res_values) - res_names)
    if bad:
        raise unknown_key_error(bad[0], res_names, where="resources.")
    for name in ("input", "output"):  # missing: __post_init__ says which flag to pass
        values.setdefault(name, "")
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


#: the `python -m job run` flags that set a config key (argparse dest -> dotted key); job.__main__ applies them,
#: job.configdoc names them in the reference
FLAG_KEYS = {
    "input": "input", "prompts": "prompts", "coarse": "coarse", "output": "output", "limit": "limit",
    "classes": "classes", "overlays": "overlays", "coco": "coco", "max_pixels": "max_pixels", "backend": "backend",
    "refiner": "refiner",
    "sam_checkpoint": "sam_checkpoint", "sam_model_type": "sam_model_type", "sam_sha256": "sam_sha256",
    "seggpt_checkpoint": "seggpt_checkpoint", "device": "device", "preset": "preset", "scales": "scales",
    "tta": "tta", "ensemble": "ensemble.rule", "gpu": "resources.gpu", "coarse_gpus": "resources.coarse_gpus",
    "refiner_gpus": "resources.refiner_gpus",
    "max_actors": "resources.max_actors", "batch_size": "resources.batch_size",
    "chain": "resources.chain",
    "encode_batch": "resources.encode_batch",
}
