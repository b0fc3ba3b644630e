"""SAM (segment-anything) as a ``PromptedRefiner``: one encoder pass per image, all components in batched decoder calls.

Frames. The library's continuous frame puts pixel (r, c) on [c, c+1) x [r, r+1) with its centre at (c+0.5, r+0.5).
SAM resizes the image so its long side is 1024 (``ResizeLongestSide``; the "input frame", size ``input_hw``, is
``finedetail.frames.LongestSide(hw, 1024)``, which carries the size, the padding and the coordinate forms), pads
bottom/right to 1024 x 1024, and its prompt encoder adds 0.5 to every coordinate it receives ("shift to centre of
pixel"), i.e. it takes pixel-INDEX coordinates in the input frame. The conversions below are exact in that frame:

- points: ``p_in = p * (input_w / w, input_h / h)`` (continuous, input frame), passed as ``p_in - 0.5``, so SAM's
  own +0.5 lands the point at exactly ``p_in``. (``SamPredictor`` scales index coordinates instead, which places a
  point ``0.5 * (scale - 1)`` px off in the input frame; the difference matters for zoomed crops.)
- boxes: ``b_in = b * scale`` is the continuous box (outer pixel edges, ``(cmin, rmin, cmax+1, rmax+1)`` for a
  tight mask box). SAM's boxes are inclusive pixel-index boxes, as ``segment_anything.utils.amg.batched_mask_to_box``
  makes them (``(cmin, rmin, cmax, rmax)``), so we pass ``b_in - (0, 0, 1, 1)`` (the max corner never goes below the
  min corner), and after SAM's +0.5 the corners sit on the centres of the extreme pixels.
- mask input: ``ComponentPrompt.logits`` is already (256, 256) in SAM's padded 1024 frame
  (``prompts.mask_to_sam_logits``).
- outputs: the chosen low-res logits go through ``Sam.postprocess_masks`` (upsample to 1024, crop the padding,
  resize to (h, w), all bilinear: ``LongestSide.from_low_res`` in torch, on the device) and a sigmoid: (N, H, W)
  float32 probabilities in the image frame.
- pixels: the image itself is resized by segment-anything's own ``ResizeLongestSide.apply_image`` (PIL bilinear),
  so SAM sees exactly what ``SamPredictor`` feeds it; only its size comes from the frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from finedetail.config import MULTIMASK_MODES
from finedetail.models.checkpoints import resolve_device, resolve_dtype
from finedetail.models.fast_attention import disable_fast_attention, enable_fast_attention
from finedetail.frames import LongestSide
from finedetail.types import ComponentPrompt, check_image

__all__ = [
    "MULTIMASK_MODES",
    "SamEmbedding",
    "SamRefiner",
    "check_refiner_options",
    "choose_masks",
    "coarse_low_res",
    "decode_in_groups",
    "pad_points",
    "resolve_device",
    "resolve_dtype",
    "select_multimask",
    "sparse_prompts",
    "to_sam_boxes",
    "to_sam_points",
]

def to_sam_points(points: np.ndarray, frame: LongestSide) -> np.ndarray:
    """(N, 2) xy continuous image frame -> (N, 2) float64 pixel-index coordinates in SAM's input frame (see module
    docstring): ``frame.apply_coords(p) - 0.5``."""
    return frame.apply_coords(np.asarray(points, np.float64).reshape(-1, 2)) - 0.5


def to_sam_boxes(boxes: np.ndarray, frame: LongestSide) -> np.ndarray:
    """(N, 4) XYXY continuous image frame -> (N, 4) float64 inclusive pixel-index boxes in SAM's input frame:
    ``frame.apply_boxes(b) - (0, 0, 1, 1)``, with the max corner clamped to at least the min corner (a box thinner
    than one input pixel collapses to a line instead of inverting)."""
    out = frame.apply_boxes(np.asarray(boxes, np.float64).reshape(-1, 4))
    out[:, 2:] = np.maximum(out[:, 2:] - 1.0, out[:, :2])
    return out


def pad_points(points: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-component points -> ((N, P, 2) float64, (N, P) int64) with P = the longest list; missing rows are
    (0, 0) with label -1, SAM's "not a point" (its prompt encoder replaces their embedding by ``not_a_point_embed``)."""
    n = len(points)
    p = max((len(x) for x in points), default=0)
    coords = np.zeros((n, p, 2), np.float64)
    labs = np.full((n, p), -1, np.int64)
    for i, (pt, lb) in enumerate(zip(points, labels)):
        coords[i, : len(pt)] = pt
        labs[i, : len(lb)] = lb
    return coords, labs


def coarse_low_res(mask: np.ndarray, frame: LongestSide, *, low_res: int = 256) -> np.ndarray:
    """A component's (H, W) bool mask in the frame of SAM's low-res outputs: resized to ``frame.size`` (bilinear, no
    area averaging), zero-padded to ``frame.long_side``, area-averaged to ``low_res`` and thresholded at 0.5 ->
    (low_res, low_res) bool."""
    resized = frame.apply_image(mask.astype(np.float32), interp="bilinear")
    return frame.to_low_res(resized, low_res) >= 0.5


def select_multimask(low_res_logits: np.ndarray, iou_pred: np.ndarray, *, mode: str,
                     coarse: np.ndarray | None = None) -> np.ndarray:
    """Which of SAM's K candidate masks to keep per component -> (N,) int64 indices.

    low_res_logits: (N, K, h, w) float; iou_pred: (N, K) float (SAM's predicted IoU).
    mode "iou": highest predicted IoU. mode "coarse": highest IoU between ``logits > 0`` and ``coarse`` ((N, h, w)
    bool, same low-res frame), ties broken by predicted IoU. mode "single": K must be 1, returns zeros.
    """
    n, k = iou_pred.shape
    if mode == "single" or k == 1:
        return np.zeros(n, np.int64)
    if mode == "iou":
        return np.argmax(iou_pred, axis=1)
    if mode != "coarse":
        raise ValueError(f"mode must be one of {MULTIMASK_MODES}, got {mode!r}")
    if coarse is None:
        raise ValueError("mode 'coarse' needs the coarse masks (N, h, w) bool")
    pred = low_res_logits > 0
    c = coarse[:, None]
    inter = np.logical_and(pred, c).sum(axis=(2, 3))
    union = np.logical_or(pred, c).sum(axis=(2, 3))
    overlap = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    best = overlap == overlap.max(axis=1, keepdims=True)
    return np.argmax(np.where(best, iou_pred, -np.inf), axis=1)


def check_refiner_options(model: str, *, multimask: str, encode_batch: int, decode_batch: int, use_box: bool,
                          use_points: bool, use_mask_input: bool) -> None:
    """ValueError unless the options every SAM-family refiner takes are valid (``model`` names it in the message)."""
    if multimask not in MULTIMASK_MODES:
        raise ValueError(f"multimask must be one of {MULTIMASK_MODES}, got {multimask=}")
    if encode_batch < 1 or decode_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got {encode_batch=} {decode_batch=}")
    if not (use_box or use_points or use_mask_input):
        raise ValueError(f"at least one of use_box, use_points, use_mask_input must be True; {model} needs a prompt")


def decode_in_groups(prompts: Sequence[ComponentPrompt], hw: tuple[int, int], decode, *, use_mask_input: bool,
                     decode_batch: int) -> np.ndarray:
    """``decode(chunk) -> (n, H, W)`` over the prompts in chunks of ``decode_batch`` -> (N, H, W) float32 in prompt
    order. With ``use_mask_input``, components with and without logits go in separate chunks (a decoder call takes
    mask input for all of its rows or none). Each prompt's mask must be ``hw``."""
    for i, p in enumerate(prompts):
        if p.mask.shape != tuple(hw):
            raise ValueError(f"prompt {i}: mask is {p.mask.shape} but the encoded image is {tuple(hw)}; prompts must "
                             "be in the frame of the image passed to encode()")
    out = np.empty((len(prompts), *hw), np.float32)
    groups = [list(range(len(prompts)))]
    if use_mask_input:
        groups = [[i for i, p in enumerate(prompts) if p.logits is not None],
                  [i for i, p in enumerate(prompts) if p.logits is None]]
    for group in groups:
        for start in range(0, len(group), decode_batch):
            idx = group[start : start + decode_batch]
            out[idx] = decode([prompts[i] for i in idx])
    return out


def sparse_prompts(prompts: Sequence[ComponentPrompt], frame, *, use_points: bool, use_box: bool
                   ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(points (N, P, 2) float64, labels (N, P) int64, boxes (N, 4) float64) in the model's input ``frame`` as SAM's
    prompt encoder takes them (``to_sam_points``, ``pad_points``, ``to_sam_boxes``); None for a part that is off
    (points also when no component has any)."""
    coords = labels = boxes = None
    if use_points and any(len(p.points) for p in prompts):
        coords, labels = pad_points([to_sam_points(p.points, frame) for p in prompts],
                                    [np.asarray(p.labels) for p in prompts])
    if use_box:
        boxes = to_sam_boxes(np.stack([p.box for p in prompts]), frame)
    return coords, labels, boxes


def choose_masks(low_res: torch.Tensor, iou: torch.Tensor, prompts: Sequence[ComponentPrompt], frame, *,
                 mode: str) -> torch.Tensor:
    """The decoder's (N, K, l, l) low-res logits and (N, K) predicted IoU -> the chosen (N, 1, l, l) logits
    (``select_multimask``; mode "coarse" compares with each prompt's mask in ``frame``'s low-res grid)."""
    coarse = None
    if mode == "coarse" and low_res.shape[1] > 1:
        coarse = np.stack([coarse_low_res(p.mask, frame, low_res=low_res.shape[-1]) for p in prompts])
    choice = select_multimask(low_res.cpu().numpy(), iou.cpu().numpy(), mode=mode, coarse=coarse)
    pick = torch.as_tensor(choice, device=low_res.device)
    return low_res[torch.arange(len(prompts), device=low_res.device), pick][:, None]


@dataclass(frozen=True, eq=False)
class SamEmbedding:
    """One image encoded by a ``SamRefiner``.

    features: (1, C, 64, 64) float32 tensor on the refiner's device (C = 256 for the official models).
    frame: the image's ``LongestSide`` frame; ``hw`` = ``frame.src`` is the (h, w) of the image that was encoded,
    ``input_hw`` = ``frame.size`` its size after ResizeLongestSide (long side 1024).
    owner: the ``Sam`` module that encoded it; any ``SamRefiner`` wrapping that same module may decode it.
    """

    features: torch.Tensor
    frame: LongestSide
    owner: object = field(repr=False)

    @property
    def hw(self) -> tuple[int, int]:
        return self.frame.src

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.frame.size


class SamRefiner:
    """``PromptedRefiner`` backed by a ``segment_anything`` ``Sam`` (any size: tiny test models or vit_b/l/h).

    multimask: "coarse" (default) asks SAM for its 3 candidates and keeps the one that best overlaps the component's
        coarse mask (IoU in SAM's 256x256 low-res frame, see ``coarse_low_res``); "iou" keeps SAM's highest predicted
        IoU; "single" asks for one mask (``multimask_output=False``).
    encode_batch: images per encoder forward. decode_batch: components per decoder call.
    use_box / use_points / use_mask_input: which parts of each ``ComponentPrompt`` reach SAM. A component whose
        ``logits`` is None goes through a separate decoder call without mask input (SAM's "no mask" embedding).
    device: None = cuda if available else cpu. dtype: None = bfloat16 autocast for the encoder on CUDA, float32 on
        CPU; the decoder always runs in float32 (it is cheap and its logits feed thresholds).
    fast_attention: True switches the encoder's attention modules of ``sam`` IN PLACE to the fused SDPA forward
        (``finedetail.models.fast_attention``; same function, ~1e-6 from the reference in fp32); False switches them
        back to ``segment_anything``'s reference forward. compile: ``torch.compile`` the image encoder in place
        (``nn.Module.compile``: parameters and ``state_dict`` keys unchanged); the first forward of every new batch
        shape pays the compile time.
    """

    name = "sam"

    def __init__(
        self,
        sam: Any,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        multimask: str = "coarse",
        encode_batch: int = 4,
        decode_batch: int = 64,
        use_box: bool = True,
        use_points: bool = True,
        use_mask_input: bool = True,
        fast_attention: bool = True,
        compile: bool = False,
    ) -> None:
        check_refiner_options("SAM", multimask=multimask, encode_batch=encode_batch, decode_batch=decode_batch,
                              use_box=use_box, use_points=use_points, use_mask_input=use_mask_input)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.sam = sam.to(self.device).eval()
        if fast_attention:
            enable_fast_attention(self.sam.image_encoder)
        else:
            disable_fast_attention(self.sam.image_encoder)
        if compile:
            self.sam.image_encoder.compile()
        self.fast_attention, self.compiled = bool(fast_attention), bool(compile)
        self.multimask = multimask
        self.encode_batch = int(encode_batch)
        self.decode_batch = int(decode_batch)
        self.use_box = use_box
        self.use_points = use_points
        self.use_mask_input = use_mask_input
        self.input_size = int(sam.image_encoder.img_size)
        self.low_res = int(sam.prompt_encoder.mask_input_size[0])
        self.transform = ResizeLongestSide(self.input_size)
        self.encoder_passes = 0

    @classmethod
    def from_checkpoint(
        cls,
        uri: str | os.PathLike | None,
        *,
        model_type: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        sha256: str | None = None,
        device: str | torch.device | None = None,
        fast_attention: bool = True,
        compile: bool = False,
        **kwargs: Any,
    ) -> "SamRefiner":
        """Load weights with ``checkpoints.load_sam`` (architecture inferred unless ``model_type``) and wrap them."""
        from finedetail.models.checkpoints import load_sam

        dev = resolve_device(device)
        sam = load_sam(uri, model_type=model_type, device=str(dev), cache_dir=cache_dir, sha256=sha256)
        return cls(sam, device=dev, fast_attention=fast_attention, compile=compile, **kwargs)

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def encode(self, images: Sequence[np.ndarray]) -> list[SamEmbedding]:
        """(H, W, 3) uint8 RGB images -> one ``SamEmbedding`` each; ``encoder_passes += len(images)``.

        Each image is resized exactly as ``SamPredictor.set_image`` does (``ResizeLongestSide.apply_image``), then
        normalised and zero-padded to 1024 x 1024 by ``Sam.preprocess``; up to ``encode_batch`` images share one
        encoder forward.
        """
        out: list[SamEmbedding] = []
        for start in range(0, len(images), self.encode_batch):
            chunk = images[start : start + self.encode_batch]
            batch, frames = [], []
            for image in chunk:
                check_image(image)
                frame = LongestSide(image.shape[:2], self.input_size)
                resized = self.transform.apply_image(np.ascontiguousarray(image))
                if resized.shape[:2] != frame.size:  # one size rule: ours and segment-anything's must agree
                    raise RuntimeError(f"segment-anything resized {image.shape[:2]} to {resized.shape[:2]}, the "
                                       f"frame expects {frame.size}; report this with the image size")
                x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).float()
                batch.append(self.sam.preprocess(x))
                frames.append(frame)
            with torch.inference_mode(), self._autocast():
                feats = self.sam.image_encoder(torch.stack(batch)).float()
            self.encoder_passes += len(chunk)
            for i, frame in enumerate(frames):
                out.append(SamEmbedding(features=feats[i : i + 1], frame=frame, owner=self.sam))
        return out

    def _check_embedding(self, embedding: Any) -> SamEmbedding:
        if not isinstance(embedding, SamEmbedding) or embedding.owner is not self.sam:
            got = (type(embedding).__name__ if not isinstance(embedding, SamEmbedding)
                   else "a SamEmbedding of another SAM model")
            raise RuntimeError(
                f"refine needs an embedding made by encode() of a refiner wrapping this SAM model, got {got}; call "
                "refiner.encode([image]) on this refiner and pass its result"
            )
        return embedding

    def refine(self, embedding: Any, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        """All component prompts of one image -> (N, H, W) float32 probabilities (sigmoid of SAM's logits), image frame.

        Components are decoded together in chunks of ``decode_batch`` (points padded with label -1 to equal length);
        N == 0 returns (0, H, W) without touching the model.
        """
        emb = self._check_embedding(embedding)
        h, w = emb.hw
        if len(prompts) == 0:
            return np.zeros((0, h, w), np.float32)
        for i, p in enumerate(prompts):
            if self.use_mask_input and p.logits is not None and p.logits.shape[-2:] != (self.low_res, self.low_res):
                raise ValueError(f"prompt {i}: logits must be ({self.low_res}, {self.low_res}), got {p.logits.shape}; "
                                 "make them with finedetail.prompts.mask_to_sam_logits")
        return decode_in_groups(prompts, (h, w), lambda chunk: self._decode(emb, chunk),
                                use_mask_input=self.use_mask_input, decode_batch=self.decode_batch)

    def _decode(self, emb: SamEmbedding, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        dev = self.device
        points = boxes = masks = None
        coords, labels, b = sparse_prompts(prompts, emb.frame, use_points=self.use_points, use_box=self.use_box)
        if coords is not None:
            points = (torch.as_tensor(coords, dtype=torch.float32, device=dev),
                      torch.as_tensor(labels, dtype=torch.int, device=dev))
        if b is not None:
            boxes = torch.as_tensor(b, dtype=torch.float32, device=dev)
        if self.use_mask_input and prompts[0].logits is not None:
            m = np.stack([np.asarray(p.logits, np.float32).reshape(self.low_res, self.low_res) for p in prompts])
            masks = torch.as_tensor(m[:, None], device=dev)
        if points is None and boxes is None and masks is None:
            raise ValueError(
                "a component has no prompt SAM can use (no points, box disabled, no logits); enable use_box or "
                "give every component points or logits"
            )
        multimask = self.multimask != "single"
        with torch.inference_mode():
            sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=emb.features,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            chosen = choose_masks(low_res.float(), iou.float(), prompts, emb.frame, mode=self.multimask)
            full = self.sam.postprocess_masks(chosen, emb.input_hw, emb.hw)
            return torch.sigmoid(full[:, 0]).cpu().numpy().astype(np.float32, copy=False)
