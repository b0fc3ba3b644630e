"""The configuration reference: every key of a job's config, generated from the config dataclasses.

``python -m job config --doc`` prints it (Markdown); the README's "Configuration reference" section is the same
text (``python -m job config --doc --readme README.md`` rewrites that section), and ``tests/test_configdoc.py``
fails when a field has no documentation or the README is out of date.

Where the words come from: the fields of ``JobConfig``, ``Resources``, ``PipelineConfig`` and its sections carry
them in their metadata (``finedetail.knobs.knob``). The weight-free backends' model configs (the dataclasses
``backend_options`` fill, ``job.models.option_classes``) are read field by field at run time and described by
``BACKEND_OPTION_DOCS`` below, so a field added there shows up here (as undocumented, which the test refuses) without
this module changing.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap
from typing import Any, Iterator

__all__ = ["BACKEND_OPTION_DOCS", "Key", "config_keys", "readme_section", "render", "replace_section", "undocumented"]

SECTION = "## Configuration reference"
WIDTH = 118

#: the ridge features the pixel model and the grow refiner share (``finedetail.ridges``)
_RIDGE_FEATURES: dict[str, tuple[str, str]] = {
    "sigmas": ("Gaussian scales of the Hessian ridge / valley features (px)", "positive"),
    "norm_sigma": ("scale of the local contrast normalisation (px)", "> 0"),
    "line_length": ("length of the oriented line filters (px; 0 = off)", "0 or odd >= 3"),
    "line_angles": ("orientations of the line filters", ">= 1"),
    "coherent_length": ("length over which the orientation-coherent ridge evidence is summed (px; 0 = off)",
                        "0 or odd >= 3"),
    "coherent_sigmas": ("Gaussian scales of the orientation-coherent ridge evidence (px)", "positive"),
}

#: config class name -> field -> (what it does, the values the class accepts or ""). The classes are the weight-free
#: backends' model configs (``job.models.option_classes``); their fields are read at run time.
BACKEND_OPTION_DOCS: dict[str, dict[str, tuple[str, str]]] = {
    "ColourTextureConfig": {
        "input_size": ("working resolution: the image's long side is resized to this (px)", ">= 16"),
        "l_bins": ("Lab histogram bins of lightness", "1..64"),
        "ab_bins": ("Lab histogram bins of each of a and b", "1..64"),
        "fg_floor": ("uniform floor mixed into the object's colour density", "in (0, 1)"),
        "bg_floor": ("uniform floor mixed into the background's colour density (a colour no prompt showed scores "
                     "log(fg_floor / bg_floor))", "in (0, 1)"),
        "smooth_colours": ("blur the colour histograms by [1, 2, 1] / 4 along each Lab axis", ""),
        "texture_scales": ("window sides of the local mean / std texture features (px)", "odd, >= 3"),
        "max_samples": ("training pixels per class (deterministic subsample)", ">= 10"),
        "l2": ("L2 regularisation of the logistic regression", ">= 0"),
        "seed": ("seed of the training subsample", ""),
    },
    "GrabCutConfig": {
        "input_size": ("working resolution: images are shrunk so the long side is at most this (px)", ">= 16"),
        "iterations": ("GrabCut rounds per component", ">= 1"),
        "box_margin": ("the box is expanded by max(min_margin, box_margin * its long side) on each side", ">= 0"),
        "min_margin": ("least expansion of the box (px)", ">= 0"),
        "band_frac": ("how far GrabCut may grow a component: max(min_band, band_frac * the box's long side) px from "
                      "the coarse mask and the positive points", ">= 0"),
        "min_band": ("least growth band (px)", ">= 1"),
        "ring": ("ring of definite background around the expanded box (px)", ">= 1"),
        "point_radius": ("radius of the definite foreground / background disks at the points (px)", ">= 0"),
        "min_samples": ("pixels each side needs for GrabCut to run; with fewer the coarse mask is kept", ">= 1"),
        "seed": ("cv2.setRNGSeed before every call (deterministic)", ""),
    },
    "PixelConfig": {
        **_RIDGE_FEATURES,
        "input_size": ("working resolution: images are shrunk so the long side is at most this (px)", ">= 16"),
        "max_samples": ("training pixels per class over all prompts (deterministic subsample)", ">= 10"),
        "near_px": ("band around the object the hard negative pixels come from (px)", ">= 1"),
        "near_frac": ("share of the negative pixels taken from that band", "[0, 1]"),
        "iterations": ("boosting iterations (trees) of the HistGradientBoostingClassifier", ">= 1"),
        "learning_rate": ("boosting learning rate", "> 0"),
        "max_leaf_nodes": ("leaves per tree", ">= 2"),
        "min_samples_leaf": ("least training pixels per leaf", ">= 1"),
        "l2": ("L2 regularisation of the leaf values", ">= 0"),
        "calibrate": ("choose the decision threshold that maximises F1 on held-out prompt pixels (cross-fitting)", ""),
        "seed": ("seed of the training subsample and the classifier", ""),
    },
    "GrowConfig": {
        **_RIDGE_FEATURES,
        "input_size": ("working resolution: windows are shrunk so the long side is at most this (px)", ">= 16"),
        "box_margin": ("the component's box is expanded by max(min_margin, box_margin * its long side)", ">= 0"),
        "min_margin": ("least expansion of the box (px)", ">= 0"),
        "min_gap": ("least distance of the negative samples from the component (px)", "> 0"),
        "gap_width": ("negatives lie farther than gap_width * the component's mean width from it", "> 0"),
        "reach_frac": ("how far growth may go: max(min_reach, reach_frac * the box's long side) px", ">= 0"),
        "min_reach": ("least growth reach (px)", ">= 0"),
        "grow_p": ("a pixel joins when the discriminant's probability is at least this (hysteresis)", "(0, 1]"),
        "keep_p": ("a component pixel is kept when its probability is at least this (0 keeps all)", "[0, 1]"),
        "point_radius": ("radius of the disks drawn at positive / negative points (px)", ">= 0"),
        "l_bins": ("Lab histogram bins of lightness (colour feature)", "1..64"),
        "ab_bins": ("Lab histogram bins of a and b (colour feature)", "1..64"),
        "max_samples": ("training pixels per side for the discriminant", ">= 10"),
        "min_samples": ("pixels each side needs; with fewer the component's mask is kept", ">= 1"),
        "shrinkage": ("covariance shrinkage of the linear discriminant", ">= 0"),
        "seed": ("seed of the training subsample", ""),
    },
    "ProxySegGPTConfig": {
        "level": ("patch mean key at which the proxy's probability is 0.5", "in (0, 1]"),
    },
    "ProxySAMConfig": {
        "threshold": ("a low-res cell is object iff its mean key is at least this", "in (0, 1]"),
        "box_expand": ("fraction of the box's width / height added on each side", ">= 0"),
        "mask_dilate": ("cells the mask input is dilated by", ">= 0"),
        "neg_radius": ("cells (Chebyshev) a negative point clears", ">= 0"),
        "logit": ("magnitude of the low-res logits (sharpness of the map)", "> 0"),
        "use_box": ("use the prompt box (off: the region is the dilated mask input alone)", ""),
    },
}

UNDOCUMENTED = "(undocumented)"


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key. name: dotted, as in YAML and ``--set`` (``post.radius``). type: the annotation. default:
    rendered as YAML (``required`` when there is none). range: accepted values (text, "" when any). doc: what it
    does (``UNDOCUMENTED`` when nothing says). backends: who reads it ("all" when every backend). flag: the
    command-line option that sets it ("" when only ``--set`` and YAML do)."""

    name: str
    type: str
    default: str
    range: str
    doc: str
    backends: str
    flag: str = ""


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _flags() -> dict[str, str]:
    """Dotted key -> the command-line option that sets it."""
    from job.config import FLAG_KEYS

    out = {key: "--" + attr.replace("_", "-") for attr, key in FLAG_KEYS.items()}
    out.update({"overlays": "--no-overlays", "crop.enabled": "--no-crop", "selective.enabled": "--selective",
                "ensemble.rule": "--ensemble", "preset": "--preset"})
    return out


def _backend_defaults() -> dict[str, str]:
    """Dotted key -> "backend: value" for the keys a backend sets by default (``finedetail.presets``)."""
    from finedetail.presets import BACKEND_DEFAULTS

    out: dict[str, list[str]] = {}

    def walk(d: dict, prefix: str, backend: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.", backend)
            else:
                out.setdefault(prefix + k, []).append(f"{backend}: {_yaml(v)}")

    for backend, values in BACKEND_DEFAULTS.items():
        walk(values, "", backend)
    return {k: ", ".join(v) for k, v in out.items()}


def _dataclass_keys(cls: type, prefix: str, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted name, field) of every leaf field of ``cls``; fields whose default is a dataclass are sections."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = _default(f)
        if dataclasses.is_dataclass(default):
            yield from _dataclass_keys(type(default), f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def _from_metadata(name: str, f: dataclasses.Field, flags: dict[str, str], by_backend: dict[str, str]) -> Key:
    default = _default(f)
    meta = f.metadata
    rng = meta.get("range") or ""
    if name in by_backend:
        rng = f"{rng}; default for {by_backend[name]}" if rng else f"default for {by_backend[name]}"
    return Key(name=name, type=str(f.type), default="required" if default is dataclasses.MISSING else _yaml(default),
               range=rng, doc=meta.get("doc") or UNDOCUMENTED, backends=meta.get("backends") or "all",
               flag=flags.get(name, ""))


def _option_keys(backend: str) -> list[Key]:
    from job.models import option_classes

    keys = []
    for prefix, cls in zip(("coarse_", "refiner_"), option_classes(backend) or ()):
        for f in dataclasses.fields(cls):
            doc, rng = BACKEND_OPTION_DOCS.get(cls.__name__, {}).get(f.name, (UNDOCUMENTED, ""))
            keys.append(Key(name=f"backend_options.{prefix}{f.name}", type=str(f.type), default=_yaml(_default(f)),
                            range=rng, doc=f"{doc} ({cls.__name__}.{f.name})", backends=backend))
    return keys


#: the reference's sections: title, what they hold
_GROUPS = (
    ("Job", "Data, models and outputs: top-level YAML keys"),
    ("Method", "What the method computes (hashed into the config hash): top-level YAML keys, dotted for sections"),
    ("Resources", "Where each step runs: the `resources:` section (not hashed: change them to resume elsewhere)"),
    ("Backend options", "The weight-free backends' own models: the `backend_options:` section"),
)


def config_keys() -> dict[str, list[Key]]:
    """Every key a job's config accepts, by group (``_GROUPS``), in declaration order."""
    from finedetail.config import PipelineConfig
    from job.config import BACKENDS, JobConfig, Resources

    flags, by_backend = _flags(), _backend_defaults()
    internal = ("pipeline", "resources", "fingerprint", "backend_options")
    return {
        "Job": [_from_metadata(n, f, flags, by_backend) for n, f in _dataclass_keys(JobConfig, "", internal)],
        "Method": [_from_metadata(n, f, flags, by_backend) for n, f in _dataclass_keys(PipelineConfig, "")],
        "Resources": [_from_metadata(n, f, flags, by_backend)
                      for n, f in _dataclass_keys(Resources, "resources.")],
        "Backend options": [k for b in BACKENDS for k in _option_keys(b)],
    }


def undocumented() -> list[str]:
    """Dotted names of the fields (every config field, sections and internal ones included) without a doc."""
    from job.config import BACKENDS, JobConfig

    missing = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if not f.metadata.get("doc"):
                missing.append(prefix + f.name)
            default = _default(f)
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")

    walk(JobConfig, "")  # PipelineConfig and Resources are reached as its sections
    missing += [k.name for b in BACKENDS for k in _option_keys(b) if k.doc.startswith(UNDOCUMENTED)]
    return missing


def _item(k: Key) -> str:
    facts = [f"`{k.type}`", f"default `{k.default}`"]
    if k.range:
        facts.append(k.range)
    if k.backends != "all":
        facts.append(f"backend: {k.backends}")
    if k.flag:
        facts.append(f"flag `{k.flag}`")
    text = f"- `{k.name}` ({'; '.join(facts)}): {k.doc}"
    return textwrap.fill(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)


def render() -> str:
    """The reference as Markdown, starting with its ``SECTION`` heading and ending with a newline."""
    keys = config_keys()
    out = [SECTION, "", textwrap.fill(
        "Generated from the config dataclasses by `python -m job config --doc` (this section is that command's "
        "output; a test keeps them equal). Keys go in the `--config` YAML file or `--set KEY=VALUE` (dotted for "
        "sections, value in YAML); a flag, where there is one, sets the same key. Defaults are the dataclasses'; "
        "a backend's own defaults (`finedetail.presets.BACKEND_DEFAULTS`, noted at the key), then `--preset`, then "
        "the YAML file, then the command line override them, key by key. A key without `backend:` is read by every "
        "backend.", WIDTH)]
    for title, what in _GROUPS:
        out += ["", f"### {title}", "", f"{what}.", ""]
        out += [_item(k) for k in keys[title]]
    return "\n".join(out) + "\n"


def _span(lines: list[str]) -> tuple[int, int] | None:
    """Line range of ``SECTION`` in ``lines``: its heading up to the next ``## `` heading or the end."""
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == SECTION), None)
    if start is None:
        return None
    return start, next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))


def replace_section(readme: str, section: str) -> str:
    """``readme`` with its ``SECTION`` replaced by ``section`` (appended at the end when there is none)."""
    lines = readme.splitlines(keepends=True)
    span = _span(lines)
    if span is None:
        return readme.rstrip("\n") + "\n\n" + section
    tail = "".join(lines[span[1]:])
    return "".join(lines[:span[0]]) + section + ("\n" + tail if tail else "")


def readme_section(readme: str) -> str | None:
    """The ``SECTION`` of ``readme``, in ``render``'s form (None when there is none)."""
    lines = readme.splitlines(keepends=True)
    span = _span(lines)
    return None if span is None else "".join(lines[span[0]:span[1]]).rstrip("\n") + "\n"


def main(*, doc: bool, readme: str | None = None) -> int:
    """``python -m job config --doc [--readme FILE]``: print the reference, or rewrite FILE's section with it."""
    if not doc:
        print("python -m job config: pass --doc to print every config key (--readme FILE rewrites FILE's "
              f"{SECTION!r} section)", file=sys.stderr)
        return 2
    text = render()
    if readme is None:
        sys.stdout.write(text)
        return 0
    with open(readme, encoding="utf-8") as f:
        old = f.read()
    new = replace_section(old, text)
    if new != old:
        with open(readme, "w", encoding="utf-8") as f:
            f.write(new)
    print(f"{readme}: {SECTION!r} {'rewritten' if new != old else 'already up to date'}", file=sys.stderr)
    return 0
