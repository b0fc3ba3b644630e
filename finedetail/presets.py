"""Domain presets: documented bundles of the method's knobs (pure). A preset is only config: explicit options in the
YAML file or on the command line override it (``job.config.job_config_from_dict`` merges section by section, so
``--set post.radius=8`` changes the radius and keeps the preset's other ``post`` keys).

Every key is a ``PipelineConfig`` key (``scales``, ``tta``) or a key of one of its sections (``crop`` ->
``CropConfig``, ``post`` -> ``PostprocessConfig``, ``ensemble`` -> ``EnsembleConfig``); ``tests/test_presets.py``
builds each preset into a ``JobConfig``.

- ``wildlife``: fur, whiskers, feathers. Leans on crop refinement (animals are a few objects with detailed outlines)
  and guided filtering with a colour guide; flips are safe for animals, rotations are not (gravity). Opening by
  reconstruction stays on: strands and whiskers hang on a body, free-standing thin bits are debris.
- ``satellite``: roads, rivers, field edges. Leans on multiscale with 2x tiles (structures 1-3 px wide across the
  whole scene), rotation-invariant TTA, island removal kept small; crops matter less (objects are scene-wide).
  No opening: a 1-2 px road or track is often a component of its own, and opening by reconstruction removes every
  component without a 3x3 core (islands are still removed by area).
- ``medical``: vessels, membranes. Multiscale + flips, a small guided-filter radius (edges are low contrast), hole
  filling off (lumens are real holes), no opening (vessel fragments thinner than 3 px stand free).
- ``technical``: wires, poles, cracks. 2x tiles and a circular shift TTA (1-px wires straddle patch boundaries), a
  majority-or-confident ensemble that keeps any high-confidence thin hit, no opening (a wire or a crack is a
  free-standing 1-px component).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["BACKEND_DEFAULTS", "PRESETS", "backend_defaults", "preset_dict"]

PRESETS: dict[str, dict[str, Any]] = {
    "wildlife": {
        "scales": [1.0, 2.0],
        "tta": ["identity", "hflip"],
        "crop": {"enabled": True, "min_zoom": 1.5, "max_zoom": 8.0, "max_crops": 16, "pad_frac": 0.3},
        "post": {"guided": True, "radius": 4, "eps": 1e-3, "close_size": 1, "hole_area": 64, "island_area": 16},
        "ensemble": {"rule": "majority_or_confident", "tau_high": 0.9},
    },
    "satellite": {
        "scales": [1.0, 2.0],
        "tta": ["identity", "rot90", "shift:8,8"],
        "crop": {"enabled": False},
        "post": {"guided": True, "radius": 2, "eps": 1e-2, "close_size": 1, "hole_area": 16, "island_area": 8,
                 "opening": "none"},
        "ensemble": {"rule": "majority_or_confident", "tau_high": 0.85},
    },
    "medical": {
        "scales": [1.0, 2.0],
        "tta": ["identity", "hflip", "vflip"],
        "crop": {"enabled": True, "min_zoom": 2.0},
        "post": {"guided": True, "radius": 2, "eps": 1e-3, "close_size": 1, "hole_area": 0, "island_area": 8,
                 "opening": "none"},
        "ensemble": {"rule": "mean", "tau": 0.5},
    },
    "technical": {
        "scales": [1.0, 2.0],
        "tta": ["identity", "shift:8,8"],
        "crop": {"enabled": True, "min_zoom": 2.0},
        "post": {"guided": True, "radius": 2, "eps": 1e-3, "close_size": 1, "hole_area": 32, "island_area": 8,
                 "opening": "none"},
        "ensemble": {"rule": "majority_or_confident", "tau_high": 0.8},
    },
}


def preset_dict(name: str) -> dict[str, Any]:
    """A deep copy of the preset's keys (to be overridden by explicit ones)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


#: Per-backend defaults of the method, applied UNDER a preset, the YAML file and the command line (each overrides
#: them key by key). A default stays only where evidence supports it at its cost; each entry says which.
#:
#: - seggpt-sam, ``refine.use_mask_input: false``: segment-anything documents ``mask_input`` as its own low-res
#:   logits from a previous prediction, and users report poor results when a mask from elsewhere is fed in as
#:   logits (facebookresearch/segment-anything issues #169, #447); the frozen-SAM results we rely on (HQ-SAM's
#:   evaluation: 10 positive + 5 negative points raise COIFT mBIoU 61.8 -> 86.4, DIS 17.9 -> 59.6) use box and
#:   point prompts. So the coarse mask reaches SAM as its box and boundary points, not as logits, until real
#:   weights can measure otherwise (``--set refine.use_mask_input=true`` brings it back).
#: - classical: the single pass (scale 1, identity view, no crops, no post-processing). Real-data ablation with the
#:   job's CLI (``python -m job.bench real``, 2 prompt pairs, 8 inputs each; README, Quality): against the single
#:   pass, post-processing cost DRIVE -0.10 pixel F1 (topology sensitivity 0.66 -> 0.41) and PLD-UAV power lines
#:   -0.22 F1 (opening and island removal erase free-standing 1-2 px wires), crops -0.03 / -0.00 / -0.01 F1 (DRIVE,
#:   CrackForest, PLDU), scale 2 -0.00 / -0.00 / -0.01, the flip view +0.003 / +0.001 / -0.001 at twice the passes.
#:   None helps the weight-free refiner at its cost, so none is on by default; a preset or flags turn them on.
BACKEND_DEFAULTS: dict[str, dict[str, Any]] = {
    "seggpt-sam": {"refine": {"use_mask_input": False}},
    "classical": {"scales": [1.0], "tta": ["identity"], "crop": {"enabled": False},
                  # its refiners take no mask logits; building them costs ~0.8 s per DRIVE image for nothing
                  "refine": {"use_mask_input": False},
                  "post": {"guided": False, "close_size": 0, "hole_area": 0, "opening": "none", "island_area": 0}},
    "proxy": {},
}


def backend_defaults(backend: str) -> dict[str, Any]:
    """A deep copy of the backend's method defaults (``{}`` for a backend without any)."""
    return copy.deepcopy(BACKEND_DEFAULTS.get(backend, {}))
