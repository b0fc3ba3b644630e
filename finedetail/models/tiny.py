"""The real SAM and SegGPT architectures, built from a size spec, with seeded random weights.

One builder serves the full-size checkpoints (``SAM_ARCHS["vit_b" | "vit_l" | "vit_h"]``, used by
``checkpoints.load_sam`` after inferring the spec from a state dict) and the tiny test models (``build_tiny_sam``,
``build_tiny_seggpt``). Tiny models keep the frames of the real ones: SAM still takes a 1024x1024 padded input with
16-px patches (64x64 embedding, 256x256 low-res masks); SegGPT keeps its (2S, S) stacked canvas, only S is smaller
than the real 448.

Files are saved in the official formats: SAM as a plain ``state_dict`` ``.pth`` (like ``sam_vit_b_01ec64.pth``),
SegGPT as a ``save_pretrained`` directory with its image-processor config next to the weights (like
``BAAI/seggpt-vit-large`` on the Hub), so tests load them through the same loaders as the real weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

__all__ = [
    "HF_ARCHS",
    "SAM_ARCHS",
    "SamArch",
    "build_hf_refiner",
    "build_sam",
    "build_tiny_sam",
    "build_tiny_hf_refiner",
    "build_tiny_seggpt",
    "save_tiny_hf_refiner",
    "save_tiny_sam",
    "save_tiny_seggpt",
    "tiny_seggpt_config",
]


@dataclass(frozen=True)
class SamArch:
    """Every size knob of SAM's three modules. Defaults are the official values shared by vit_b/l/h
    (``segment_anything.build_sam._build_sam`` hard-codes them); only the image encoder differs between those three.

    ``decoder_num_heads`` is the one knob a state dict cannot reveal (head count does not change any weight shape);
    every official model uses 8 and so do the tiny ones, so inference assumes 8.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int = 256
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(int(i) for i in self.encoder_global_attn_indexes))
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(
                f"encoder_embed_dim must be divisible by encoder_num_heads, got {self.encoder_embed_dim=} "
                f"{self.encoder_num_heads=}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size must be a multiple of patch_size, got {self.image_size=} {self.patch_size=}")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(
                f"encoder_global_attn_indexes must lie in [0, {self.encoder_depth}), "
                f"got {self.encoder_global_attn_indexes}"
            )
        # SAM's mask decoder upsamples with transformer_dim // 4 and // 8 channels and its cross-attention halves the
        # width before splitting heads.
        if self.prompt_embed_dim % 8 or (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            raise ValueError(
                f"prompt_embed_dim must be a multiple of 8 with prompt_embed_dim // 2 divisible by decoder_num_heads, "
                f"got {self.prompt_embed_dim=} {self.decoder_num_heads=}"
            )
        if self.mask_in_chans % 4:
            raise ValueError(f"mask_in_chans must be a multiple of 4, got {self.mask_in_chans=}")

    @property
    def embedding_size(self) -> int:
        """Side of the square image embedding (64 for every official model)."""
        return self.image_size // self.patch_size


SAM_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
}

def build_sam(arch: SamArch, *, seed: int | None = 0):
    """Build ``segment_anything.modeling.Sam`` for ``arch`` in eval mode, fp32, on the current default device.

    Weights are random: with ``seed`` set they are drawn under ``torch.manual_seed(seed)`` inside a forked RNG (the
    global RNG is left untouched), so the same seed gives bit-identical weights. ``seed=None`` uses the global RNG.
    Wrap in ``with torch.device("meta"):`` to get the parameter shapes of a full-size model without allocating it.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    def make() -> Sam:
        emb = arch.embedding_size
        return Sam(
            image_encoder=ImageEncoderViT(
                img_size=arch.image_size,
                patch_size=arch.patch_size,
                embed_dim=arch.encoder_embed_dim,
                depth=arch.encoder_depth,
                num_heads=arch.encoder_num_heads,
                mlp_ratio=arch.mlp_ratio,
                out_chans=arch.prompt_embed_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=arch.window_size,
                global_attn_indexes=arch.encoder_global_attn_indexes,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=arch.prompt_embed_dim,
                image_embedding_size=(emb, emb),
                input_image_size=(arch.image_size, arch.image_size),
                mask_in_chans=arch.mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=arch.prompt_embed_dim,
                transformer=TwoWayTransformer(
                    depth=arch.decoder_depth,
                    embedding_dim=arch.prompt_embed_dim,
                    mlp_dim=arch.decoder_mlp_dim,
                    num_heads=arch.decoder_num_heads,
                ),
                num_multimask_outputs=arch.num_multimask_outputs,
                iou_head_depth=arch.iou_head_depth,
                iou_head_hidden_dim=arch.iou_head_hidden_dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )

    if seed is None:
        sam = make()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = make()
            # SAM zero-initialises its relative position tables; random ones make tiny models position-aware,
            # so tests notice a frame mix-up instead of passing on a translation-invariant net.
            with torch.no_grad():
                for name, p in sam.image_encoder.named_parameters():
                    if "rel_pos" in name and p.device.type != "meta":
                        p.normal_(0.0, 0.02)
    return sam.eval()


def build_tiny_sam(
    *,
    embed_dim: int = 64,
    depth: int = 2,
    num_heads: int = 2,
    global_attn_indexes: tuple[int, ...] = (),
    prompt_embed_dim: int = 32,
    image_size: int = 1024,
    seed: int = 0,
):
    """A small ``Sam`` (~0.3 M parameters) with the real frames (1024 input, 16-px patches, 14-px attention windows,
    64x64 embedding, 256x256 low-res masks) and seeded random weights (see ``build_sam``).

    ``global_attn_indexes`` defaults to none: one global-attention block over the 64x64 token grid costs ~10x the
    rest of the tiny encoder on CPU (measured: ~0.04 s vs ~0.35 s per 1024 image on 2 cores); pass e.g. ``(1,)`` to
    exercise it (the checkpoint tests do).
    """
    arch = SamArch(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=num_heads,
        encoder_global_attn_indexes=global_attn_indexes,
        prompt_embed_dim=prompt_embed_dim,
        image_size=image_size,
        decoder_mlp_dim=2 * prompt_embed_dim,
        iou_head_hidden_dim=prompt_embed_dim,
    )
    return build_sam(arch, seed=seed)


def save_tiny_sam(path: str | os.PathLike, *, seed: int = 0, **kwargs) -> Path:
    """Build ``build_tiny_sam(seed=seed, **kwargs)`` and save its ``state_dict`` with ``torch.save``: the same
    format as the official ``sam_vit_*.pth`` files (a flat dict of tensors). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_tiny_sam(seed=seed, **kwargs).state_dict(), path)
    return path


def tiny_seggpt_config(*, canvas: int = 64, hidden_size: int = 64, num_layers: int = 5, num_heads: int = 2):
    """``SegGptConfig`` of a small SegGPT on an S x S canvas (S = ``canvas``, a multiple of 16; the real model is
    448): the model sees the prompt stacked over the target, (2S, S). Encoder features of layers 1..4 feed the
    decoder and the prompt/target streams merge after layer 0, mirroring the real 24-layer layout at 1/5 depth."""
    from transformers import SegGptConfig

    if canvas % 16:
        raise ValueError(f"canvas must be a multiple of the 16-px patch, got {canvas=}")
    return SegGptConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        mlp_dim=2 * hidden_size,
        image_size=(2 * canvas, canvas),
        patch_size=16,
        pretrain_image_size=canvas,
        decoder_hidden_size=16,
        merge_index=0,
        intermediate_hidden_state_indices=tuple(range(1, num_layers)),
        drop_path_rate=0.0,
    )


def build_tiny_seggpt(*, canvas: int = 64, seed: int = 0, **kwargs):
    """(model, processor): a ``SegGptForImageSegmentation`` from ``tiny_seggpt_config(canvas=canvas, **kwargs)`` in
    eval mode with seeded random weights (forked RNG), and a ``SegGptImageProcessor`` resizing to canvas x canvas."""
    from transformers import SegGptForImageSegmentation, SegGptImageProcessor

    config = tiny_seggpt_config(canvas=canvas, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SegGptForImageSegmentation(config)
    processor = SegGptImageProcessor(size={"height": canvas, "width": canvas})
    return model.eval(), processor


def save_tiny_seggpt(directory: str | os.PathLike, *, canvas: int = 64, seed: int = 0, **kwargs) -> Path:
    """Save a tiny SegGPT like a Hub repo: ``config.json`` + weights (``save_pretrained``) and
    ``preprocessor_config.json`` (the image processor's ``save_pretrained``) in one directory, so
    ``from_pretrained(directory)`` works offline for both. Returns the directory."""
    directory = Path(directory)
    model, processor = build_tiny_seggpt(canvas=canvas, seed=seed, **kwargs)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


#: full-size architectures of the transformers refiners, for benchmarks with random weights (compute does not depend
#: on the values). SAM-HQ: SAM's ViT-B/L/H encoders ((embed dim, depth, heads, global blocks) as ``SAM_ARCHS``) with
#: the HQ decoder. SAM 2.1: the Hiera sizes of Meta's sam2.1_hiera_{t,s,b+,l}.yaml (embed dim, heads, blocks per
#: stage, global blocks, window sizes, window-position background size).
HF_ARCHS: dict[str, dict[str, dict]] = {
    "sam-hq": {
        "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
        "vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      global_attn_indexes=[5, 11, 17, 23]),
        "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                      global_attn_indexes=[7, 15, 23, 31]),
    },
    "sam2": {
        "hiera_t": dict(hidden_size=96, blocks_per_stage=[1, 2, 7, 2], global_attention_blocks=[5, 7, 9],
                        num_attention_heads_per_stage=[1, 2, 4, 8], window_size_per_stage=[8, 4, 14, 7],
                        window_positional_embedding_background_size=[7, 7]),
        "hiera_s": dict(hidden_size=96, blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13],
                        num_attention_heads_per_stage=[1, 2, 4, 8], window_size_per_stage=[8, 4, 14, 7],
                        window_positional_embedding_background_size=[7, 7]),
        "hiera_b+": dict(hidden_size=112, num_attention_heads=2, blocks_per_stage=[2, 3, 16, 3],
                         global_attention_blocks=[12, 16, 20], num_attention_heads_per_stage=[2, 4, 8, 16],
                         window_size_per_stage=[8, 4, 14, 7], window_positional_embedding_background_size=[14, 14]),
        "hiera_l": dict(hidden_size=144, num_attention_heads=2, blocks_per_stage=[2, 6, 36, 4],
                        global_attention_blocks=[23, 33, 43], num_attention_heads_per_stage=[2, 4, 8, 16],
                        window_size_per_stage=[8, 4, 16, 8], window_positional_embedding_background_size=[7, 7]),
    },
}


def build_hf_refiner(refiner: str, arch: str = "tiny", *, seed: int = 0, attn_implementation: str = "sdpa"):
    """(model, image processor) of ``refiner`` ("sam-hq" / "sam2") at ``arch``: "tiny" (``build_tiny_hf_refiner``)
    or a key of ``HF_ARCHS[refiner]`` (full size, seeded random weights; wrap in ``torch.device("meta")`` to count
    parameters without allocating them)."""
    if arch == "tiny":
        return build_tiny_hf_refiner(refiner, seed=seed, attn_implementation=attn_implementation)
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, SamHQConfig, SamHQModel, SamImageProcessor

    archs = HF_ARCHS.get(refiner, {})
    if arch not in archs:
        raise ValueError(f"arch for {refiner!r} must be 'tiny' or one of {sorted(archs)}, got {arch!r}")
    spec = dict(archs[arch])
    if refiner == "sam-hq":
        config = SamHQConfig(vision_config=dict(spec, initializer_range=0.02), initializer_range=0.02,
                             mask_decoder_config=dict(vit_dim=spec["hidden_size"]))
        cls, processor = SamHQModel, SamImageProcessor()
    else:
        d = spec["hidden_size"]
        dims = [d, 2 * d, 4 * d, 8 * d]
        backbone = dict(spec, model_type="sam2_hiera_det_model", embed_dim_per_stage=dims)
        config = Sam2Config(vision_config=dict(backbone_config=backbone, backbone_channel_list=dims[::-1]))
        cls, processor = Sam2Model, Sam2ImageProcessor()
    return _seeded(cls, config, seed, attn_implementation), processor


def _seeded(cls, config, seed: int, attn_implementation: str):
    """``cls`` built from ``config`` with ``attn_implementation`` under ``torch.manual_seed(seed)`` in a forked RNG,
    eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls._from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def build_tiny_hf_refiner(refiner: str, *, seed: int = 0, hidden: int = 32, attn_implementation: str = "sdpa"):
    """(model, image processor): a small transformers ``SamHQModel`` (``refiner="sam-hq"``, ~0.24 M parameters) or
    ``Sam2Model`` (``"sam2"``, ~0.35 M) with seeded random weights (forked RNG), eval mode, fp32.

    Both keep the real frames: 1024 input, 64x64 embedding, 256x256 low-res masks (SAM-HQ: 16-px patches, 2 ViT
    blocks, block 1 global so the HQ token's feature path runs; SAM 2: Hiera with 4 stages of 1, 1, 2, 1 blocks,
    stride 4 then three 2x query pools, one global block, FPN levels 256 / 128 / 64). The image processors are the
    official defaults (SAM-HQ: long side 1024 + padding; SAM 2: 1024 x 1024 stretch)."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, SamHQConfig, SamHQModel, SamImageProcessor

    decoder = dict(hidden_size=hidden, mlp_dim=2 * hidden, num_attention_heads=2, iou_head_hidden_dim=hidden)
    prompt = dict(hidden_size=hidden, mask_input_channels=8)
    if refiner == "sam-hq":
        config = SamHQConfig(
            vision_config=dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                               output_channels=hidden, mlp_dim=2 * hidden, num_pos_feats=hidden // 2,
                               initializer_range=0.02),  # transformers' 1e-10 would leave an all-but-zero encoder
            prompt_encoder_config=prompt, mask_decoder_config=dict(decoder, vit_dim=hidden), initializer_range=0.02)
        cls, processor = SamHQModel, SamImageProcessor()
    elif refiner == "sam2":
        dims = [16, 32, 64, 128]
        backbone = dict(model_type="sam2_hiera_det_model", hidden_size=dims[0], num_attention_heads=1,
                        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=dims,
                        num_attention_heads_per_stage=[1, 1, 1, 1], global_attention_blocks=[3])
        config = Sam2Config(vision_config=dict(backbone_config=backbone, backbone_channel_list=dims[::-1],
                                               fpn_hidden_size=hidden),
                            prompt_encoder_config=prompt, mask_decoder_config=decoder)
        cls, processor = Sam2Model, Sam2ImageProcessor()
    else:
        raise ValueError(f"refiner must be 'sam-hq' or 'sam2', got {refiner!r}")
    return _seeded(cls, config, seed, attn_implementation), processor


def save_tiny_hf_refiner(refiner: str, directory: str | os.PathLike, *, seed: int = 0, **kwargs) -> Path:
    """Save ``build_tiny_hf_refiner(refiner)`` like a Hub repo (``config.json``, ``model.safetensors``,
    ``preprocessor_config.json``) so ``hf_sam.load_hf_refiner`` reads it as it reads the real ones. Returns the
    directory."""
    directory = Path(directory)
    model, processor = build_tiny_hf_refiner(refiner, seed=seed, **kwargs)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
