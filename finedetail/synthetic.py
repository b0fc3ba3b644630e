"""Deterministic synthetic scenes with exact fine-detail ground truth (pure: numpy + OpenCV).

Each scene is a textured background with one kind of object: a blob-like body plus thin parts 1-3 px wide.
Everything is drawn with ``cv2.LINE_8`` and no antialiasing, so the ground-truth mask is exact.

KINDS:
- ``"fur"``: an animal body (ellipse + head) with many 1-2 px strands radiating out and long 1 px whiskers.
- ``"wires"``: poles (vertical bars 1.2-2 % of the short side with crossarms and a transformer box of 3.5-5 %, the
  blob parts a 448-px model sees) carrying sagging 1-2 px wires (catenaries), guy wires and a far cable.
- ``"vessels"``: an organ (disc) with branching vessel trees whose width decreases down to 1 px.
- ``"roads"``: a network of 2-4 px roads with 1-2 px tracks, a meandering 3-6 px river and a few fields.

COLOUR KEY (what the colour-keyed proxy models look for): object pixels are reddish, ``OBJECT_COLOR[kind]`` plus a
per-pixel jitter of at most ``COLOR_JITTER`` per channel, and always satisfy ``R - max(G, B) >= 120``; background
pixels are low-saturation greens/greys/browns that always satisfy ``R - max(G, B) <= 40``. Hence
``object_key(image) = clip((R - max(G, B) - 40) / 80, 0, 1)`` is exactly 1.0 on the object and 0.0 elsewhere.
Two-class scenes (``classes=2``) paint the blob-like parts bluish (``BLOB_COLOR``, ``B - max(R, G) >= 120``;
background ``B - max(R, G) <= 40``) and the thin parts red; ``class_keys`` returns both keys.

Parts are "thin" when drawn 1-3 px wide (``Scene.thin``); wider parts (bodies, poles, organs, trunks, wide roads and
rivers, fields) are the "blob" parts. ``Scene.skeleton`` is the 1-px centre line of the thin parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "BLOB_COLOR",
    "COLOR_JITTER",
    "KINDS",
    "OBJECT_COLOR",
    "Scene",
    "class_keys",
    "make_prompt_pair",
    "make_scene",
    "object_key",
]

KINDS = ("fur", "wires", "vessels", "roads")

#: base RGB of the object per kind (all reddish: R - max(G, B) >= 120 after jitter)
OBJECT_COLOR: dict[str, tuple[int, int, int]] = {
    "fur": (214, 66, 48),
    "wires": (226, 48, 40),
    "vessels": (202, 36, 54),
    "roads": (232, 80, 60),
}
#: base RGB of the blob class in two-class scenes (bluish: B - max(R, G) >= 120 after jitter)
BLOB_COLOR = (44, 64, 224)
#: max per-channel deviation of an object pixel from its base colour
COLOR_JITTER = 12

_KEY_LOW, _KEY_SPAN = 40, 80  # key = clip((dominance - 40) / 80): <= 40 -> 0, >= 120 -> 1
_BG_MAX_DOMINANCE = 30  # background R - max(G, B) and B - max(R, G) stay at or below this
_MIN_SIZE, _MAX_SIZE = 32, 8192

# low-saturation background palette (RGB): greens, greys, browns
_PALETTE = np.array(
    [[92, 108, 76], [118, 104, 84], [108, 108, 104], [84, 98, 70], [132, 120, 98], [70, 80, 66], [150, 146, 136]],
    np.float32,
)


@dataclass(frozen=True, eq=False)
class Scene:
    """One synthetic scene. image (H, W, 3) uint8 RGB; mask (H, W) bool (exact object pixels); thin (H, W) bool
    (pixels of the 1-3 px parts, subset of mask); skeleton (H, W) bool (their 1-px centre lines, subset of thin);
    labels: None, or for ``classes=2`` an (H, W) uint8 map (0 background, 1 thin class, 2 blob class)."""

    image: np.ndarray
    mask: np.ndarray
    skeleton: np.ndarray
    thin: np.ndarray
    kind: str
    seed: int
    labels: np.ndarray | None = None


def object_key(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 ``clip((R - max(G, B) - 40) / 80, 0, 1)``: 1.0 on synthetic objects
    (the red class), 0.0 on synthetic backgrounds."""
    img = _check_image(image)
    r, g, b = (img[..., i].astype(np.int16) for i in range(3))
    return _key(r - np.maximum(g, b))


def class_keys(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (2, H, W) float32: [red key (``object_key``), blue key
    ``clip((B - max(R, G) - 40) / 80, 0, 1)``]. In two-class scenes: class 1 (thin) and class 2 (blob)."""
    img = _check_image(image)
    r, g, b = (img[..., i].astype(np.int16) for i in range(3))
    return np.stack([_key(r - np.maximum(g, b)), _key(b - np.maximum(r, g))])


def make_scene(kind: str, *, seed: int, size: tuple[int, int] = (512, 512), classes: int = 1) -> Scene:
    """Draw one scene of ``kind`` (one of ``KINDS``), deterministic in (kind, seed, size, classes).

    size: (h, w), each in [32, 8192] (64..4096 is the tested range; 2048x2048 takes well under a second).
    classes: 1 (binary: the whole object is red) or 2 (thin parts red = class 1, blob parts blue = class 2).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {KINDS}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed=}")
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and _MIN_SIZE <= v <= _MAX_SIZE for v in size)
    ):
        raise ValueError(f"size must be (h, w) ints in [{_MIN_SIZE}, {_MAX_SIZE}], got {size=}")
    if classes not in (1, 2):
        raise ValueError(f"classes must be 1 or 2, got {classes=}")
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng([int(seed), KINDS.index(kind)])
    canvas = _Canvas(h, w)
    _DRAW[kind](rng, canvas)
    blob, thin_layer, skel = canvas.finish()

    mask = blob | thin_layer | skel
    thin = (thin_layer | skel) & ~blob
    skeleton = skel & ~blob
    image = _background(rng, h, w)
    if classes == 1:
        _paint(rng, image, mask, OBJECT_COLOR[kind], channel=0)
        labels = None
    else:
        _paint(rng, image, thin, OBJECT_COLOR[kind], channel=0)
        _paint(rng, image, blob, BLOB_COLOR, channel=2)
        labels = np.where(blob, np.uint8(2), np.where(thin, np.uint8(1), np.uint8(0))).astype(np.uint8)
    return Scene(image=image, mask=mask, skeleton=skeleton, thin=thin, kind=kind, seed=int(seed), labels=labels)


def make_prompt_pair(
    kind: str, *, seed: int, size: tuple[int, int] = (512, 512), classes: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """An in-context example: ``(image (H, W, 3) uint8, mask)`` with mask (H, W) bool, or for ``classes=2`` the
    (H, W) uint8 label map (0 background, 1 thin, 2 blob)."""
    scene = make_scene(kind, seed=seed, size=size, classes=classes)
    return scene.image, (scene.mask if classes == 1 else scene.labels)


# ---------------------------------------------------------------------------------------------- drawing


class _Canvas:
    """Collects polylines per width and draws them in a few batched cv2 calls. Widths <= 3 are thin parts (with a
    1-px skeleton drawn through them), wider ones go to the blob layer."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.s = min(h, w)
        self.blob = np.zeros((h, w), np.uint8)
        self._lines: dict[int, list[np.ndarray]] = {}

    def polyline(self, pts: np.ndarray, width: int) -> None:
        """pts (n, 2) float (x, y), pixel coordinates (continuous centres are +0.5; we round)."""
        self._lines.setdefault(int(width), []).append(np.rint(pts).astype(np.int32).reshape(-1, 1, 2))

    def polylines(self, pts: np.ndarray, widths: np.ndarray) -> None:
        """pts (m, n, 2), widths (m,)."""
        for p, wd in zip(pts, widths):
            self.polyline(p, int(wd))

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        thin = np.zeros_like(self.blob)
        skel = np.zeros_like(self.blob)
        for width in sorted(self._lines):
            lines = self._lines[width]
            if width >= 4:
                # cv2 draws thickness t as 2 * (t // 2) + 1 px across: t = width - 1 gives width (odd) or width + 1
                cv2.polylines(self.blob, lines, False, 1, thickness=width - 1, lineType=cv2.LINE_8)
                continue
            cv2.polylines(skel, lines, False, 1, thickness=1, lineType=cv2.LINE_8)
            if width == 2:
                # cv2 has no 2-px line: the 1-px line plus copies shifted right and down
                for dx, dy in ((1, 0), (0, 1)):
                    shifted = [ln + np.array([dx, dy], np.int32) for ln in lines]
                    cv2.polylines(thin, shifted, False, 1, thickness=1, lineType=cv2.LINE_8)
            elif width == 3:
                cv2.polylines(thin, lines, False, 1, thickness=2, lineType=cv2.LINE_8)
        return self.blob.astype(bool), thin.astype(bool), skel.astype(bool)


def _curves(
    rng: np.random.Generator,
    start: np.ndarray,
    angle: np.ndarray,
    length: np.ndarray,
    *,
    nseg: int,
    bend: float,
    wiggle: float,
) -> np.ndarray:
    """m smooth random curves: start (m, 2) xy, angle (m,) radians, length (m,) px -> (m, nseg + 1, 2) xy.
    Each curve turns by a constant curvature (std ``bend`` rad per segment) plus noise (std ``wiggle``)."""
    m = len(start)
    turn = rng.normal(0, bend, (m, 1)) + rng.normal(0, wiggle, (m, nseg))
    headings = angle[:, None] + np.cumsum(turn, axis=1)
    step = (length / nseg)[:, None]
    deltas = np.stack([np.cos(headings), np.sin(headings)], axis=2) * step[:, :, None]
    return np.concatenate([start[:, None, :], start[:, None, :] + np.cumsum(deltas, axis=1)], axis=1)


def _ellipse_points(center, axes, theta: float, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points on an ellipse at parameters t and the unit outward normals there; both (m, 2) xy."""
    ct, st = np.cos(theta), np.sin(theta)
    rot = np.array([[ct, -st], [st, ct]])
    local = np.stack([axes[0] * np.cos(t), axes[1] * np.sin(t)], axis=1)
    normal = np.stack([np.cos(t) / axes[0], np.sin(t) / axes[1]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return np.asarray(center) + local @ rot.T, normal @ rot.T


def _draw_fur(rng: np.random.Generator, cv: _Canvas) -> None:
    s = cv.s
    center = np.array([cv.w * rng.uniform(0.4, 0.6), cv.h * rng.uniform(0.45, 0.6)])
    axes = np.array([s * rng.uniform(0.18, 0.25), s * rng.uniform(0.11, 0.16)])
    theta = rng.uniform(0, np.pi)
    _fill_ellipse(cv.blob, center, axes, theta)
    # head at one end of the major axis
    side = rng.choice([-1.0, 1.0])
    major = np.array([np.cos(theta), np.sin(theta)]) * side
    head_c = center + major * axes[0] * 1.05
    head_axes = axes[1] * np.array([0.62, 0.55])
    _fill_ellipse(cv.blob, head_c, head_axes, theta)

    # strands all around the body, one every ~4 px of perimeter, starting 2 px inside so they stay attached
    perimeter = np.pi * (3 * (axes[0] + axes[1]) - np.sqrt((3 * axes[0] + axes[1]) * (axes[0] + 3 * axes[1])))
    n = max(8, int(perimeter / rng.uniform(3.5, 5.0)))
    t = rng.uniform(0, 2 * np.pi, n)
    pts, normal = _ellipse_points(center, axes, theta, t)
    angle = np.arctan2(normal[:, 1], normal[:, 0]) + rng.normal(0, 0.3, n)
    length = np.maximum(4.0, s * rng.uniform(0.02, 0.07, n))
    curves = _curves(rng, pts - 2 * normal, angle, length, nseg=6, bend=0.12, wiggle=0.05)
    cv.polylines(curves, np.where(rng.random(n) < 0.75, 1, 2))

    # whiskers: long 1-px curves from the snout
    nw = int(rng.integers(6, 13))
    snout = head_c + major * head_axes[0] * 0.8
    spread = rng.uniform(-1.1, 1.1, nw) + np.where(np.arange(nw) % 2 == 0, np.pi / 2, -np.pi / 2) * 0.6
    angle = np.arctan2(major[1], major[0]) + spread
    length = s * rng.uniform(0.1, 0.22, nw)
    start = snout + rng.normal(0, 1.5, (nw, 2))
    cv.polylines(_curves(rng, start, angle, length, nseg=10, bend=0.04, wiggle=0.01), np.ones(nw, int))

    # a tail: a 5-px blob part with its own strands
    tail_start = center - major * axes[0] * 0.95
    tail = _curves(
        rng, tail_start[None], np.array([np.arctan2(-major[1], -major[0])]), np.array([s * 0.22]),
        nseg=12, bend=0.1, wiggle=0.03,
    )[0]
    cv.polyline(tail, 5)
    k = max(4, int(s * 0.22 / 3))
    idx = rng.integers(1, len(tail), k)
    base = tail[idx] + rng.normal(0, 0.5, (k, 2))
    heading = np.arctan2(*(tail[idx] - tail[idx - 1]).T[::-1])
    angle = heading + rng.choice([-1.0, 1.0], k) * rng.uniform(0.6, 1.3, k)
    cv.polylines(_curves(rng, base, angle, np.maximum(4.0, s * rng.uniform(0.02, 0.05, k)), nseg=4, bend=0.1,
                         wiggle=0.05), np.ones(k, int))


def _catenary(p0: np.ndarray, p1: np.ndarray, sag: float, n: int) -> np.ndarray:
    """A hanging cable from p0 to p1 (xy), lowest ``sag`` px below the chord's midpoint; (n, 2)."""
    u = np.linspace(-1.0, 1.0, n)
    c = 1.5  # shape: cosh(c u) normalised to 0 at the ends and 1 in the middle
    droop = (np.cosh(c) - np.cosh(c * u)) / (np.cosh(c) - 1.0)
    chord = p0[None] + (p1 - p0)[None] * ((u + 1) / 2)[:, None]
    chord[:, 1] += sag * droop
    return chord


def _draw_wires(rng: np.random.Generator, cv: _Canvas) -> None:
    h, w, s = cv.h, cv.w, cv.s
    n_poles = int(rng.integers(2, 5))
    # one pole per equal slot, jittered inside it, so poles never touch
    xs = w * (0.08 + 0.84 * (np.arange(n_poles) + rng.uniform(0.25, 0.75, n_poles)) / n_poles)
    tops, arms = [], []
    for x in xs:
        # Sizes scale with the scene so a 448-px model sees the same thing at every size: poles 1.2-2 % of the
        # short side (12-20 px at 1024: at best half a 36.6-px SegGPT patch), a crossarm, and a transformer box of
        # 3.5-5 % (36-51 px at 1024, about one SegGPT patch or more) that a 448-px model always finds. The 1-2 px
        # wires hang from the crossarm: the blob parts are where the refiner's prompts come from.
        pw = max(4, int(round(s * rng.uniform(0.012, 0.02))))
        top = int(h * rng.uniform(0.08, 0.3))
        bottom = int(h * rng.uniform(0.85, 1.0))
        x0 = int(round(x)) - pw // 2
        cv2.rectangle(cv.blob, (x0, top), (x0 + pw - 1, bottom), 1, thickness=-1, lineType=cv2.LINE_8)
        arm = max(3, int(s * rng.uniform(0.04, 0.07)))
        at = max(4, int(round(s * rng.uniform(0.005, 0.009))))  # crossarm thickness
        ay = top + int(rng.integers(2, 6))
        cv2.rectangle(cv.blob, (x0 - arm, ay), (x0 + pw - 1 + arm, ay + at - 1), 1, thickness=-1,
                      lineType=cv2.LINE_8)
        bw = max(pw + 2, int(round(s * rng.uniform(0.035, 0.05))))
        bh = int(round(bw * rng.uniform(1.1, 1.5)))
        by = ay + at + max(2, int(s * rng.uniform(0.03, 0.08)))
        bx = int(round(x)) - bw // 2 + int(rng.integers(-1, 2)) * (bw // 3)  # centred or hung on one side
        cv2.rectangle(cv.blob, (bx, by), (bx + bw - 1, by + bh - 1), 1, thickness=-1, lineType=cv2.LINE_8)
        tops.append(top)
        arms.append((x0 - arm + 1, x0 + pw - 2 + arm, ay))
    n_wires = int(rng.integers(2, 4))
    for i in range(n_poles + 1):
        for j in range(n_wires):
            frac = j / max(1, n_wires - 1)
            if i == 0:  # from the left image edge to the first pole
                a = arms[0]
                p1 = np.array([a[0] + frac * (a[1] - a[0]), a[2] - 1.0])
                p0 = np.array([-w * 0.05, p1[1] + rng.uniform(-0.1, 0.1) * h])
            elif i == n_poles:  # from the last pole to the right edge
                a = arms[-1]
                p0 = np.array([a[0] + frac * (a[1] - a[0]), a[2] - 1.0])
                p1 = np.array([w * 1.05, p0[1] + rng.uniform(-0.1, 0.1) * h])
            else:
                a, b = arms[i - 1], arms[i]
                p0 = np.array([a[0] + frac * (a[1] - a[0]), a[2] - 1.0])
                p1 = np.array([b[0] + frac * (b[1] - b[0]), b[2] - 1.0])
            span = abs(p1[0] - p0[0])
            sag = span * rng.uniform(0.04, 0.12)
            n = max(8, int(span / 6))
            cv.polyline(_catenary(p0, p1, sag, n), 1 if rng.random() < 0.7 else 2)
    # guy wires from pole tops down to the ground, and a far cable crossing the whole scene
    for x, top in zip(xs, tops):
        if rng.random() < 0.6:
            foot = np.array([x + rng.choice([-1, 1]) * s * rng.uniform(0.1, 0.25), h * rng.uniform(0.9, 1.0)])
            cv.polyline(np.array([[x, top + 6.0], foot]), 1)
    y0, y1 = h * rng.uniform(0.05, 0.5, 2)
    cv.polyline(_catenary(np.array([-2.0, y0]), np.array([w + 2.0, y1]), h * rng.uniform(0.02, 0.08), 64), 1)


def _draw_vessels(rng: np.random.Generator, cv: _Canvas) -> None:
    s = cv.s
    center = np.array([cv.w * rng.uniform(0.35, 0.65), cv.h * rng.uniform(0.35, 0.65)])
    radius = s * rng.uniform(0.05, 0.08)
    _fill_ellipse(cv.blob, center, np.array([radius, radius * rng.uniform(0.85, 1.0)]), rng.uniform(0, np.pi))
    n_roots = int(rng.integers(3, 6))
    root_angles = rng.uniform(0, 2 * np.pi) + np.arange(n_roots) * 2 * np.pi / n_roots + rng.normal(0, 0.2, n_roots)
    min_len = max(6.0, s * 0.012)
    # stack of (start xy, heading, width, length, generations left after width 1)
    stack = [
        (center + radius * 0.8 * np.array([np.cos(a), np.sin(a)]), a, int(rng.integers(5, 8)),
         s * rng.uniform(0.14, 0.22), 2)
        for a in root_angles
    ]
    while stack:
        start, heading, width, length, extra = stack.pop()
        nseg = max(3, int(length / 6))
        pts = _curves(rng, start[None], np.array([heading]), np.array([length]), nseg=nseg, bend=0.08, wiggle=0.06)[0]
        cv.polyline(pts, width)
        end = pts[-1]
        end_heading = np.arctan2(*(pts[-1] - pts[-2])[::-1])
        child_len = length * rng.uniform(0.68, 0.85)
        if child_len < min_len or (width == 1 and extra == 0):
            continue
        next_extra = extra - 1 if width == 1 else extra
        for sign in (-1.0, 1.0):
            child_w = max(1, width - int(rng.integers(1, 3)))
            turn = sign * rng.uniform(0.3, 0.75)
            stack.append((end, end_heading + turn, child_w, child_len * rng.uniform(0.85, 1.15), next_extra))


def _draw_roads(rng: np.random.Generator, cv: _Canvas) -> None:
    h, w, s = cv.h, cv.w, cv.s
    # fields: irregular filled polygons
    for _ in range(int(rng.integers(1, 4))):
        c = np.array([w * rng.uniform(0.15, 0.85), h * rng.uniform(0.15, 0.85)])
        r = s * rng.uniform(0.05, 0.12)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
        rad = r * rng.uniform(0.7, 1.2, 9)
        poly = c + np.stack([np.cos(ang) * rad, np.sin(ang) * rad], axis=1)
        cv2.fillPoly(cv.blob, [np.rint(poly).astype(np.int32)], 1, lineType=cv2.LINE_8)
    # meandering river from the left to the right edge
    n = 96
    x = np.linspace(-0.05 * w, 1.05 * w, n)
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.5)
    y = h * rng.uniform(0.3, 0.7) + h * 0.12 * np.sin(2 * np.pi * freq * x / w + phase)
    y += np.cumsum(rng.normal(0, h * 0.004, n))
    if rng.random() < 0.5:
        x, y = y * (w / h), x * (h / w)  # flow top to bottom instead
    cv.polyline(np.stack([x, y], axis=1), int(rng.integers(3, 7)))
    # roads between random points on the border, with a couple of kinks
    roads = []
    for _ in range(int(rng.integers(3, 6))):
        side_a = int(rng.integers(0, 4))
        side_b = (side_a + int(rng.integers(1, 4))) % 4  # another side: never a road along one edge
        a, b = _border_point(rng, h, w, side_a), _border_point(rng, h, w, side_b)
        u = np.linspace(0, 1, 6)[:, None]
        pts = a + (b - a) * u
        pts[1:-1] += rng.normal(0, s * 0.02, (4, 2))
        roads.append(pts)
        cv.polyline(pts, int(rng.choice([2, 3, 3, 4])))
    # tracks: short 1-2 px side roads leaving the roads
    for pts in roads:
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(pts) - 1))
            p = pts[i] + (pts[i + 1] - pts[i]) * rng.uniform(0, 1)
            d = pts[i + 1] - pts[i]
            heading = np.arctan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(1.0, 2.0)
            track = _curves(rng, p[None], np.array([heading]), np.array([s * rng.uniform(0.08, 0.25)]), nseg=8,
                            bend=0.1, wiggle=0.05)[0]
            cv.polyline(track, int(rng.choice([1, 2])))


def _border_point(rng: np.random.Generator, h: int, w: int, side: int) -> np.ndarray:
    """A point just outside side 0 (top), 1 (right), 2 (bottom) or 3 (left), xy."""
    t = rng.uniform(0.05, 0.95)
    return np.array([(t * w, -2.0), (w + 1.0, t * h), (t * w, h + 1.0), (-2.0, t * h)][side])


def _fill_ellipse(canvas: np.ndarray, center: np.ndarray, axes: np.ndarray, theta: float) -> None:
    cv2.ellipse(
        canvas, (int(round(center[0])), int(round(center[1]))), (max(1, int(axes[0])), max(1, int(axes[1]))),
        float(np.degrees(theta)), 0, 360, 1, thickness=-1, lineType=cv2.LINE_8,
    )


_DRAW = {"fur": _draw_fur, "wires": _draw_wires, "vessels": _draw_vessels, "roads": _draw_roads}


# ---------------------------------------------------------------------------------------------- colour


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """(h, w) float32 smooth noise in [0, 1]: a coarse random grid (one node per ``cell`` px) interpolated
    bicubically. The first grid row/column lies outside the output so its edge effects do not show."""
    grid = rng.random((h // cell + 3, w // cell + 3), dtype=np.float32)
    to_out = np.float32([[cell, 0, -cell], [0, cell, -cell]])  # grid node (u, v) -> pixel (cell*(u-1), cell*(v-1))
    out = cv2.warpAffine(grid, to_out, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / np.float32(max(hi - lo, 1e-6))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 textured background; every pixel has R - max(G, B) <= 30 and B - max(R, G) <= 30."""
    s = min(h, w)
    i, j = rng.choice(len(_PALETTE), 2, replace=False)
    c0, c1 = _PALETTE[i], _PALETTE[j]
    mix = _smooth_noise(rng, h, w, max(4, s // 5))
    shade = _smooth_noise(rng, h, w, max(2, s // 24))  # [0, 1]; centred by the -25 below
    grain = rng.standard_normal((h, w), dtype=np.float32)
    channels = []
    for c in range(3):
        # c0 + (c1 - c0) * mix + 50 * (shade - 0.5) + 4 * grain, per channel with cv2 (fast on big images)
        ch = cv2.addWeighted(mix, float(c1[c] - c0[c]), shade, 50.0, float(c0[c]) - 25.0)
        ch = cv2.scaleAdd(grain, 4.0, ch)
        channels.append(cv2.convertScaleAbs(ch))  # rounds and saturates to uint8 (values are far above 0)
    r, g, b = channels
    r = np.minimum(r, cv2.add(np.maximum(g, b), _BG_MAX_DOMINANCE))
    b = np.minimum(b, cv2.add(np.maximum(r, g), _BG_MAX_DOMINANCE))
    return cv2.merge([r, g, b])


def _paint(rng: np.random.Generator, image: np.ndarray, where: np.ndarray, base, *, channel: int) -> None:
    """Paint ``where`` with ``base`` RGB + jitter, keeping ``channel`` >= 120 above the other two channels."""
    n = int(np.count_nonzero(where))
    if n == 0:
        return
    px = np.asarray(base, np.int16)[None] + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, (n, 3), dtype=np.int16)
    px = np.clip(px, 0, 255)
    others = [c for c in range(3) if c != channel]
    cap = px[:, channel] - (_KEY_LOW + _KEY_SPAN)
    for c in others:
        np.minimum(px[:, c], cap, out=px[:, c])
    image[where] = np.clip(px, 0, 255).astype(np.uint8)


def _key(dominance: np.ndarray) -> np.ndarray:
    return np.clip((dominance.astype(np.float32) - _KEY_LOW) / np.float32(_KEY_SPAN), 0.0, 1.0)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"image must be (H, W, 3) uint8 RGB, got {got}")
    return image
