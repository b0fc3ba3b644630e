"""Image, mask and label-map codecs (pure: numpy + Pillow + OpenCV).

Everything that turns bytes into arrays for the job goes through here, so bad input fails in one place with one
error type, ``ImageDecodeError`` (a ``ValueError``), whose message says what was wrong and what to do.

Decoding conventions (``decode_image``):

- Output: ``(H, W, 3) uint8 RGB``, C-contiguous, in DISPLAYED orientation (EXIF orientation applied, the way a
  viewer shows the file), first frame of multi-frame files.
- Size guard: the header's width x height is checked against ``max_pixels`` right after ``Image.open``, which
  reads the header only, so a decompression bomb is refused before its pixels are allocated. Pillow's own guard
  (``PIL.Image.MAX_IMAGE_PIXELS``, 89_478_485: error above twice that) also applies; its error is reported the
  same way (raise ``PIL.Image.MAX_IMAGE_PIXELS`` too if you need ``max_pixels`` above 178_956_970).
- Truncated files are errors: pixels are fully loaded here and ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left
  False (never set it: Pillow would then return grey-filled images silently).
- Modes: L, 1 -> grey replicated to RGB; P -> its palette colours; LA, PA, RGBA -> alpha DROPPED, the stored
  colour kept as is (no compositing; what ``cv2.imread`` does too); CMYK, YCbCr -> Pillow's conversion to RGB;
  16-bit grey (I;16, I;16B, I;16L) and I (int32, clipped to 0..65535) -> round(v * 255 / 65535), a fixed scale, so
  65535 -> 255 and 8-bit data stored as 16 bit (v * 257) comes back exactly; F (float32) -> taken as [0, 1]:
  round(clip(v, 0, 1) * 255), NaN -> 0.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "decode_image",
    "decode_image_strips",
    "decode_label_map",
    "decode_mask",
    "encode_png",
    "image_pixels",
]

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's hard decompression-bomb limit (2 * MAX_IMAGE_PIXELS)

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageDecodeError(ValueError):
    """Bytes that cannot be turned into the requested array (empty, truncated, not an image, too large, ...)."""


def _describe(data: bytes) -> str:
    """Size plus a guess at what the bytes are, without echoing content into logs and manifests."""
    head = bytes(data[:512]).lstrip()
    low = head[:64].lower()
    if low.startswith((b"<?xml", b"<error")):
        kind = "looks like XML (an object-store error document?)"
    elif low.startswith((b"<!doctype html", b"<html")):
        kind = "looks like an HTML page (a login or error page saved as the file?)"
    elif low.startswith((b"{", b"[")):
        kind = "looks like JSON"
    elif head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        kind = "looks like plain text"
    else:
        kind = "unknown binary data"
    return f"{len(data)} bytes, {kind}"


def _open_header(data: bytes, *, max_pixels: int, what: str) -> Image.Image:
    """Open and size-check one image; no pixel is decoded yet (Pillow reads the header only)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} data must be bytes, got {type(data).__name__}; read the file in binary mode")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be an int >= 1, got {max_pixels=}")
    data = bytes(data)
    if len(data) == 0:
        raise ImageDecodeError(f"{what}: empty input (0 bytes); expected an encoded image such as PNG or JPEG")
    try:
        with warnings.catch_warnings():  # Pillow warns from MAX_IMAGE_PIXELS on; max_pixels (below) is the guard
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageDecodeError(
            f"{what}: not a recognised image format ({_describe(data)}); expected PNG, JPEG, TIFF, WebP, ... "
            "(a file extension alone does not make an image)"
        ) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(
            f"{what}: refused as a possible decompression bomb by Pillow ({e}); if the image is genuine, raise "
            "PIL.Image.MAX_IMAGE_PIXELS and max_pixels"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # Pillow's header parsers raise many types (SyntaxError, struct.error, ...)
        raise ImageDecodeError(
            f"{what}: unreadable or truncated image header ({type(e).__name__}: {e}; {_describe(data)}); "
            "re-download or re-export the file"
        ) from e
    w, h = im.size
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"{what}: header claims {w}x{h} = {w * h} pixels, more than max_pixels={max_pixels}; refused before "
            "decoding (decompression-bomb guard); pass a larger max_pixels if the image is genuine"
        )
    if w == 0 or h == 0:
        raise ImageDecodeError(f"{what}: header claims an empty {w}x{h} image; expected at least 1x1")
    return im


def _open(data: bytes, *, max_pixels: int, what: str, orient: bool = True) -> Image.Image:
    """Open, size-check (before pixels exist), fully load and (``orient``) EXIF-orient one image."""
    im = _open_header(data, max_pixels=max_pixels, what=what)
    w, h = im.size
    try:
        im.load()
        if orient:
            im = ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, zlib.error, ...
        raise ImageDecodeError(
            f"{what}: {im.format or 'image'} {w}x{h} is truncated or corrupt ({type(e).__name__}: {e}); "
            "re-download or re-export the file"
        ) from e
    return im


def _sixteen_to_u8(arr: np.ndarray) -> np.ndarray:
    v = np.clip(arr.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _grey_u8(im: Image.Image) -> np.ndarray | None:
    """(H, W) uint8 for the modes that need explicit scaling, else None."""
    if im.mode in _SIXTEEN_BIT:
        return _sixteen_to_u8(np.asarray(im))
    if im.mode == "F":
        v = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB in displayed orientation (see the module docstring for modes).

    Raises ImageDecodeError for empty, truncated, corrupt or non-image data and for images whose header claims
    more than ``max_pixels`` pixels (checked before any pixel is decoded).
    """
    return _rgb8(_open(data, max_pixels=max_pixels, what="image"))


def _rgb8(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image (any mode of the module docstring) -> (H, W, 3) uint8 RGB, C-contiguous. Per pixel:
    a crop of the image converts to the same crop of the result."""
    try:
        grey = _grey_u8(im)
        if grey is not None:
            return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        if im.mode == "PA" or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")  # Pillow wants palette transparency resolved through RGBA
        if im.mode != "RGB":
            im = im.convert("RGB")
    except ValueError as e:
        raise ImageDecodeError(
            f"image: pixel mode {im.mode!r} cannot be converted to RGB ({e}); convert the file to RGB first"
        ) from e
    return np.array(im, dtype=np.uint8, copy=True, order="C")


def image_pixels(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Width x height of an encoded image from its header alone (no pixel decoded; the same in either EXIF
    orientation). Raises ImageDecodeError as ``decode_image`` does for data that is not an image or claims more
    than ``max_pixels`` pixels."""
    w, h = _open_header(data, max_pixels=max_pixels, what="image").size
    return w * h


#: EXIF orientation -> (the Pillow transpose that shows the image upright, as ``ImageOps.exif_transpose`` applies
#: it; displayed rows are stored columns; the stored axis runs backwards)
_ORIENTATIONS = {
    1: (None, False, False), 2: (Image.Transpose.FLIP_LEFT_RIGHT, False, False),
    3: (Image.Transpose.ROTATE_180, False, True), 4: (Image.Transpose.FLIP_TOP_BOTTOM, False, True),
    5: (Image.Transpose.TRANSPOSE, True, False), 6: (Image.Transpose.ROTATE_270, True, False),
    7: (Image.Transpose.TRANSVERSE, True, True), 8: (Image.Transpose.ROTATE_90, True, True),
}


def decode_image_strips(data: bytes, *, rows: int, max_pixels: int = DEFAULT_MAX_PIXELS
                        ) -> tuple[tuple[int, int], Iterator[tuple[int, np.ndarray]]]:
    """``decode_image`` in horizontal strips: ``((H, W), iterator of (y0, (h, W, 3) uint8 RGB))``, strips of
    ``rows`` rows top to bottom in DISPLAYED orientation; stacked, they are exactly ``decode_image(data)``.

    The file is decoded once (Pillow decodes PNG and JPEG whole); each strip is cut from the stored pixels, turned
    upright (EXIF orientation) and converted to RGB on its own, so memory is the decoded image in its stored mode
    plus one strip, not the three full-size copies ``decode_image`` makes on the way to its array.
    """
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"rows must be an int >= 1, got {rows=}")
    im = _open(data, max_pixels=max_pixels, what="image", orient=False)
    method, swap, backwards = _ORIENTATIONS.get(int(im.getexif().get(0x0112, 1) or 1), _ORIENTATIONS[1])
    w, h = im.size
    out_h, out_w = (w, h) if swap else (h, w)
    along = w if swap else h  # stored length of the axis that becomes the displayed rows

    def strips() -> Iterator[tuple[int, np.ndarray]]:
        for y0 in range(0, out_h, rows):
            y1 = min(out_h, y0 + rows)
            a, b = (along - y1, along - y0) if backwards else (y0, y1)
            part = im.crop((a, 0, b, h) if swap else (0, a, w, b))
            if method is not None:
                part = part.transpose(method)
            yield y0, _rgb8(part)

    return (out_h, out_w), strips()


def decode_mask(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded mask bytes -> (H, W) bool, displayed orientation (EXIF applied, like ``decode_image``).

    Foreground = nonzero: grey value or 16-bit value != 0; palette (P) images use the INDEX (index 0 = background);
    RGB(A) masks are foreground where any colour channel is nonzero (alpha ignored).
    """
    im = _open(data, max_pixels=max_pixels, what="mask")
    arr = np.asarray(im)
    if arr.ndim == 3:
        if im.mode.endswith(("A", "a", "X")):  # alpha / padding band
            arr = arr[:, :, :-1]
        return np.ascontiguousarray(arr.any(axis=2))
    return np.ascontiguousarray(arr != 0)


def decode_label_map(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded class-index map -> (H, W) uint8 class indices (0 = background), displayed orientation.

    P (palette) images keep their palette INDICES (not colours); L and 1 keep their values (1-bit: 0/1);
    16-bit / int images must hold values <= 255; RGB is accepted only when grey (R == G == B).
    """
    im = _open(data, max_pixels=max_pixels, what="label map")
    if im.mode == "1":
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if im.mode in ("P", "L"):
        return np.array(im, dtype=np.uint8, copy=True, order="C")
    if im.mode in ("PA", "LA"):
        return np.ascontiguousarray(np.asarray(im)[:, :, 0])
    if im.mode in _SIXTEEN_BIT:
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageDecodeError(
                f"label map: class indices must be 0..255, got values in [{lo}, {hi}] ({im.mode}); "
                "re-encode with at most 256 classes"
            )
        return arr.astype(np.uint8)
    if im.mode in ("RGB", "RGBA"):
        arr = np.asarray(im)
        if np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 0], arr[:, :, 2]):
            return np.ascontiguousarray(arr[:, :, 0])
        raise ImageDecodeError(
            "label map: colour-coded RGB label maps are ambiguous; expected a palette (P) or grey (L) PNG whose "
            "values are class indices; map colours to indices first"
        )
    raise ImageDecodeError(f"label map: unsupported pixel mode {im.mode!r}; save class indices as an L or P PNG")


def encode_png(array: np.ndarray, *, compression: int = 1) -> bytes:
    """(H, W) uint8 grey, (H, W, 3) uint8 RGB, or (H, W) bool (written as 0 / 255) -> PNG bytes.

    ``compression`` is zlib's level 0..9 (1: fast, masks compress well anyway). Lossless: ``decode_image`` /
    ``decode_mask`` / ``decode_label_map`` give the array back.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array must be a numpy array, got {type(array).__name__}")
    if isinstance(compression, bool) or not isinstance(compression, (int, np.integer)) or not 0 <= compression <= 9:
        raise ValueError(f"compression must be an int in 0..9, got {compression=}")
    if array.dtype == bool and array.ndim == 2:
        array = array.view(np.uint8) * np.uint8(255)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise TypeError(
            f"array must be (H, W) uint8/bool or (H, W, 3) uint8 RGB, got {array.dtype} {array.shape}; "
            "convert probabilities with finedetail.types.to_u8"
        )
    if array.size == 0:
        raise ValueError(f"array is empty ({array.shape}); PNG needs at least 1x1")
    bgr = array if array.ndim == 2 else array[:, :, ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed on a {array.dtype} {array.shape} array")
    return buf.tobytes()
