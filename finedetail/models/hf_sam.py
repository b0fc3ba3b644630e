"""SAM-HQ and SAM 2 (transformers ``SamHQModel`` / ``Sam2Model``) as ``PromptedRefiner`` s, behind SAM's protocol.

Like ``finedetail.models.sam.SamRefiner``: one image-encoder pass per image (up to ``encode_batch`` images per
forward), then all components of that image in batched prompt-encoder + mask-decoder calls against that one
embedding (chunks of ``decode_batch``; each component is a batch row of its own, the embedding expanded, not
copied, so a per-component mask input never mixes with another component's). Prompts are boundary points (in /
out, padded with label -1, "not a point"), the tight box, and the coarse component as the low-res mask input;
``multimask`` picks among the decoder's candidates exactly as for SAM (``sam.select_multimask``).

Frames (module docstring of ``sam`` for the conventions; ``frames`` for SAM 2's):

- SAM-HQ: SAM's frame, ``LongestSide(hw, 1024)`` padded to 1024 x 1024. Points / boxes go in as
  ``sam.to_sam_points`` / ``sam.to_sam_boxes`` (pixel-index coordinates in the resized frame; the prompt encoder
  adds 0.5 and divides by 1024, like SAM's). ``ComponentPrompt.logits`` is already in this frame's 256 x 256 grid.
  Outputs: low-res logits -> 1024 x 1024 (bilinear) -> padding cut off -> (h, w) (bilinear), as SAM.
- SAM 2: ``frames.SquareFrame(hw, 1024)``: stretched to 1024 x 1024 (aspect not kept; the processor's own
  behaviour, checked in ``encode``). Points / boxes: the same formulas in that frame (per-axis scale). The mask input
  is rebuilt from the component's mask in the square's 256 x 256 grid (``frames.frame_logits``; SAM's padded-frame
  logits would sit in the wrong place). Outputs: low-res logits -> (h, w) in one bilinear resize.

Pixels come from the checkpoint's own image processor (``SamImageProcessor`` / ``Sam2ImageProcessor``: resize,
rescale, ImageNet normalisation, SAM-HQ's zero padding), so the model sees what transformers' pipeline feeds it.

What carries over from SAM's speed work: bf16 autocast of the encoder on CUDA (``dtype``), ``encode_batch``,
batched decoding, ``torch.compile`` of the vision encoder (``compile``). Fused attention is transformers' own
``attn_implementation="sdpa"`` (its default, chosen when loading: ``fast_attention``); the in-place SDPA patch of
``finedetail.models.fast_attention`` is for segment-anything's modules and does not apply here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from finedetail.models.checkpoints import resolve_device, resolve_dtype
from finedetail.frames import SquareFrame, frame_logits
from finedetail.models.hf_checkpoints import HF_REFINERS, default_hf_checkpoint, resolve_hf_checkpoint
from finedetail.models.sam import (
    check_refiner_options,
    choose_masks,
    decode_in_groups,
    sparse_prompts,
)
from finedetail.frames import LongestSide
from finedetail.types import ComponentPrompt, check_image

__all__ = ["HfEmbedding", "Sam2Refiner", "SamHQRefiner", "load_hf_refiner"]


@dataclass(frozen=True, eq=False)
class HfEmbedding:
    """One image encoded by a transformers refiner.

    features: the tensors its mask decoder reads, each (1, ...) float32 on the refiner's device. SAM-HQ:
    (image_embeddings (1, C, 64, 64), the first global block's output (1, 64, 64, D)); SAM 2: its three FPN levels
    (1, C/8, 256, 256), (1, C/4, 128, 128), (1, C, 64, 64) (after ``no_memory_embedding``).
    frame: the image's frame (``LongestSide`` or ``SquareFrame``); ``hw`` = ``frame.src``.
    owner: the model that encoded it; only a refiner wrapping that same model may decode it.
    """

    features: tuple[torch.Tensor, ...]
    frame: LongestSide | SquareFrame
    owner: object = field(repr=False)

    @property
    def hw(self) -> tuple[int, int]:
        return self.frame.src


class _HfRefiner:
    """Shared by ``SamHQRefiner`` and ``Sam2Refiner``; arguments as ``SamRefiner``'s (``fast_attention`` is chosen
    when loading, see ``from_checkpoint``)."""

    name = ""
    #: the mask decoder needs at least one sparse token (SAM 2); SAM-HQ decodes a mask-only prompt without any
    sparse_required = False

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        multimask: str = "coarse",
        encode_batch: int = 4,
        decode_batch: int = 64,
        use_box: bool = True,
        use_points: bool = True,
        use_mask_input: bool = True,
        compile: bool = False,
    ) -> None:
        check_refiner_options(self.name, multimask=multimask, encode_batch=encode_batch, decode_batch=decode_batch,
                              use_box=use_box, use_points=use_points, use_mask_input=use_mask_input)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=torch.float32).eval()
        self.image_processor = image_processor
        if compile:
            self.model.vision_encoder.compile()
        self.fast_attention = getattr(model.config, "_attn_implementation", None) == "sdpa"
        self.compiled = bool(compile)
        self.multimask = multimask
        self.encode_batch, self.decode_batch = int(encode_batch), int(decode_batch)
        self.use_box, self.use_points, self.use_mask_input = use_box, use_points, use_mask_input
        pe = model.config.prompt_encoder_config
        self.input_size = int(pe.image_size)
        self.low_res = 4 * int(pe.image_size) // int(pe.patch_size)
        self.encoder_passes = 0

    @classmethod
    def from_checkpoint(
        cls,
        uri: str | os.PathLike | None,
        *,
        model_type: str | None = None,
        sha256: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        fast_attention: bool = True,
        **kwargs: Any,
    ):
        """Load with ``load_hf_refiner`` (None: the default Hub id, ``hf_checkpoints.HF_DEFAULTS``) and wrap."""
        dev = resolve_device(device)
        model, image_processor = load_hf_refiner(cls.name, uri, model_type=model_type, sha256=sha256,
                                                 cache_dir=cache_dir, device=dev, fast_attention=fast_attention)
        return cls(model, image_processor, device=dev, **kwargs)

    # -- per-model parts ------------------------------------------------------------------------------------------
    def _frame(self, hw: tuple[int, int]):
        raise NotImplementedError

    def _encode_pixels(self, pixels: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def _decoder(self, feats: tuple[torch.Tensor, ...], n: int, sparse, dense, multimask: bool):
        raise NotImplementedError

    def _mask_input(self, p: ComponentPrompt, frame) -> np.ndarray:
        raise NotImplementedError

    def _to_image(self, low: torch.Tensor, frame) -> torch.Tensor:
        raise NotImplementedError

    # -- protocol -------------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def encode(self, images: Sequence[np.ndarray]) -> list[HfEmbedding]:
        """(H, W, 3) uint8 RGB images -> one ``HfEmbedding`` each; ``encoder_passes += len(images)``. The
        checkpoint's image processor makes the pixels; up to ``encode_batch`` images share one encoder forward."""
        out: list[HfEmbedding] = []
        for start in range(0, len(images), self.encode_batch):
            chunk = list(images[start : start + self.encode_batch])
            for im in chunk:
                check_image(im)
            frames = [self._frame(im.shape[:2]) for im in chunk]
            proc = self.image_processor(images=chunk, return_tensors="pt")
            self._check_processor(proc, frames)
            pixels = proc["pixel_values"].to(self.device, torch.float32)
            with torch.inference_mode(), self._autocast():
                feats = self._encode_pixels(pixels)
            self.encoder_passes += len(chunk)
            out += [HfEmbedding(features=f, frame=fr, owner=self.model) for f, fr in zip(feats, frames)]
        return out

    def _check_processor(self, proc: Any, frames: list) -> None:
        """One size rule: the processor's resized size must be the frame's (else report, never guess)."""
        got = proc.get("reshaped_input_sizes")
        side = tuple(proc["pixel_values"].shape[-2:])
        for i, frame in enumerate(frames):
            size = tuple(int(v) for v in got[i]) if got is not None else side
            if size != frame.size or side != (frame.long_side, frame.long_side):
                raise RuntimeError(f"{self.name}'s image processor resized {frame.src} to {size} (input {side}), the "
                                   f"frame expects {frame.size} in ({frame.long_side}, {frame.long_side}); check the "
                                   "checkpoint's preprocessor_config.json (size, do_pad)")

    def _check_embedding(self, embedding: Any) -> HfEmbedding:
        if not isinstance(embedding, HfEmbedding) or embedding.owner is not self.model:
            got = (type(embedding).__name__ if not isinstance(embedding, HfEmbedding)
                   else "an HfEmbedding of another model")
            raise RuntimeError(f"refine needs an embedding made by encode() of a refiner wrapping this {self.name} "
                               f"model, got {got}; call refiner.encode([image]) on this refiner and pass its result")
        return embedding

    def refine(self, embedding: Any, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        """All component prompts of one image -> (N, H, W) float32 probabilities, image frame; N == 0 returns
        (0, H, W) without touching the model. Components with and without mask input go in separate calls."""
        emb = self._check_embedding(embedding)
        if len(prompts) == 0:
            return np.zeros((0, *emb.hw), np.float32)
        return decode_in_groups(prompts, emb.hw, lambda chunk: self._decode(emb, chunk),
                                use_mask_input=self.use_mask_input, decode_batch=self.decode_batch)

    def _decode(self, emb: HfEmbedding, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        dev, n = self.device, len(prompts)
        points = labels = boxes = masks = None
        coords, labs, b = sparse_prompts(prompts, emb.frame, use_points=self.use_points, use_box=self.use_box)
        if coords is not None:  # one component per batch row: (n, 1, P, 2), (n, 1, P)
            points = torch.as_tensor(coords[:, None], dtype=torch.float32, device=dev)
            labels = torch.as_tensor(labs[:, None], dtype=torch.int64, device=dev)
        if b is not None:
            boxes = torch.as_tensor(b[:, None], dtype=torch.float32, device=dev)         # (n, 1, 4)
        if self.use_mask_input and prompts[0].logits is not None:
            m = np.stack([self._mask_input(p, emb.frame) for p in prompts])
            masks = torch.as_tensor(m[:, None], dtype=torch.float32, device=dev)         # (n, 1, low, low)
        if points is None and boxes is None:
            if masks is None:
                raise ValueError(f"a component has no prompt {self.name} can use (no points, box disabled, no "
                                 "logits); enable use_box or give every component points or logits")
            if self.sparse_required:  # as Sam2Model.forward: one empty "not a point" token for a mask-only prompt
                points = torch.zeros((n, 1, 1, 2), dtype=torch.float32, device=dev)
                labels = -torch.ones((n, 1, 1), dtype=torch.int64, device=dev)
        multimask = self.multimask != "single"
        with torch.inference_mode():
            sparse, dense = self.model.prompt_encoder(input_points=points, input_labels=labels, input_boxes=boxes,
                                                      input_masks=masks)
            low_res, iou = self._decoder(emb.features, n, sparse, dense, multimask)
            low_res, iou = low_res[:, 0].float(), iou[:, 0].float()                    # (n, K, l, l), (n, K')
            if low_res.shape[1] != iou.shape[1]:  # SAM-HQ's hq_token_only: one mask, K' scores
                iou = iou[:, : low_res.shape[1]]
            chosen = choose_masks(low_res, iou, prompts, emb.frame, mode=self.multimask)
            full = self._to_image(chosen, emb.frame)
            return torch.sigmoid(full[:, 0]).cpu().numpy().astype(np.float32, copy=False)

    def _positional(self, n: int) -> torch.Tensor:
        return self.model.get_image_wide_positional_embeddings().expand(n, -1, -1, -1)


class SamHQRefiner(_HfRefiner):
    """HQ-SAM (transformers ``SamHQModel``): SAM's ViT and prompt interface plus an HQ output token fed by the
    first global block's features. ``hq_token_only``: False (default, and the HQ-SAM authors' advice for scenes
    with several objects) adds the HQ mask to each of SAM's candidates; True keeps the HQ mask alone (their advice
    for single objects; then ``multimask`` has one candidate)."""

    name = "sam-hq"

    def __init__(self, model: Any, image_processor: Any, *, hq_token_only: bool = False, **kwargs: Any) -> None:
        super().__init__(model, image_processor, **kwargs)
        self.hq_token_only = bool(hq_token_only)

    def _frame(self, hw):
        return LongestSide(hw, self.input_size)

    def _encode_pixels(self, pixels):
        out = self.model.vision_encoder(pixel_values=pixels)
        emb, inter = out.last_hidden_state.float(), out.intermediate_embeddings[0].float()
        return [(emb[i : i + 1], inter[i : i + 1]) for i in range(len(pixels))]

    def _decoder(self, feats, n, sparse, dense, multimask):
        emb, inter = feats
        masks, iou = self.model.mask_decoder(
            image_embeddings=emb.expand(n, -1, -1, -1), image_positional_embeddings=self._positional(n),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            hq_token_only=self.hq_token_only, intermediate_embeddings=[inter])
        return masks, iou

    def _mask_input(self, p, frame):
        logits = np.asarray(p.logits, np.float32)
        if logits.shape[-2:] != (self.low_res, self.low_res):
            raise ValueError(f"a prompt's logits must be ({self.low_res}, {self.low_res}), got {logits.shape}; make "
                             "them with finedetail.prompts.mask_to_sam_logits")
        return logits.reshape(self.low_res, self.low_res)

    def _to_image(self, low, frame):
        s = frame.long_side
        up = F.interpolate(low, (s, s), mode="bilinear", align_corners=False)
        up = up[..., : frame.size[0], : frame.size[1]]
        return F.interpolate(up, frame.src, mode="bilinear", align_corners=False)


class Sam2Refiner(_HfRefiner):
    """SAM 2 / 2.1 (transformers ``Sam2Model``), image mode: Hiera encoder, FPN features (two high-resolution
    levels feed the mask decoder), SAM's prompt interface in a stretched 1024 x 1024 frame (``frames.SquareFrame``).
    The decoder's object-score head is not used (SAM 2's image predictor ignores it too). ``multimask="single"``
    lets the decoder pick by stability (``dynamic_multimask_via_stability``), SAM 2's own single-mask rule."""

    name = "sam2"
    sparse_required = True

    def _frame(self, hw):
        return SquareFrame(hw, self.input_size)

    def _encode_pixels(self, pixels):
        levels = [f.float() for f in self.model.get_image_embeddings(pixels)]
        return [tuple(f[i : i + 1] for f in levels) for i in range(len(pixels))]

    def _decoder(self, feats, n, sparse, dense, multimask):
        *high, emb = feats
        masks, iou, _, _ = self.model.mask_decoder(
            image_embeddings=emb.expand(n, -1, -1, -1), image_positional_embeddings=self._positional(n),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            high_resolution_features=[f.expand(n, -1, -1, -1) for f in high])
        return masks, iou

    def _mask_input(self, p, frame):
        return frame_logits(p.mask, frame, low_res=self.low_res)

    def _to_image(self, low, frame):
        return F.interpolate(low, frame.src, mode="bilinear", align_corners=False)


def load_hf_refiner(
    refiner: str,
    uri: str | os.PathLike | None = None,
    *,
    model_type: str | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    device: Any = "cpu",
    fast_attention: bool = True,
):
    """(model in eval mode, fp32, on ``device``; its image processor) for ``refiner`` ("sam-hq" / "sam2").

    uri: anything ``hf_checkpoints.resolve_hf_checkpoint`` takes; None: ``default_hf_checkpoint(refiner,
    model_type)``. A directory without ``preprocessor_config.json`` gets the architecture's default image processor
    (the official values). fast_attention: ``attn_implementation="sdpa"`` (else "eager"). A SAM 2 checkpoint saved as
    ``Sam2VideoModel`` loads its image parts (the video memory modules are left out)."""
    import transformers

    if refiner not in HF_REFINERS:
        raise ValueError(f"refiner must be one of {sorted(HF_REFINERS)}, got {refiner!r}")
    model_cls, proc_cls = (getattr(transformers, n) for n in HF_REFINERS[refiner])
    source = default_hf_checkpoint(refiner, model_type) if uri is None else os.fspath(uri)
    directory = resolve_hf_checkpoint(source, sha256=sha256, cache_dir=cache_dir, offline=offline)
    try:
        model = model_cls.from_pretrained(directory, local_files_only=True,
                                          attn_implementation="sdpa" if fast_attention else "eager")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"cannot load {source!r} ({directory}) as a {model_cls.__name__} ({type(exc).__name__}: "
                         f"{first}); is it a {refiner} checkpoint?") from exc
    if (directory / "preprocessor_config.json").is_file():
        image_processor = proc_cls.from_pretrained(directory, local_files_only=True)
    else:
        image_processor = proc_cls()
    return model.to(device=resolve_device(device), dtype=torch.float32).eval(), image_processor
