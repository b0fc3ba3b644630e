"""Loading weights files into models: SAM ``.pth`` state dicts (architecture read off their shapes) and SegGPT
``save_pretrained`` directories, plus the device / dtype choices the wrappers share.

Where the files come from (local paths, S3, HTTP(S), the Hub, the cache, digests) is ``finedetail.models.weights``;
every loader here resolves its argument through it first. torch / transformers are imported inside the functions
that need them: importing this module is cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from finedetail.models.weights import (
    DEFAULT_SEGGPT,
    hub_settings,
    is_hub_id,
    resolve_checkpoint_dir,
    resolve_sam_checkpoint,
    seggpt_unavailable,
)

if TYPE_CHECKING:
    from finedetail.retry import RetryPolicy

__all__ = [
    "infer_sam_arch",
    "load_sam",
    "load_seggpt",
    "resolve_device",
    "resolve_dtype",
]


def resolve_device(device: Any = None):
    """A ``torch.device``: None or "auto" -> cuda if available else cpu; anything else is passed to torch."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: Any, device: Any):
    """A ``torch.dtype`` for autocast: None -> bfloat16 on CUDA, float32 elsewhere; names like "bf16", "float16"."""
    import torch

    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
        return names[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, a name or None, got {type(dtype).__name__}")
    return dtype


# ----------------------------------------------------------------------------------------------------------- SAM


def _count(shapes: Mapping[str, Any], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in shapes if k.startswith(prefix)}
    if ids != set(range(len(ids))):
        raise ValueError(f"state dict has non-contiguous {prefix}N entries: {sorted(ids)}")
    return len(ids)


def infer_sam_arch(shapes: Mapping[str, Sequence[int]]):
    """The ``tiny.SamArch`` a SAM state dict was saved from, read off its parameter shapes.

    shapes: parameter name -> shape (a state dict's ``{k: v.shape}``; tensors themselves are not needed, so a
    full-size model on the meta device works). Reads: embed dim and patch size from ``patch_embed.proj.weight``,
    image size from ``pos_embed``, depth from the block count, heads from ``embed_dim // rel_pos_h.shape[1]``,
    global blocks as those whose ``rel_pos_h`` spans the whole grid (2 * 64 - 1 rows) and the window size from the
    others (2 * 14 - 1), prompt dim from the neck, the mask decoder's depth / MLP / IoU head from theirs.
    The decoder's head count cannot be read from shapes; SAM uses 8 everywhere.
    """
    from finedetail.models.tiny import SamArch

    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(
                f"not a segment-anything state dict: missing {name!r}; expected the contents of a sam_vit_*.pth file"
            )
        return tuple(int(s) for s in shapes[name])

    enc = "image_encoder."
    embed_dim, _, patch, _ = shape(enc + "patch_embed.proj.weight")
    grid = shape(enc + "pos_embed")[1]
    depth = _count(shapes, enc + "blocks.")
    head_dim = shape(enc + "blocks.0.attn.rel_pos_h")[1]
    global_idx, windows = [], set()
    for i in range(depth):
        rows = shape(f"{enc}blocks.{i}.attn.rel_pos_h")[0]
        if rows == 2 * grid - 1:
            global_idx.append(i)
        else:
            windows.add((rows + 1) // 2)
    if len(windows) > 1:
        raise ValueError(f"windowed blocks disagree on the window size: {sorted(windows)}")
    iou_prefix = "mask_decoder.iou_prediction_head.layers."
    return SamArch(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=tuple(global_idx),
        prompt_embed_dim=shape(enc + "neck.0.weight")[0],
        image_size=grid * patch,
        patch_size=patch,
        window_size=windows.pop() if windows else 14,
        mlp_ratio=shape(enc + "blocks.0.mlp.lin1.weight")[0] / embed_dim,
        decoder_depth=_count(shapes, "mask_decoder.transformer.layers."),
        decoder_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        iou_head_depth=_count(shapes, iou_prefix),
        iou_head_hidden_dim=shape(iou_prefix + "0.weight")[0],
        mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
    )

def load_sam(
    uri: str | os.PathLike | None = None,
    *,
    model_type: str | None = None,
    device: Any = "cpu",
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
):
    """A ``segment_anything.modeling.Sam`` in eval mode, fp32, on ``device`` (None / "auto": cuda if available), with
    the weights of ``uri``.

    uri: anything ``resolve_checkpoint`` takes, or None / a model type ("vit_b", "vit_l", "vit_h") for the official
        weights from ``SAM_URLS``.
    sha256: expected hex digest; None checks the official URLs against ``SAM_SHA256`` (verification is on by
        default for them) and nothing else; ``"skip"`` checks nothing (a file you trust whose digest differs).
    model_type: a key of ``tiny.SAM_ARCHS``; None infers the architecture from the state dict (``infer_sam_arch``),
        which also covers the tiny test models.
    The model is built on the meta device and the checkpoint's tensors are assigned into it (strict: every key must
    match), so a full-size model never allocates a random initialisation first.
    """
    import torch

    from finedetail.models.tiny import SAM_ARCHS, build_sam

    if model_type is not None and model_type not in SAM_ARCHS:
        raise ValueError(f"model_type must be one of {sorted(SAM_ARCHS)} or None (infer), got {model_type!r}")
    path = resolve_sam_checkpoint(uri, model_type=model_type, cache_dir=cache_dir, sha256=sha256)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, not a torch file, or a pickle that wants to run code
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot read {path} as a SAM checkpoint ({type(exc).__name__}: {first}); it may be "
                         "truncated, corrupt or not a .pth file: compare its sha256 with the source's") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a SAM state dict (dict of tensors)")
    for wrapper in ("model", "state_dict"):
        if set(state) == {wrapper} and isinstance(state[wrapper], dict):
            state = state[wrapper]
    arch = SAM_ARCHS[model_type] if model_type else infer_sam_arch({k: tuple(v.shape) for k, v in state.items()})
    with torch.device("meta"):
        sam = build_sam(arch, seed=None)
    try:
        sam.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        hint = " (omit model_type to infer the architecture)" if model_type else ""
        raise ValueError(f"{path} does not fit SAM architecture {arch}{hint}: {exc}") from exc
    # pixel_mean / pixel_std are non-persistent buffers: not in the file, still on meta after assign.
    sam.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)
    leftover = [n for n, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors left unloaded after reading {path}: {leftover[:5]}")
    return sam.to(device=resolve_device(device), dtype=torch.float32).eval()


# -------------------------------------------------------------------------------------------------------- SegGPT


def load_seggpt(
    uri_or_dir: str | os.PathLike = DEFAULT_SEGGPT,
    *,
    device: Any = "cpu",
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    retry: RetryPolicy | None = None,
):
    """(``SegGptForImageSegmentation`` in eval mode, fp32, on ``device`` (None / "auto": cuda if available),
    ``SegGptImageProcessor``).

    uri_or_dir: a ``save_pretrained`` directory (model + ``preprocessor_config.json``), ``file://DIR``, an
        ``s3://bucket/prefix`` holding such a directory (mirrored into the cache), or a Hub id such as
        ``"BAAI/seggpt-vit-large"`` (Hub files are cached under ``CACHE/huggingface``; the cache is tried first, so
        a pre-seeded cache works without network).
    offline: True never touches the network; None follows ``HF_HUB_OFFLINE``.
    Raises CheckpointUnavailableError with the fix when a Hub id is neither cached nor downloadable.
    """
    from transformers import SegGptForImageSegmentation, SegGptImageProcessor

    text = os.fspath(uri_or_dir)
    if not is_hub_id(text):
        source = resolve_checkpoint_dir(text, cache_dir=cache_dir, retry=retry)
        model = SegGptForImageSegmentation.from_pretrained(source, local_files_only=True)
        processor = SegGptImageProcessor.from_pretrained(source, local_files_only=True)
    else:
        offline, hub_cache = hub_settings(offline, cache_dir)
        model = processor = None
        errors = []
        for local_only in (True,) if offline else (True, False):
            try:
                model = SegGptForImageSegmentation.from_pretrained(text, cache_dir=hub_cache,
                                                                   local_files_only=local_only)
                processor = SegGptImageProcessor.from_pretrained(text, cache_dir=hub_cache,
                                                                 local_files_only=local_only)
                break
            except (OSError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if model is None:
            raise seggpt_unavailable(text, errors, hub_cache)
    import torch

    return model.to(device=resolve_device(device), dtype=torch.float32).eval(), processor
