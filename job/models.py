"""Prompt sets and model construction for the job's stages (each actor builds its models once, in ``__init__``).

A prompt set is ``images/NAME.<ext>`` + ``masks/NAME.png`` under one URI, plus an optional ``classes.yaml`` naming
its classes in mask-index order::

    classes: [road, water]     # mask value 1 = road, 2 = water, 0 = background

With ``classes.yaml`` the job's class names come from it (``resolve_classes``); without it the prompt set is
binary (any nonzero mask pixel is the one class) unless ``--classes`` names several.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from finedetail.codecs import decode_image, decode_label_map, decode_mask
from finedetail.outputs import check_class_names
from finedetail.types import PromptPair
from job import io as jio
from job.config import JobConfig
from job.fingerprint import CLASSES_FILE, sam_source

__all__ = ["CLASSES_FILE", "build_coarse", "build_refiner", "load_prompts", "read_prompt_classes", "resolve_classes"]

#: JobConfig's default class list: a job whose classes equal it did not name classes (``resolve_classes``)
DEFAULT_CLASSES: tuple[str, ...] = next(f.default for f in dataclasses.fields(JobConfig) if f.name == "classes")


def read_prompt_classes(uri: str) -> tuple[str, ...] | None:
    """The class names of ``<uri>/classes.yaml`` (``classes: [name, ...]`` in mask-index order 1..C), or None when
    the prompt set has no such file. Refuses, naming the file, anything else than a list of unique plain names."""
    import yaml

    storage = jio.open_storage(uri)[0]
    try:
        raw = jio.read_bytes(storage, CLASSES_FILE)
    except jio.ObjectNotFoundError:
        return None
    where = f"{uri.rstrip('/')}/{CLASSES_FILE}"
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{where} is not readable YAML ({type(exc).__name__}); expected e.g. 'classes: [road, water]'"
                         ) from None
    if not isinstance(data, dict) or set(data) != {"classes"} or not isinstance(data["classes"], list):
        raise ValueError(f"{where} must hold exactly one key, a list of class names in mask-index order "
                         f"(e.g. 'classes: [road, water]'), got {data!r:.200}")
    names = data["classes"]
    odd = [n for n in names if not isinstance(n, str)]
    if odd:
        raise ValueError(f"{where}: class names must be strings, got {odd[0]!r} in {names}; quote names YAML reads as "
                         "something else (\"yes\", \"no\", \"1\", \"null\")")
    try:
        return check_class_names(names)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def resolve_classes(cfg: JobConfig) -> JobConfig:
    """``cfg`` with its class names taken from the prompt set's ``classes.yaml`` where the user named none.

    No prompts or no ``classes.yaml``: ``cfg`` unchanged. ``cfg.classes`` still the default ``("object",)`` (taken
    as "not given"): the yaml's names. Otherwise both must agree, name for name, or ValueError saying so.
    """
    if cfg.prompts is None:
        return cfg
    named = read_prompt_classes(cfg.prompts)
    if named is None or named == tuple(cfg.classes):
        return cfg
    if tuple(cfg.classes) == DEFAULT_CLASSES:
        return dataclasses.replace(cfg, classes=named)
    raise ValueError(
        f"--classes {','.join(cfg.classes)} disagrees with {cfg.prompts.rstrip('/')}/{CLASSES_FILE} "
        f"({list(named)}); the prompt masks' class indices follow {CLASSES_FILE}: drop --classes (or 'classes:' in "
        f"the config file) to use it, or make them identical"
    )


def load_prompts(uri: str, *, num_classes: int | None = None, classes: Sequence[str] | None = None
                 ) -> list[PromptPair]:
    """Prompt pairs laid out as ``images/NAME.<ext>`` + ``masks/NAME.png`` (+ optional ``classes.yaml``) under ``uri``.

    The number of classes C: ``len(classes)`` if given, else ``num_classes`` if given, else ``len`` of the names in
    ``classes.yaml``, else 1; given ones must agree with ``classes.yaml`` (names with ``classes``, count with
    ``num_classes``). C > 1 reads masks as class-index maps (0 = background, values 1..C) into uint8 masks; C == 1
    reads any nonzero pixel as foreground into bool masks.

    Refuses, naming the file: an image without a mask, a mask of another size than its image, a mask with no
    foreground, a class index above C, a class that no prompt mask shows (the in-context model learns a class only
    from examples), no pairs at all.
    """
    named = read_prompt_classes(uri)
    where = f"{uri.rstrip('/')}/{CLASSES_FILE}"
    if classes is not None:
        classes = check_class_names(classes)
        if named is not None and named != classes:
            raise ValueError(f"the job's classes {list(classes)} disagree with {where} ({list(named)}); use the names "
                             f"of {CLASSES_FILE} in its order")
        n = len(classes)
    elif num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
        if named is not None and len(named) != num_classes:
            raise ValueError(f"{where} names {len(named)} classes {list(named)} but the job is set up for "
                             f"{num_classes}; pass --classes {','.join(named)} (or no --classes) so they agree")
        n = num_classes
    else:
        n = len(named) if named is not None else 1
    names = classes or named or tuple(f"class {i + 1}" for i in range(n))
    storage = jio.open_storage(uri)[0]
    images = jio.list_files(storage, "images", extensions=jio.IMAGE_EXTS)
    if not images:
        raise ValueError(f"no prompt images under {uri}/images/; expected images/NAME.jpg + masks/NAME.png pairs")
    masks = set(jio.list_files(storage, "masks", extensions=(".png",)))
    pairs = []
    shown = np.zeros(n + 1, bool)
    for rel in images:
        stem = os.path.splitext(rel)[0]
        mask_rel = stem + ".png"
        if mask_rel not in masks:
            raise ValueError(f"prompt image images/{rel} has no mask: expected masks/{mask_rel} under {uri}")
        image = decode_image(jio.read_bytes(storage, f"images/{rel}"))
        raw = jio.read_bytes(storage, f"masks/{mask_rel}")
        mask = decode_label_map(raw) if n > 1 else decode_mask(raw)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"prompt mask masks/{mask_rel} is {mask.shape[1]}x{mask.shape[0]} but its image "
                             f"images/{rel} is {image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
        if not mask.any():
            raise ValueError(f"prompt mask masks/{mask_rel} under {uri} is empty; a prompt must show what to segment")
        if mask.all():
            raise ValueError(
                f"prompt mask masks/{mask_rel} under {uri} has no background: every pixel is nonzero, so all of "
                f"images/{rel} would be the object" + (" (any non-black colour counts as object, e.g. red on white)"
                                                       if n == 1 else "")
                + "; expected 0 where the object is not (e.g. black background, white object, as a grey PNG)")
        if n > 1:
            top = int(mask.max())
            if top > n:
                raise ValueError(f"prompt mask masks/{mask_rel} holds class {top} but only {n} classes are "
                                 f"configured ({list(names)}); name every class in {CLASSES_FILE} or --classes")
            shown[np.unique(mask)] = True
        pairs.append(PromptPair(image=image, mask=mask, name=stem))
    missing = [f"{names[c - 1]!r} (mask value {c})" for c in range(1, n + 1) if n > 1 and not shown[c]]
    if missing:
        raise ValueError(f"no prompt mask under {uri}/masks/ shows class {', '.join(missing)}; add a prompt pair that "
                         "shows it (the in-context model learns a class only from its examples) or drop the class")
    return pairs


def _device(cfg: JobConfig) -> str | None:
    return cfg.device


#: the classical backend's model families, chosen by the ``coarse_model`` / ``refiner_model`` backend options:
#: name -> (module, model class, config class)
CLASSICAL_COARSE = {"pixel": ("finedetail.models.thin", "PixelSegmenter", "PixelConfig"),
                    "colour-texture": ("finedetail.models.classical", "ColourTextureSegmenter", "ColourTextureConfig")}
CLASSICAL_REFINERS = {"grow": ("finedetail.models.thin", "GrowRefiner", "GrowConfig"),
                      "grabcut": ("finedetail.models.grabcut", "GrabCutRefiner", "GrabCutConfig")}
_CHOICES = {"coarse_model": CLASSICAL_COARSE, "refiner_model": CLASSICAL_REFINERS}


def _classical_choice(options: dict[str, Any], key: str) -> tuple[type, type]:
    """(model class, config class) named by ``options[key]`` (``coarse_model`` / ``refiner_model``; default the
    first family); refuses an unknown name, listing the valid ones."""
    import importlib

    table = _CHOICES[key]
    name = options.get(key, next(iter(table)))
    if name not in table:
        raise ValueError(f"backend_options {key}={name!r} is not a classical model; choose one of {list(table)}")
    module, model, config = table[name]
    mod = importlib.import_module(module)
    return getattr(mod, model), getattr(mod, config)


def option_classes(backend: str, options: dict[str, Any] | None = None) -> tuple[type, type] | None:
    """The (coarse, refiner) config dataclasses ``backend_options`` fill for ``backend``; None: it takes none."""
    if backend == "classical":
        options = options or {}
        return _classical_choice(options, "coarse_model")[1], _classical_choice(options, "refiner_model")[1]
    if backend == "proxy":
        from finedetail.models.proxy import ProxySAMConfig, ProxySegGPTConfig

        return ProxySegGPTConfig, ProxySAMConfig
    return None


def backend_configs(cfg: JobConfig) -> tuple[Any, Any]:
    """``cfg.backend_options`` -> (coarse model config, refiner config) of ``cfg.backend``.

    A key is ``coarse_<field>`` or ``refiner_<field>``, naming a field of the backend's config dataclass.
    classical: ``coarse_model`` picks the coarse model (``pixel``, the default: ``finedetail.models.thin``'s
    thin-structure pixel model, ``PixelConfig``; or ``colour-texture``: ``ColourTextureConfig``) and
    ``refiner_model`` the refiner (``grow``, the default: ``GrowConfig``; or ``grabcut``: ``GrabCutConfig``); the
    other keys fill the chosen config (e.g. ``coarse_input_size: 192``, ``refiner_input_size: 384``,
    ``refiner_iterations: 2`` with grabcut). proxy: ``ProxySegGPTConfig`` / ``ProxySAMConfig`` (e.g.
    ``refiner_threshold``). seggpt-sam takes none (its models are set by the checkpoint flags) and returns
    (None, None). Lists become tuples. An unknown key raises ValueError naming it and the valid keys; a bad value
    raises the config's ValueError prefixed with ``backend_options``.
    """
    options = dict(cfg.backend_options)
    classes = option_classes(cfg.backend, options)
    if classes is None:
        if options:
            raise ValueError(f"backend {cfg.backend!r} takes no backend_options, got {sorted(options)}; its models "
                             "are chosen by --refiner, --sam-checkpoint, --sam-model-type and --seggpt-checkpoint")
        return None, None
    fields = {prefix: {f.name for f in dataclasses.fields(c)} for prefix, c in zip(("coarse_", "refiner_"), classes)}
    valid = sorted(prefix + name for prefix, names in fields.items() for name in names)
    kwargs: dict[str, dict[str, Any]] = {"coarse_": {}, "refiner_": {}}
    if cfg.backend == "classical":
        valid = sorted(valid + list(_CHOICES))
    for key, value in options.items():
        if cfg.backend == "classical" and key in _CHOICES:
            continue  # chose the config classes above
        prefix = next((p for p in fields if str(key).startswith(p) and str(key)[len(p):] in fields[p]), None)
        if prefix is None:
            raise ValueError(f"unknown backend_options key {key!r} for backend {cfg.backend!r}; valid keys: {valid}")
        kwargs[prefix][key[len(prefix):]] = tuple(value) if isinstance(value, list) else value
    out = []
    for prefix, c in zip(("coarse_", "refiner_"), classes):
        try:
            out.append(c(**kwargs[prefix]))
        except (TypeError, ValueError) as exc:  # a string where a number belongs surfaces as TypeError
            raise ValueError(f"backend_options for backend {cfg.backend!r} ({c.__name__}): {exc}") from None
    return out[0], out[1]


def build_coarse(cfg: JobConfig, prompts: list[PromptPair]) -> Any:
    """The in-context coarse segmenter of ``cfg.backend`` with its prompts set (its config from
    ``cfg.backend_options``: ``backend_configs``). With several classes it is wrapped in
    ``finedetail.classes.ThinClassCoarse`` (``cfg.pipeline.multiclass``)."""
    n = len(cfg.classes)
    options, _ = backend_configs(cfg)  # refuses bad backend_options before any model is loaded
    if cfg.backend == "seggpt-sam":
        from finedetail.models.checkpoints import load_seggpt
        from finedetail.models.weights import DEFAULT_SEGGPT
        from finedetail.models.seggpt import SegGptSegmenter

        model, processor = load_seggpt(cfg.seggpt_checkpoint or DEFAULT_SEGGPT, device=_device(cfg) or "auto")
        seg = SegGptSegmenter(model, processor, device=_device(cfg), batch=cfg.resources.batch_size)
    elif cfg.backend == "classical":
        seg = _classical_choice(dict(cfg.backend_options), "coarse_model")[0](config=options)
    elif cfg.backend == "proxy":
        from finedetail.models.proxy import ProxySegGPT

        seg = ProxySegGPT(config=options)
    else:  # JobConfig validated it already
        raise ValueError(f"unknown backend {cfg.backend!r}")
    if n > 1:  # thin-only classes: a pixel-resolution complement where the coarse canvas cannot see them
        from finedetail.classes import ThinClassCoarse

        seg = ThinClassCoarse(seg, cfg.pipeline.multiclass)
    seg.set_prompts(prompts, num_classes=n)
    return seg


def fetch_weights(cfg: JobConfig) -> None:
    """Make sure the weights ``cfg.backend`` needs are on this machine (a local path, the cache, or fetched into the
    cache now) and verified, without loading them. The driver calls this before Ray starts, so missing weights are
    one refusal instead of a failure in every actor, and local workers then find them in the cache. Weight-free
    backends need none. Raises OSError (missing file, unreachable source: the message says which flag to pass or
    where to pre-seed the cache) or ValueError (checksum mismatch)."""
    if cfg.backend != "seggpt-sam":
        return
    from finedetail.models.weights import DEFAULT_SEGGPT, resolve_sam_checkpoint, resolve_seggpt_checkpoint
    from finedetail.retry import RetryPolicy

    # The driver's check is quick and quiet: a few tries (an unreachable source is the common case: an offline
    # machine), and no per-try warnings; a failure becomes ONE refusal line naming the flag and the cache path.
    quick = RetryPolicy(max_tries=3, base_delay=0.25, max_delay=1.0, quiet=True)
    if cfg.coarse is None:
        resolve_seggpt_checkpoint(cfg.seggpt_checkpoint or DEFAULT_SEGGPT, retry=quick)
    if cfg.refiner == "sam":
        resolve_sam_checkpoint(sam_source(cfg), model_type=cfg.sam_model_type, sha256=cfg.sam_sha256, retry=quick)
    else:
        from finedetail.models.hf_checkpoints import resolve_hf_checkpoint

        resolve_hf_checkpoint(sam_source(cfg), sha256=cfg.sam_sha256, retry=quick)


def build_refiner(cfg: JobConfig) -> Any:
    """The prompted refiner of ``cfg.backend`` (seggpt-sam: ``cfg.refiner``, SAM / SAM-HQ / SAM 2; the weight-free
    backends: their config from ``cfg.backend_options``, ``backend_configs``)."""
    r = cfg.pipeline.refine
    _, options = backend_configs(cfg)
    if cfg.backend == "seggpt-sam":
        if cfg.refiner == "sam":
            from finedetail.models.sam import SamRefiner as cls
        else:
            from finedetail.models import hf_sam

            cls = {"sam-hq": hf_sam.SamHQRefiner, "sam2": hf_sam.Sam2Refiner}[cfg.refiner]
        return cls.from_checkpoint(
            sam_source(cfg), model_type=cfg.sam_model_type, sha256=cfg.sam_sha256, device=_device(cfg),
            multimask=r.multimask, encode_batch=cfg.resources.encode_batch,
            use_box=r.use_box, use_points=r.use_points, use_mask_input=r.use_mask_input,
        )
    if cfg.backend == "classical":
        return _classical_choice(dict(cfg.backend_options), "refiner_model")[0](config=options)
    from finedetail.models.proxy import ProxySAM

    return ProxySAM(config=options)


def coarse_from_mask_bytes(data: bytes, hw: tuple[int, int], num_classes: int) -> np.ndarray:
    """A coarse mask made elsewhere (``--coarse``) -> (C, H, W) float32; refuses a size mismatch."""
    if num_classes > 1:
        labels = decode_label_map(data)
        maps = np.stack([(labels == c + 1) for c in range(num_classes)]).astype(np.float32)
    else:
        maps = decode_mask(data)[None].astype(np.float32)
    if maps.shape[1:] != tuple(hw):
        raise ValueError(f"coarse mask is {maps.shape[2]}x{maps.shape[1]} but its image is {hw[1]}x{hw[0]}; "
                         "coarse masks must have their image's size")
    return maps
