"""Codecs: every bad input is built in memory with Pillow (or by hand, for crafted headers)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from finedetail.codecs import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    decode_image_strips,
    decode_label_map,
    decode_mask,
    encode_png,
    image_pixels,
)

RGB = np.array(
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [200, 100, 50], [255, 255, 255]]], np.uint8
)  # 2 rows x 3 cols


def _save(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(w: int, h: int) -> bytes:
    """A syntactically valid PNG (good CRCs) whose IHDR claims w x h RGB but whose IDAT holds 10 zero bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + _chunk(b"IEND", b"")
    )


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------- good input


def test_png_roundtrip_rgb_is_exact_and_keeps_channel_order():
    out = decode_image(encode_png(RGB))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


def test_png_roundtrip_via_pillow_agrees_on_channel_order():
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(RGB)))), RGB)


def test_one_by_one_image():
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(RGB[:1, :1]))), RGB[:1, :1])


@pytest.mark.parametrize(
    ("mode", "expected_first_pixel"),
    [
        ("L", 76),  # ITU-R 601 luma of pure red, grey replicated
        ("1", 0),  # luma 76 < 128 -> black
        ("LA", 76),
        ("RGBA", (255, 0, 0)),
        ("P", (255, 0, 0)),
    ],
)
def test_modes_convert_to_rgb(mode, expected_first_pixel):
    out = decode_image(_save(Image.fromarray(RGB).convert(mode)))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], np.broadcast_to(expected_first_pixel, (3,)))


def test_alpha_is_dropped_not_composited():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 0)  # fully transparent, colour kept as stored
    rgba[0, 1] = (10, 20, 30, 255)
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(rgba, "RGBA"))), rgba[:, :, :3])


def test_palette_with_transparency_and_pa_mode():
    p = Image.fromarray(RGB).convert("P")  # web palette: colours are quantised
    expected = np.asarray(p.convert("RGB"))
    p.info["transparency"] = 0
    np.testing.assert_array_equal(decode_image(_save(p)), expected)
    np.testing.assert_array_equal(decode_image(_save(p.convert("PA"), "TIFF")), expected)


def test_cmyk_jpeg_is_converted_to_rgb():
    im = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    data = _save(im, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert out.shape == (8, 16, 3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), (255, 0, 0), atol=6)


def test_exif_orientation_6_jpeg_is_returned_as_displayed():
    # Stored 16 wide x 8 tall, red 4x4 block top-left, blue elsewhere. Orientation 6 = "rotate 90 deg clockwise
    # to display": the viewer shows 8 wide x 16 tall with the red block top-RIGHT.
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:] = (0, 0, 255)
    stored[:4, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data)
    assert out.shape == (16, 8, 3)
    assert np.abs(out[1, 6].astype(int) - (255, 0, 0)).max() < 40  # top-right: red
    assert np.abs(out[1, 1].astype(int) - (0, 0, 255)).max() < 40  # top-left: blue
    assert np.abs(out.astype(int) - np.rot90(stored, k=-1)).mean() < 8


def test_sixteen_bit_png_scales_65535_to_255():
    vals = np.array([[0, 257 * 128, 65535, 1000, 65535 - 200]], np.uint16)
    data = _save(Image.fromarray(vals))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data)
    # round(v * 255 / 65535): 8-bit values stored as v * 257 come back exactly.
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255, 4, 254])
    assert (out == out[:, :, :1]).all()


def test_sixteen_bit_big_endian_tiff():
    vals = np.array([[0, 257 * 7, 65535]], np.uint16)
    im = Image.frombytes("I;16B", (3, 1), vals.astype(">u2").tobytes())
    data = _save(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    np.testing.assert_array_equal(decode_image(data)[0, :, 0], [0, 7, 255])


def test_int32_and_float_tiffs():
    ints = Image.fromarray(np.array([[-5, 0, 257 * 9, 65535, 70000]], np.int32), "I")
    np.testing.assert_array_equal(decode_image(_save(ints, "TIFF"))[0, :, 0], [0, 0, 9, 255, 255])
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0, np.nan, -1.0]], np.float32), "F")
    np.testing.assert_array_equal(decode_image(_save(floats, "TIFF"))[0, :, 0], [0, 128, 255, 255, 0, 0])


def test_memoryview_and_bytearray_inputs():
    data = encode_png(RGB)
    np.testing.assert_array_equal(decode_image(bytearray(data)), RGB)
    np.testing.assert_array_equal(decode_image(memoryview(data)), RGB)


# ---------------------------------------------------------------------------------------------------- bad input


def test_load_truncated_images_stays_off():
    import finedetail.codecs  # noqa: F401  (importing must not flip it)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_zero_bytes():
    with pytest.raises(ImageDecodeError, match=r"empty input \(0 bytes\)"):
        decode_image(b"")


def test_not_bytes_is_a_type_error():
    with pytest.raises(TypeError, match="must be bytes, got str"):
        decode_image("photo.jpg")  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [b"hello, I am a text file named photo.jpg\n", b"\x89PNG\r\n", b"\x00" * 64])
def test_non_image(data):
    with pytest.raises(ImageDecodeError, match=r"image: (not a recognised image format|unreadable)"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated(fmt, keep):
    data = _save(Image.fromarray(_noise(64, 64)), fmt)
    with pytest.raises(ImageDecodeError, match=r"truncated or corrupt|unreadable"):
        decode_image(data[: int(len(data) * keep)])


def test_corrupt_png_crc_is_an_error():
    data = bytearray(_save(Image.fromarray(_noise(16, 16))))
    data[40] ^= 0xFF  # inside IDAT
    with pytest.raises(ImageDecodeError):
        decode_image(bytes(data))


def test_bomb_header_100000_squared_is_refused_without_decoding():
    data = _png_header_only(100_000, 100_000)
    assert len(data) < 100
    with pytest.raises(ImageDecodeError, match=r"decompression bomb|max_pixels"):
        decode_image(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_own_pixel_limit_is_checked_before_pixels_are_loaded(monkeypatch):
    def no_load(self):  # proves the refusal happens before any pixel is decoded or allocated
        raise AssertionError("pixels were loaded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_load)
    # 10000 x 10000 is under Pillow's hard limit, so only our check can refuse it.
    with pytest.raises(ImageDecodeError, match=r"10000x10000 = 100000000 pixels, more than max_pixels=50000000"):
        decode_image(_png_header_only(10_000, 10_000), max_pixels=50_000_000)


@pytest.mark.parametrize(("max_pixels", "ok"), [(6, True), (5, False)])
def test_max_pixels_edge_is_inclusive(max_pixels, ok):
    data = encode_png(RGB)  # 2 x 3 = 6 pixels
    if ok:
        assert decode_image(data, max_pixels=max_pixels).shape == (2, 3, 3)
    else:
        with pytest.raises(ImageDecodeError, match="more than max_pixels=5"):
            decode_image(data, max_pixels=max_pixels)


def test_default_max_pixels_is_pillows_hard_limit():
    assert DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_max_pixels(bad):
    with pytest.raises(ValueError, match="max_pixels must be an int >= 1"):
        decode_image(encode_png(RGB), max_pixels=bad)


def test_masks_and_label_maps_share_the_guards():
    for fn in (decode_mask, decode_label_map):
        with pytest.raises(ImageDecodeError, match="empty input"):
            fn(b"")
        with pytest.raises(ImageDecodeError):
            fn(_png_header_only(100_000, 100_000))


# --------------------------------------------------------------------------------------------- masks and labels


def test_decode_mask_grey_nonzero_is_foreground():
    grey = np.array([[0, 1, 255], [0, 0, 7]], np.uint8)
    np.testing.assert_array_equal(decode_mask(encode_png(grey)), grey != 0)


def test_decode_mask_roundtrips_bool_and_writes_0_255():
    mask = np.array([[True, False], [False, True]])
    data = encode_png(mask)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), mask * np.uint8(255))
    np.testing.assert_array_equal(decode_mask(data), mask)


def test_decode_mask_rgb_any_channel_and_alpha_ignored():
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[0, 1, 2] = 9  # blue only -> fg
    rgba[0, 2, 3] = 255  # alpha only -> bg
    rgba[0, 3] = (1, 1, 1, 0)  # transparent but coloured -> fg
    np.testing.assert_array_equal(decode_mask(_save(Image.fromarray(rgba, "RGBA"))), [[False, True, False, True]])
    np.testing.assert_array_equal(decode_mask(encode_png(rgba[:, :, :3])), [[False, True, False, True]])


def test_decode_mask_palette_uses_indices_not_colours():
    im = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    im.putpalette([255, 255, 255, 0, 0, 0, 9, 9, 9])  # index 0 is WHITE, index 1 black
    np.testing.assert_array_equal(decode_mask(_save(im)), [[False, True, True]])


def test_decode_mask_one_bit_and_sixteen_bit():
    np.testing.assert_array_equal(
        decode_mask(_save(Image.fromarray(np.array([[True, False]])))), [[True, False]]
    )
    np.testing.assert_array_equal(
        decode_mask(_save(Image.fromarray(np.array([[0, 1, 65535]], np.uint16)))), [[False, True, True]]
    )


def test_decode_label_map_palette_indices_kept():
    idx = np.array([[0, 1, 2], [3, 2, 1]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0])  # VOC-like colours
    out = decode_label_map(_save(im))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, idx)


def test_decode_label_map_grey_values_and_grey_rgb():
    idx = np.array([[0, 5, 255]], np.uint8)
    np.testing.assert_array_equal(decode_label_map(encode_png(idx)), idx)
    np.testing.assert_array_equal(decode_label_map(encode_png(np.repeat(idx[:, :, None], 3, 2))), idx)


def test_decode_label_map_refuses_colour_rgb_and_big_indices():
    with pytest.raises(ImageDecodeError, match="colour-coded RGB label maps are ambiguous"):
        decode_label_map(encode_png(RGB))
    with pytest.raises(ImageDecodeError, match=r"class indices must be 0..255, got values in \[0, 300\]"):
        decode_label_map(_save(Image.fromarray(np.array([[0, 300]], np.uint16))))


# --------------------------------------------------------------------------------------------- encode / overlay


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2), np.float32), np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2, 3), np.uint16)]
)
def test_encode_png_refuses_other_arrays(bad):
    with pytest.raises(TypeError, match=r"must be \(H, W\) uint8/bool or \(H, W, 3\) uint8 RGB"):
        encode_png(bad)


def test_encode_png_non_contiguous_input():
    view = np.ascontiguousarray(np.tile(RGB, (1, 2, 1)))[:, ::2]
    np.testing.assert_array_equal(decode_image(encode_png(view)), view)


def _modes(arr: np.ndarray) -> list[Image.Image]:
    """One image per decoding rule of the module docstring, from an (h, w, 3) uint8 array."""
    rgb = Image.fromarray(arr)
    p_trans = rgb.convert("P")
    p_trans.info["transparency"] = 3
    sixteen = Image.fromarray((arr[..., 0].astype(np.uint16) * 251))
    return [rgb, rgb.convert("L"), rgb.convert("P"), p_trans, rgb.convert("RGBA"), rgb.convert("LA"),
            rgb.convert("CMYK"), sixteen, rgb.convert("1")]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_image_strips_stack_to_decode_image(orientation):
    # every EXIF orientation x every mode rule, odd sizes and a strip height that divides neither side
    arr = np.random.default_rng(orientation).integers(0, 256, (13, 22, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for im in _modes(arr):
        fmt = "JPEG" if im.mode == "CMYK" else "PNG"
        data = _save(im, fmt, exif=exif.tobytes())
        want = decode_image(data)
        (h, w), strips = decode_image_strips(data, rows=5)
        got = list(strips)
        assert (h, w) == want.shape[:2] == ((22, 13) if orientation >= 5 else (13, 22)), im.mode
        assert [y0 for y0, _ in got] == list(range(0, h, 5))
        np.testing.assert_array_equal(np.concatenate([s for _, s in got]), want, err_msg=f"{im.mode}")
        assert image_pixels(data) == 13 * 22


def test_decode_image_strips_and_image_pixels_refuse_like_decode_image():
    data = _save(Image.fromarray(RGB))
    with pytest.raises(ImageDecodeError, match="max_pixels=5"):
        image_pixels(data, max_pixels=5)
    with pytest.raises(ImageDecodeError, match="max_pixels=5"):
        decode_image_strips(data, rows=1, max_pixels=5)
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        image_pixels(b"plain text, not an image")
    with pytest.raises(ValueError, match="rows must be"):
        decode_image_strips(data, rows=0)
