"""Fused attention for SAM's ViT image encoder: ``torch.nn.functional.scaled_dot_product_attention`` (SDPA) with
SAM's decomposed relative position terms passed as an additive attention bias.

SAM's reference ``segment_anything.modeling.image_encoder.Attention.forward`` materialises the attention matrix
``(q * scale) @ k^T`` (B * heads, N, N), adds the decomposed relative position terms in place
(``add_decomposed_rel_pos``), runs a separate softmax and a second matmul. Here the same sum is computed as

    softmax(scale * q k^T + bias) v,
    bias[b, n, (qh, qw), (kh, kw)] = rel_h[b, n, qh, qw, kh] + rel_w[b, n, qh, qw, kw]

with ``rel_h = q . Rh[qh, kh]`` and ``rel_w = q . Rw[qw, kw]`` (the UNscaled query, as in the reference;
``Rh``/``Rw`` are the relative position tables looked up by ``qh - kh`` and ``qw - kw``, see ``rel_pos_table``).
The bias is built once per call as a (B, heads, N, N) tensor (N = 196 tokens in a 14 x 14 window block, 4096 in a
global 64 x 64 block) in the query's dtype and handed to SDPA as ``attn_mask``, which fuses scale, bias, softmax and
both matmuls (a memory-efficient or cuDNN kernel on CUDA, the fused CPU kernel on CPU).

Swapping is done per module by class (``FastAttention`` subclasses ``Attention`` and only overrides ``forward``), so
parameters, ``state_dict`` keys, hooks and ``isinstance`` checks are unchanged and the swap is reversible:
``enable_fast_attention(sam)`` / ``disable_fast_attention(sam)``. Precision is whatever the caller runs: fp32 on
CPU matches the reference to ~1e-6 on the image embedding; bf16 comes from the caller's autocast
(``SamRefiner`` autocasts the encoder to bfloat16 on CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention

__all__ = [
    "FastAttention",
    "decomposed_rel_pos_bias",
    "disable_fast_attention",
    "enable_fast_attention",
    "fast_attention_enabled",
    "rel_pos_table",
]


def rel_pos_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis -> (q_size, k_size, C).

    rel_pos: (L, C) learned table indexed by relative offset. When L != 2 * max(q_size, k_size) - 1 (an input size
    other than the one the table was trained for) it is resized linearly along L first. Coordinates of the shorter
    side are stretched to the longer one, so entry (i, j) is the row for offset ``i * sq - j * sk`` shifted to be
    >= 0, with ``sq = max(k_size / q_size, 1)`` and ``sk = max(q_size / k_size, 1)``: the convention of
    ``segment_anything``'s ``get_rel_pos`` (SAM's encoder always has q_size == k_size, i.e. offset i - j).
    """
    length = 2 * max(q_size, k_size) - 1
    table = rel_pos
    if table.shape[0] != length:
        table = F.interpolate(table.t()[None], size=length, mode="linear")[0].t()
    sq, sk = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    q_idx = torch.arange(q_size, device=table.device)[:, None] * sq
    k_idx = torch.arange(k_size, device=table.device)[None, :] * sk
    return table[(q_idx - k_idx + (k_size - 1) * sk).long()]


def decomposed_rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                            q_hw: tuple[int, int], k_hw: tuple[int, int]) -> torch.Tensor:
    """The additive attention bias of SAM's decomposed relative positions.

    q: (B, heads, qh * qw, C) unscaled queries, tokens in row-major (h, w) order. rel_pos_h: (Lh, C), rel_pos_w:
    (Lw, C). Returns (B, heads, qh * qw, kh * kw) in q's dtype: ``bias[.., (i, j), (k, l)] = q_ij . Rh[i, k] +
    q_ij . Rw[j, l]`` (``Rh``, ``Rw`` from ``rel_pos_table``), i.e. exactly what ``add_decomposed_rel_pos`` adds
    to the attention logits.
    """
    (qh, qw), (kh, kw) = q_hw, k_hw
    b, n, _, c = q.shape
    rh = rel_pos_table(rel_pos_h, qh, kh).to(q.dtype)
    rw = rel_pos_table(rel_pos_w, qw, kw).to(q.dtype)
    r_q = q.reshape(b, n, qh, qw, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)  # (B, heads, qh, qw, kh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)  # (B, heads, qh, qw, kw)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, qh * qw, kh * kw)


class FastAttention(Attention):
    """``segment_anything``'s encoder ``Attention`` with an SDPA forward; same parameters and constructor.

    forward: x (B, H, W, dim) tokens of one window (or of the whole 64 x 64 grid in a global block) ->
    (B, H, W, dim), the same function as the reference forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        # (B, N, 3, heads, C) -> three (B, heads, N, C) views, no copy
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w)) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def _swap(module: torch.nn.Module, src: type, dst: type) -> int:
    n = 0
    for m in module.modules():
        if type(m) is src:
            m.__class__ = dst
            n += 1
    return n


def enable_fast_attention(module: torch.nn.Module) -> int:
    """Switch every reference encoder ``Attention`` inside ``module`` (a ``Sam``, its ``image_encoder`` or a single
    block) to ``FastAttention``, in place. Returns how many modules are now fast (already-fast ones included).
    The mask decoder's attention (``segment_anything.modeling.transformer.Attention``) is a different class and is
    left alone."""
    _swap(module, Attention, FastAttention)
    return sum(type(m) is FastAttention for m in module.modules())


def disable_fast_attention(module: torch.nn.Module) -> int:
    """Undo ``enable_fast_attention`` in place. Returns how many modules were switched back."""
    return _swap(module, FastAttention, Attention)


def fast_attention_enabled(module: torch.nn.Module) -> bool:
    """True when ``module`` holds encoder attention modules and every one of them is ``FastAttention``."""
    kinds = [type(m) for m in module.modules() if isinstance(m, Attention)]
    return bool(kinds) and all(k is FastAttention for k in kinds)
