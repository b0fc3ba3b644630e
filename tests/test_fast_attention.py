"""The SDPA encoder attention against segment_anything's reference attention (fp32, CPU).

Reference: ``segment_anything.modeling.image_encoder.Attention.forward`` / ``get_rel_pos`` /
``add_decomposed_rel_pos`` of the installed segment_anything (1.0). Embedding tolerance: 1e-4 max abs difference
(measured: ~2e-6 on the tiny model, ~6e-6 on vit_b; the two paths only sum in a different order).
"""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import image_encoder as ie
from segment_anything.modeling import transformer as sam_transformer

from finedetail.models.fast_attention import (
    FastAttention,
    decomposed_rel_pos_bias,
    disable_fast_attention,
    enable_fast_attention,
    fast_attention_enabled,
    rel_pos_table,
)
from finedetail.models.sam import SamRefiner
from finedetail.models.tiny import SAM_ARCHS, build_sam, build_tiny_sam

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _embed_both_ways(sam, x):
    """(reference, fast) image embeddings of x with the same weights."""
    with torch.inference_mode():
        disable_fast_attention(sam)
        ref = sam.image_encoder(x)
        enable_fast_attention(sam)
        fast = sam.image_encoder(x)
    disable_fast_attention(sam)
    return ref, fast


def _attention(dim, heads, input_size, *, seed):
    torch.manual_seed(seed)
    attn = ie.Attention(dim, num_heads=heads, use_rel_pos=True, input_size=input_size).eval()
    with torch.no_grad():
        attn.rel_pos_h.normal_(0, 0.5)  # SAM zero-initialises these; random ones make the test position-aware
        attn.rel_pos_w.normal_(0, 0.5)
    return attn


@pytest.mark.parametrize("q_size, k_size", [(14, 14), (64, 64), (5, 9), (9, 5), (1, 1)])
def test_rel_pos_table_equals_reference_lookup(q_size, k_size):
    table = torch.randn(2 * max(q_size, k_size) - 1, 8)
    assert torch.equal(rel_pos_table(table, q_size, k_size), ie.get_rel_pos(q_size, k_size, table))


def test_rel_pos_table_resizes_a_table_of_another_length_like_the_reference():
    table = torch.randn(27, 8)  # trained for 14 tokens, used on 20
    torch.testing.assert_close(rel_pos_table(table, 20, 20), ie.get_rel_pos(20, 20, table), rtol=0, atol=1e-6)


@pytest.mark.parametrize("q_hw, k_hw", [((3, 4), (3, 4)), ((14, 14), (14, 14)), ((2, 3), (4, 5))])
def test_bias_is_what_add_decomposed_rel_pos_adds(q_hw, k_hw):
    b, heads, c = 2, 3, 8
    q = torch.randn(b, heads, q_hw[0] * q_hw[1], c)
    rh = torch.randn(2 * max(q_hw[0], k_hw[0]) - 1, c)
    rw = torch.randn(2 * max(q_hw[1], k_hw[1]) - 1, c)
    zeros = torch.zeros(b * heads, q_hw[0] * q_hw[1], k_hw[0] * k_hw[1])
    expected = ie.add_decomposed_rel_pos(zeros, q.reshape(b * heads, -1, c), rh, rw, q_hw, k_hw)
    ours = decomposed_rel_pos_bias(q, rh, rw, q_hw, k_hw)
    assert ours.shape == (b, heads, q_hw[0] * q_hw[1], k_hw[0] * k_hw[1])
    torch.testing.assert_close(ours.reshape(b * heads, *ours.shape[2:]), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "batch, hw, input_size",
    [
        (25, (14, 14), (14, 14)),  # a window block: B * 25 windows of 14 x 14 tokens
        (1, (64, 64), (64, 64)),  # a global block on the 64 x 64 grid
        (2, (6, 10), (6, 10)),  # non-square token grid
        (2, (10, 10), (14, 14)),  # tables trained for another size (interpolated)
    ],
)
def test_fast_attention_module_equals_reference(batch, hw, input_size):
    attn = _attention(16, 2, input_size, seed=0)
    x = torch.randn(batch, *hw, 16)
    with torch.inference_mode():
        ref = attn(x)
        attn.__class__ = FastAttention
        fast = attn(x)
    assert fast.shape == ref.shape
    assert (fast - ref).abs().max().item() <= 1e-5


def test_without_relative_positions_too():
    torch.manual_seed(0)
    attn = ie.Attention(32, num_heads=4, use_rel_pos=False).eval()
    x = torch.randn(3, 5, 7, 32)
    with torch.inference_mode():
        ref = attn(x)
        enable_fast_attention(attn)
        fast = attn(x)
    assert (fast - ref).abs().max().item() <= 1e-5


def test_tiny_encoder_embedding_matches_reference():
    sam = build_tiny_sam(global_attn_indexes=(1,), seed=3)  # one window block + one global block
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    ref, fast = _embed_both_ways(sam, x)
    diff = (fast - ref).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3g}"


def test_enable_and_disable_swap_only_the_encoder_attention_in_place():
    sam = build_tiny_sam(global_attn_indexes=(1,))
    keys = list(sam.state_dict())
    assert not fast_attention_enabled(sam)
    assert enable_fast_attention(sam) == 2  # one attention per encoder block
    assert enable_fast_attention(sam) == 2  # idempotent
    assert fast_attention_enabled(sam) and fast_attention_enabled(sam.image_encoder)
    assert all(isinstance(b.attn, ie.Attention) for b in sam.image_encoder.blocks)
    assert list(sam.state_dict()) == keys
    decoder_attn = [m for m in sam.mask_decoder.modules() if isinstance(m, sam_transformer.Attention)]
    assert decoder_attn and all(type(m) is sam_transformer.Attention for m in decoder_attn)
    assert disable_fast_attention(sam) == 2
    assert not fast_attention_enabled(sam)
    assert all(type(b.attn) is ie.Attention for b in sam.image_encoder.blocks)


def test_sam_refiner_options():
    sam = build_tiny_sam()
    r = SamRefiner(sam, device="cpu")
    assert r.fast_attention and fast_attention_enabled(sam.image_encoder) and not r.compiled
    r = SamRefiner(sam, device="cpu", fast_attention=False)
    assert not r.fast_attention and not fast_attention_enabled(sam.image_encoder)
    keys = list(sam.state_dict())
    r = SamRefiner(sam, device="cpu", compile=True)  # compiles lazily: nothing runs until the first forward
    assert r.compiled and sam.image_encoder._compiled_call_impl is not None
    assert list(sam.state_dict()) == keys


def test_bf16_autocast_runs_and_stays_close():
    """bf16 numerics, whatever device: the fused path under autocast against the fp32 reference."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sam = build_tiny_sam(seed=1).to(device)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)).to(device)
    seen = []
    sam.image_encoder.blocks[0].attn.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.inference_mode():
        ref = sam.image_encoder(x)
        enable_fast_attention(sam)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            fast = sam.image_encoder(x)  # float32 out: the neck's LayerNorm2d computes in fp32
    assert seen == [torch.float32, torch.bfloat16]
    err = ((fast.float() - ref).norm() / ref.norm()).item()
    assert err < 0.05, f"relative L2 error {err:.3g} in bf16"


@pytest.mark.slow  # two full vit_b forwards on CPU: ~40 s on 2 idle cores, minutes when they are shared
def test_vit_b_embedding_matches_reference():
    sam = build_sam(SAM_ARCHS["vit_b"], seed=0)  # random weights, random relative position tables
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    ref, fast = _embed_both_ways(sam, x)
    assert fast.shape == ref.shape == (1, 256, 64, 64)
    diff = (fast - ref).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3g}"
