"""Overlays people can look at (``finedetail.outputs.draw_overlay``): visible on content of the outline's own colour,
and still visible when a large image is viewed scaled down to fit a screen."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from finedetail.codecs import decode_image
from finedetail.outputs import CLASS_COLORS, HALO_COLOR, draw_overlay, overlay_width, render_outputs


def _red_scene(side: int) -> tuple[np.ndarray, np.ndarray]:
    """A red image (255, 0, 0: class 1's own outline colour) and a square mask over its middle half."""
    image = np.zeros((side, side, 3), np.uint8)
    image[..., 0] = 255
    mask = np.zeros((1, side, side), bool)
    mask[0, side // 4: 3 * side // 4, side // 4: 3 * side // 4] = True
    return image, mask


def _contrast(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest channel difference, per pixel."""
    return np.abs(a.astype(int) - b.astype(int)).max(-1)


def test_outline_shows_on_red_content():
    """On red content, the red outline has a dark halo on both sides: every crossing of the mask's edge passes a
    dark pixel (an outline that is only red would leave the image unchanged there: a 1-px red line on red)."""
    image, mask = _red_scene(64)
    out = draw_overlay(image, mask)
    assert overlay_width(image.shape[:2]) == 1
    row = out[32]  # crosses the left edge at x=16 and the right one at x=47
    dark = row.max(-1) <= 64
    assert dark[13:17].any() and dark[16:20].any(), row[12:21]  # outside and inside the left edge
    assert dark[44:48].any() and dark[47:51].any(), row[43:52]
    assert (row[16] == CLASS_COLORS[0]).all() and (row[15] == HALO_COLOR).all() and (row[17] == HALO_COLOR).all()
    assert (out[5, 5] == image[5, 5]).all()  # away from the mask: untouched


def test_outline_width_grows_with_image_size_and_survives_downscaling():
    """A 4096 px overlay viewed at 512 px (8x smaller, as a browser fits it to a window) still shows its outline
    with contrast against the red content; its line is wider than a 512 px image's."""
    small_img, small_mask = _red_scene(512)
    big_img, big_mask = _red_scene(4096)
    w_small, w_big = overlay_width((512, 512)), overlay_width((4096, 4096))
    assert w_small == 1 and w_big >= 6
    small, big = draw_overlay(small_img, small_mask), draw_overlay(big_img, big_mask)
    def edge_span(out: np.ndarray, image: np.ndarray) -> int:  # changed pixels around the left edge, end to end
        side = image.shape[0]
        changed = np.flatnonzero(_contrast(out[side // 2], image[side // 2])[: side // 2] > 0)
        return int(changed.max() - changed.min() + 1)

    span_small, span_big = edge_span(small, small_img), edge_span(big, big_img)
    assert span_small == 3 and span_big >= 4 * span_small, (span_small, span_big)  # halo + outline + halo
    shown = cv2.resize(big, (512, 512), interpolation=cv2.INTER_AREA)
    plain = cv2.resize(big_img, (512, 512), interpolation=cv2.INTER_AREA)
    edge = _contrast(shown[256, 124:132], plain[256, 124:132]).max()  # the left edge sits at x = 1024 / 8 = 128
    assert edge >= 100, edge
    # the old 1-px outline, scaled the same way, all but vanishes (and here it is red on red: nothing at all)
    old = big_img.copy()
    inner = cv2.erode(big_mask[0].view(np.uint8), cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    old[(big_mask[0].view(np.uint8) > inner)] = (255, 0, 0)
    assert _contrast(cv2.resize(old, (512, 512), interpolation=cv2.INTER_AREA)[256, 124:132],
                     plain[256, 124:132]).max() < 100


def test_multiclass_overlay_uses_each_class_colour():
    image = np.full((40, 60, 3), 128, np.uint8)
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 10:30, 35:55] = True
    files = render_outputs(image, masks.astype(np.float32), masks, classes=["a", "b"])
    out = decode_image(files[("overlays", ".png")])
    assert (out[20, 5] == CLASS_COLORS[0]).all() and (out[20, 35] == CLASS_COLORS[1]).all()
    assert (out[20, 4] == HALO_COLOR).all() and (out[20, 34] == HALO_COLOR).all()
    # translucent fill: each class's inside leans to its colour, the grey content still shows through
    for c, x in ((0, 15), (1, 45)):
        want = np.rint(0.7 * 128 + 0.3 * np.array(CLASS_COLORS[c])).astype(np.uint8)
        np.testing.assert_array_equal(out[20, x], want)
    assert (out[2, 30] == 128).all()


def test_overlay_width_and_errors():
    assert [overlay_width((h, 10)) for h in (10, 959, 961, 6000)] == [1, 1, 2, 9]
    image, mask = _red_scene(8)
    np.testing.assert_array_equal(draw_overlay(image, np.zeros_like(mask)), image)
    with pytest.raises(TypeError, match=r"masks must be \(C, H, W\) bool"):
        draw_overlay(image, mask[0])
    with pytest.raises(ValueError, match="width must be an int >= 1"):
        draw_overlay(image, mask, width=0)
    with pytest.raises(ValueError, match="colors must be RGB triples"):
        draw_overlay(image, mask, colors=[(300, 0, 0)])


def test_one_pixel_outline_is_the_inner_boundary_and_the_frame_counts_as_background():
    """Width 1: the outline is the mask pixels 4-next to background; a mask touching the frame is outlined there."""
    image = np.full((6, 6, 3), 9, np.uint8)
    out = draw_overlay(image, np.ones((1, 6, 6), bool), width=1, alpha=0.0, colors=[(1, 2, 3)])
    frame = np.ones((6, 6), bool)
    frame[1:5, 1:5] = False
    np.testing.assert_array_equal((out == (1, 2, 3)).all(-1), frame)
    halo = np.zeros((6, 6), bool)
    halo[1:5, 1:5] = True
    halo[2:4, 2:4] = False
    np.testing.assert_array_equal((out == HALO_COLOR).all(-1), halo)
    assert (image == 9).all()  # input untouched
