"""Benchmark of SAM's ViT image encoder: segment_anything's reference attention vs the fused SDPA path
(``finedetail.models.fast_attention``), plus how many encoder passes the default pipeline spends on one image.

Usage: ``python -m job.bench encoder [--refiner sam|sam-hq|sam2] [--arch tiny|vit_b|vit_l|vit_h|hiera_b+|...]
[--batches 1,4,8] [--compile] [--json]``.

Per mode (``reference``, ``fast``, and ``fast_compiled`` with ``--compile``) and batch size: seconds per encoder
pass (one 1024 x 1024 image), median of ``--repeat`` timed calls after ``--warmup`` untimed ones, with the min and
max as the spread. Random weights (compute does not depend on their values). Device auto: CUDA when available;
dtype auto: bf16 autocast on CUDA (as ``SamRefiner`` runs it), fp32 on CPU. Also the largest |fast - reference|
of the batch-1 embeddings.

FLOPs per pass (counted analytically from the encoder module; 2 FLOPs per multiply-add; T = (1024 / 16)^2 = 4096
tokens, D = embed dim, r = MLP ratio (4), C = neck channels (256), n_k = keys per query (14 x 14 = 196 in a window
block, 64 x 64 = 4096 in a global block), h_k + w_k = the key grid's height + width)::

    patch embed      2 T (3 * 16 * 16) D
    per block        2 T D (3D) + 2 T D D + 2 * 2 T D (rD)      qkv, proj, MLP  = (8 + 4r) T D^2
                     + 4 T n_k D                                 q k^T and attn v over all heads
                     + 2 T (h_k + w_k) D                         decomposed relative positions (q . Rh, q . Rw)
    neck             2 T D C + 2 T 9 C^2                         1x1 conv, 3x3 conv

That is the model's useful work and what TFLOP/s is computed from (ViT-H: 5.64 TFLOPs, ViT-L: 2.84, ViT-B: 0.94 per
pass). Window blocks really run on the grid padded to a multiple of 14 (70 x 70 = 4900 tokens): the "executed"
count, also printed, replaces T by 4900 in their qkv/proj/attention/rel-pos terms (ViT-H: 5.96, ViT-L: 2.99,
ViT-B: 0.97 TFLOPs). Norms,
GELU and softmax are not counted. On CUDA, TFLOP/s is also given as a fraction of the card's dense bf16 peak
(``--peak-tflops``, default from the card's name: H100 SXM / H200 989, H100 PCIe 756, A100 312, L4 121, A10G 125).

``--refiner sam-hq|sam2`` times the transformers refiners' vision encoders instead (``finedetail.models.tiny.HF_ARCHS``:
``--arch tiny|vit_b|vit_l|vit_h`` for SAM-HQ, ``tiny|hiera_t|hiera_s|hiera_b+|hiera_l`` for SAM 2): transformers'
``eager`` attention vs its fused ``sdpa`` (the refiners' default), same weights, plus ``--compile``; FLOPs are not
counted for them (the formula above is SAM's ViT), parameters are.

Pipeline passes: ``finedetail.execute.run_image`` with the colour-keyed proxy models (``finedetail.models.proxy``:
they find the objects like trained models would, and count passes exactly like SegGPT/SAM do) and the default
``PipelineConfig`` on a generated 1024 x 768 image with 3 objects that have 1-2 px thin parts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = ["encoder_flops", "main", "peak_tflops_for", "pipeline_passes", "run", "three_objects"]

PEAK_BF16_TFLOPS = (  # dense bf16 tensor-core peaks (vendor datasheets), matched in order on the device name
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 125.0),
)


def peak_tflops_for(name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a CUDA device by its name (``torch.cuda.get_device_name``), None if unknown."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def encoder_flops(encoder: Any, *, batch: int = 1, executed: bool = False) -> int:
    """FLOPs of one forward of ``segment_anything``'s ``ImageEncoderViT`` on ``batch`` images (formula in the module
    docstring). ``executed=True`` counts window blocks on the padded grid they really run on."""
    size = int(encoder.img_size)
    conv = encoder.patch_embed.proj
    patch = int(conv.kernel_size[0])
    d = int(conv.out_channels)
    g = size // patch
    t = g * g
    flops = 2 * t * (conv.in_channels * patch * patch) * d
    for blk in encoder.blocks:
        hidden = int(blk.mlp.lin1.out_features)
        w = int(blk.window_size)
        if w > 0:
            gp = math.ceil(g / w) * w
            ta = gp * gp if executed else t
            n_k, hk_wk = w * w, 2 * w
        else:
            ta, n_k, hk_wk = t, t, 2 * g
        flops += 2 * ta * d * 3 * d + 2 * ta * d * d + 4 * t * d * hidden
        flops += 4 * ta * n_k * d + 2 * ta * hk_wk * d
    c1 = encoder.neck[0].out_channels
    c2 = encoder.neck[2].out_channels
    flops += 2 * t * d * c1 + 2 * t * 9 * c1 * c2
    return int(batch * flops)


def make_sam(arch: str, *, seed: int = 0):
    """A random-weight ``Sam``: ``arch`` in vit_b/vit_l/vit_h (full size) or "tiny" (``build_tiny_sam``)."""
    from finedetail.models.tiny import SAM_ARCHS, build_sam, build_tiny_sam

    if arch == "tiny":
        return build_tiny_sam(seed=seed)
    return build_sam(SAM_ARCHS[arch], seed=seed)


def three_objects(hw: tuple[int, int] = (768, 1024), *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> (image (H, W, 3) uint8 RGB, mask (H, W) bool): a smooth low-saturation background (the proxies' key is 0
    there) and 3 red blobs (``synthetic.OBJECT_COLOR["fur"]``, key 1) each with 6 thin parts 1-2 px wide and
    60-140 px long, far enough apart to stay 3 connected components."""
    from finedetail.synthetic import OBJECT_COLOR

    h, w = hw
    rng = np.random.default_rng(seed)
    small = rng.normal(0.0, 1.0, (h // 32 + 2, w // 32 + 2)).astype(np.float32)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    base = np.array([96, 106, 80], np.float32)
    image = np.clip(base + 14.0 * field[..., None], 0, 255).astype(np.uint8)
    mask = np.zeros(hw, np.uint8)
    centres = [(0.28, 0.22), (0.55, 0.70), (0.78, 0.32)]
    for cy, cx in centres:
        c = (int(cx * w), int(cy * h))
        axes = (int(rng.integers(h // 14, h // 9)), int(rng.integers(h // 14, h // 9)))
        cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1, lineType=cv2.LINE_8)
        for k in range(6):
            a = 2 * np.pi * (k + rng.uniform(0, 0.5)) / 6
            r1 = max(axes) + int(rng.integers(60, 140))  # from the centre: the part stays attached to its blob
            p1 = (int(c[0] + r1 * np.cos(a)), int(c[1] + r1 * np.sin(a)))
            cv2.line(mask, c, p1, 1, int(rng.integers(1, 3)), lineType=cv2.LINE_8)
    m = mask.astype(bool)
    image[m] = OBJECT_COLOR["fur"]
    return image, m


def pipeline_passes(hw: tuple[int, int] = (768, 1024)) -> dict[str, Any]:
    """Encoder passes of ``run_image`` (default ``PipelineConfig``, proxy models) on ``three_objects(hw)``."""
    from finedetail import prompts as pr
    from finedetail.config import PipelineConfig
    from finedetail.models.proxy import ProxySAM, ProxySegGPT
    from finedetail.execute import run_image
    from finedetail.plan import variants
    from finedetail.types import PromptPair

    image, mask = three_objects(hw, seed=0)
    p_image, p_mask = three_objects((384, 512), seed=1)
    coarse, refiner = ProxySegGPT(), ProxySAM()
    coarse.set_prompts([PromptPair(image=p_image, mask=p_mask, name="p")])
    cfg = PipelineConfig()
    res = run_image(image, coarse, refiner, cfg)
    st = res.stats
    return {
        "image_hw": list(hw),
        "objects": len(pr.components(mask)[0]),
        "objects_found": len(pr.components(res.mask[0])[0]),
        "models": "proxy",
        "variants": [v.name for v in variants(cfg)],
        "coarse_passes": st.coarse_passes,
        "refiner_passes": st.refiner_passes,
        "variant_tiles": st.encoded_windows,
        "crops": st.crops,
        "encoder_passes": st.encoder_passes,
    }


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, *, repeat: int, warmup: int, device: str) -> tuple[list[float], Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def run(*, arch: str = "vit_b", device: str = "auto", dtype: str = "auto", batches: Sequence[int] | None = None,
        repeat: int = 3, warmup: int | None = None, compile: bool = False, peak_tflops: float | None = None,
        passes: bool = True) -> dict[str, Any]:
    """Run the benchmark; returns the numbers ``main`` prints."""
    import torch

    from finedetail.models.fast_attention import disable_fast_attention, enable_fast_attention

    dev, dt, batches, warmup, name = _settings(device, dtype, batches, warmup)
    on_cuda = dev.type == "cuda"
    peak = peak_tflops if peak_tflops is not None else (peak_tflops_for(name) if on_cuda else None)

    sam = make_sam(arch).to(dev).eval()
    encoder = sam.image_encoder
    modes: list[tuple[str, Any]] = [("reference", encoder), ("fast", encoder)]
    if compile:
        modes.append(("fast_compiled", torch.compile(encoder)))
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(max(batches), 3, encoder.img_size, encoder.img_size, generator=gen).to(dev)
    flops = encoder_flops(encoder)

    def setup(mode: str) -> None:
        (disable_fast_attention if mode == "reference" else enable_fast_attention)(encoder)

    results, first = _time_modes(modes, x_all, batches, dev=dev, dt=dt, repeat=repeat, warmup=warmup, flops=flops,
                                 peak=peak, setup=setup)
    disable_fast_attention(encoder)
    speedup = _speedups(results, batches, "reference", "fast")
    speedup_compiled = _speedups(results, batches, "reference", "fast_compiled")
    res: dict[str, Any] = {
        "arch": arch,
        "device": str(dev),
        "device_name": name,
        "dtype": str(dt).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "batches": batches,
        "flops_per_pass": flops,
        "flops_per_pass_executed": encoder_flops(encoder, executed=True),
        "peak_tflops": peak,
        "results": results,
        "speedup_fast_vs_reference": speedup,
        "speedup_compiled_vs_reference": speedup_compiled,
        "max_abs_diff_fast_vs_reference": float((first["fast"] - first["reference"]).abs().max()),
    }
    return _with_pipeline(res, results, "reference") if passes else res


def _settings(device: str, dtype: str, batches: Sequence[int] | None, warmup: int | None):
    """(torch device, autocast dtype, batch sizes, warm-up calls, device name) from the CLI's "auto" defaults."""
    import torch

    from finedetail.models.checkpoints import resolve_device, resolve_dtype

    dev = resolve_device(None if device == "auto" else device)
    dt = resolve_dtype(None if dtype == "auto" else dtype, dev)
    on_cuda = dev.type == "cuda"
    batches = list(batches or ([1, 4, 8] if on_cuda else [1, 4]))
    warmup = (2 if on_cuda else 0) if warmup is None else warmup
    return dev, dt, batches, warmup, torch.cuda.get_device_name(dev) if on_cuda else "cpu"


def _time_modes(modes, x_all, batches, *, dev, dt, repeat: int, warmup: int, flops: int | None = None,
                peak: float | None = None, setup=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time ``fn(x_all[:b])`` per (mode, fn) of ``modes`` and batch ``b`` (``setup(mode)`` first) -> (one row per
    mode and batch, each mode's first-batch output's first item as float)."""
    import torch

    on_cuda = dev.type == "cuda"
    results: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    for mode, fn in modes:
        if setup is not None:
            setup(mode)
        for b in batches:
            x = x_all[:b]

            def call():
                with torch.inference_mode(), torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32):
                    out = fn(x)
                    return out[-1] if isinstance(out, (list, tuple)) else out

            if on_cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            times, out = _time(call, repeat=repeat, warmup=warmup, device=str(dev))
            per = [t / b for t in times]
            med = statistics.median(per)
            row: dict[str, Any] = {"mode": mode, "batch": b, "s_per_pass": med, "s_per_pass_min": min(per),
                                   "s_per_pass_max": max(per), "runs": repeat,
                                   "tflops": flops / med / 1e12 if flops else None}
            if on_cuda:
                row["peak_fraction"] = row["tflops"] / peak if peak and row["tflops"] else None
                row["max_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
            results.append(row)
            if b == batches[0]:
                first[mode] = out[:1].float()
            del out
    return results, first


def _speedups(results: list[dict[str, Any]], batches: Sequence[int], ref: str, fast: str) -> dict[str, float] | None:
    """Per batch (as str): s/pass of mode ``ref`` over that of ``fast``; None when ``fast`` was not timed."""
    t = {(r["mode"], r["batch"]): r["s_per_pass"] for r in results}
    if not any(m == fast for m, _ in t):
        return None
    return {str(b): t[(ref, b)] / t[(fast, b)] for b in batches}


def _with_pipeline(res: dict[str, Any], results: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """``res`` plus the default pipeline's pass count and the encoder seconds per image at the best non-reference
    rate."""
    res["pipeline"] = pipeline_passes()
    best = min(r["s_per_pass"] for r in results if r["mode"] != reference)
    res["sam_encoder_s_per_image"] = res["pipeline"]["refiner_passes"] * best
    return res


def run_hf(*, refiner: str, arch: str = "tiny", device: str = "auto", dtype: str = "auto",
           batches: Sequence[int] | None = None, repeat: int = 3, warmup: int | None = None, compile: bool = False,
           passes: bool = True) -> dict[str, Any]:
    """``run`` for the transformers refiners: the vision encoder with ``eager`` vs ``sdpa`` attention (same seeded
    weights), per batch; returns the same keys (``flops_per_pass`` None)."""
    import torch

    from finedetail.models.tiny import build_hf_refiner

    dev, dt, batches, warmup, name = _settings(device, dtype, batches, warmup)
    models = {impl: build_hf_refiner(refiner, arch, attn_implementation=impl)[0].to(dev).eval()
              for impl in ("eager", "sdpa")}
    params = sum(p.numel() for p in models["sdpa"].parameters())

    def encoder(model):
        return model.get_image_embeddings if refiner == "sam2" else (lambda x: model.vision_encoder(x)[0])

    modes: list[tuple[str, Any]] = [("eager", encoder(models["eager"])), ("sdpa", encoder(models["sdpa"]))]
    if compile:
        models["sdpa"].vision_encoder.compile()
        modes.append(("sdpa_compiled", encoder(models["sdpa"])))
    side = models["sdpa"].config.prompt_encoder_config.image_size
    x_all = torch.randn(max(batches), 3, side, side, generator=torch.Generator().manual_seed(0)).to(dev)
    results, first = _time_modes(modes, x_all, batches, dev=dev, dt=dt, repeat=repeat, warmup=warmup)
    speedup = _speedups(results, batches, "eager", "sdpa")
    compiled = _speedups(results, batches, "eager", "sdpa_compiled")
    res: dict[str, Any] = {
        "refiner": refiner, "arch": arch, "device": str(dev), "device_name": name,
        "dtype": str(dt).replace("torch.", ""), "threads": torch.get_num_threads(), "batches": batches,
        "parameters": params, "flops_per_pass": None, "flops_per_pass_executed": None, "peak_tflops": None,
        "results": results, "speedup_fast_vs_reference": speedup, "speedup_compiled_vs_reference": compiled,
        "max_abs_diff_fast_vs_reference": float((first["sdpa"] - first["eager"]).abs().max()),
    }
    return _with_pipeline(res, results, "eager") if passes else res


def _ints(text: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 1,4,8, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (``job.bench`` dispatches here); prints a table, or one JSON object with ``--json``."""
    p = argparse.ArgumentParser(prog="job.bench encoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--refiner", default="sam", choices=("sam", "sam-hq", "sam2"),
                   help="which refiner's encoder (default sam: segment-anything's ViT)")
    p.add_argument("--arch", default=None, choices=("tiny", "vit_b", "vit_l", "vit_h", "hiera_t", "hiera_s",
                                                     "hiera_b+", "hiera_l"),
                   help="size, random weights (default vit_b; sam2: hiera_b+; hiera_* only for sam2)")
    p.add_argument("--batches", type=_ints, default=None, help="batch sizes (default 1,4 on CPU, 1,4,8 on CUDA)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--dtype", default="auto", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per mode and batch (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2 on CUDA, 0 on CPU)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the fast encoder")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's bf16 peak (default: by card name)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--no-passes", dest="passes", action="store_false", help="skip the pipeline pass count")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    arch = args.arch or ("hiera_b+" if args.refiner == "sam2" else "vit_b")
    if (args.refiner == "sam2") != arch.startswith("hiera") and arch != "tiny":
        p.error(f"--arch {arch} is not a {args.refiner} size; sam / sam-hq: tiny, vit_b, vit_l, vit_h; sam2: tiny, "
                "hiera_t, hiera_s, hiera_b+, hiera_l")
    if args.refiner == "sam":
        res = run(arch=arch, device=args.device, dtype=args.dtype, batches=args.batches, repeat=args.repeat,
                  warmup=args.warmup, compile=args.compile, peak_tflops=args.peak_tflops, passes=args.passes)
    else:
        res = run_hf(refiner=args.refiner, arch=arch, device=args.device, dtype=args.dtype, batches=args.batches,
                     repeat=args.repeat, warmup=args.warmup, compile=args.compile, passes=args.passes)
    if args.json:
        print(json.dumps(res))
        return 0
    if res["flops_per_pass"] is None:
        print(f"encoder bench: {res['refiner']} {res['arch']} ({res['parameters'] / 1e6:.1f} M parameters) on "
              f"{res['device_name']} ({res['device']}), {res['dtype']}, {res['threads']} torch threads; modes: "
              "transformers eager vs sdpa attention")
    else:
        print(f"encoder bench: SAM {res['arch']} on {res['device_name']} ({res['device']}), {res['dtype']}, "
              f"{res['threads']} torch threads; {res['flops_per_pass'] / 1e9:.1f} GFLOPs per 1024^2 pass "
              f"({res['flops_per_pass_executed'] / 1e9:.1f} executed incl. window padding)")
    peak = res["peak_tflops"]
    head = f"{'mode':14s} {'batch':>5s} {'s/pass':>9s} {'min':>9s} {'max':>9s} {'TFLOP/s':>8s}"
    if res["device"].startswith("cuda"):
        head += f" {'of peak':>8s} {'mem GiB':>8s}"
    print(head)
    for r in res["results"]:
        tflops = "n/a" if r["tflops"] is None else f"{r['tflops']:.4g}"
        line = (f"{r['mode']:14s} {r['batch']:5d} {r['s_per_pass']:9.4f} {r['s_per_pass_min']:9.4f} "
                f"{r['s_per_pass_max']:9.4f} {tflops:>8s}")
        if "max_memory_gib" in r:
            frac = f"{100 * r['peak_fraction']:7.1f}%" if r["peak_fraction"] is not None else "     n/a"
            line += f" {frac} {r['max_memory_gib']:8.2f}"
        print(line)
    print("speedup fast vs reference: " + ", ".join(f"batch {b}: {s:.2f}x"
                                                     for b, s in res["speedup_fast_vs_reference"].items()))
    if res["speedup_compiled_vs_reference"]:
        print("speedup compiled fast vs reference: " + ", ".join(
            f"batch {b}: {s:.2f}x" for b, s in res["speedup_compiled_vs_reference"].items()))
    if res["device"].startswith("cuda"):
        print(f"bf16 peak used: {peak if peak else 'unknown card: pass --peak-tflops'} TFLOP/s")
    print(f"max |fast - reference| on the batch-{res['batches'][0]} embedding: "
          f"{res['max_abs_diff_fast_vs_reference']:.3g}")
    if "pipeline" in res:
        pp = res["pipeline"]
        print(f"pipeline (default config, {pp['models']} models) on one {pp['image_hw'][1]}x{pp['image_hw'][0]} image "
              f"with {pp['objects']} objects: {pp['encoder_passes']} encoder passes = {pp['coarse_passes']} coarse "
              f"(SegGPT) + {pp['refiner_passes']} SAM ({pp['variant_tiles']} variant windows over "
              f"{', '.join(pp['variants'])} + {pp['crops']} crops); SAM encoder time per image at the best "
              f"fast rate: {res['sam_encoder_s_per_image']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
