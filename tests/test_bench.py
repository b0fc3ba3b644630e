"""Smoke tests of the benchmarks: each runs end to end at tiny sizes and ``--json`` prints one parsable object.
No timing is asserted (speed targets live in the benchmarks, never in tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _json_of(capsys, module, argv):
    assert module.main([*argv, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_dispatch_lists_every_bench(capsys):
    from job.bench.__main__ import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("throughput", "overhead", "encoder"))


def test_encoder_bench(capsys):
    from job.bench import encoder

    res = _json_of(capsys, encoder, ["--arch", "tiny", "--batches", "1,2", "--repeat", "1", "--device", "cpu"])
    assert [(r["mode"], r["batch"]) for r in res["results"]] == [("reference", 1), ("reference", 2), ("fast", 1),
                                                                 ("fast", 2)]
    assert all(r["s_per_pass"] > 0 for r in res["results"])
    assert res["max_abs_diff_fast_vs_reference"] <= 1e-4
    pp = res["pipeline"]
    assert pp["objects"] == 3 and pp["image_hw"] == [768, 1024]
    assert pp["encoder_passes"] == pp["coarse_passes"] + pp["refiner_passes"] > 0


def test_encoder_flops_formula():
    """ViT-H's count against the hand sum in the module docstring (~5.64 TFLOPs useful, 5.96 executed)."""
    import torch

    from finedetail.models.tiny import SAM_ARCHS, build_sam
    from job.bench.encoder import encoder_flops, peak_tflops_for

    with torch.device("meta"):
        enc = build_sam(SAM_ARCHS["vit_h"]).image_encoder
    t, d = 4096, 1280
    blocks = 32 * 24 * t * d * d
    attn = 28 * (4 * t * 196 * d + 2 * t * 28 * d) + 4 * (4 * t * t * d + 2 * t * 128 * d)
    embed_neck = 2 * t * 768 * d + 2 * t * d * 256 + 2 * t * 9 * 256 * 256
    assert encoder_flops(enc) == blocks + attn + embed_neck
    assert 5.6e12 < encoder_flops(enc) < 5.7e12 < encoder_flops(enc, executed=True) < 6.0e12
    assert encoder_flops(enc, batch=4) == 4 * encoder_flops(enc)
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989 and peak_tflops_for("NVIDIA A100-SXM4-40GB") == 312
    assert peak_tflops_for("NVIDIA H100 PCIe") == 756 and peak_tflops_for("Some GPU") is None


def test_throughput_bench(ray_local, capsys, tmp_path):
    from job.bench import throughput

    res = _json_of(capsys, throughput, ["--images", "2", "--size", "64x96", "--scales", "1", "--tta", "identity",
                                        "--no-crop", "--device", "cpu", "--workdir", str(tmp_path)])
    assert res["ok"] == 2 and res["errors"] == 0
    assert res["images_per_s"] > 0 and res["encoder_passes"] == 2 * 2  # 1 coarse + 1 SAM pass per image
    st = res["stages"]
    assert st["images"] == 2 and st["seconds_refine_per_image"] > 0 and st["fuse_mpx_per_s"] > 0


@pytest.mark.parametrize("backend", ["proxy"])
def test_overhead_bench(ray_local, capsys, tmp_path, backend):
    from job.bench import overhead

    res = _json_of(capsys, overhead, ["--images", "2", "--size", "64x96", "--backend", backend,
                                      "--workdir", str(tmp_path)])
    assert res["n"] == 2 and res["ray_s"] > 0 and res["loop_s"] > 0
    assert res["ratio"] == pytest.approx(res["ray_s"] / res["loop_s"])


def test_stitch_bench(capsys):
    from job.bench import stitch

    res = _json_of(capsys, stitch, ["--sizes", "300x520", "--window", "128", "--overlap", "16"])
    rows = {r["post"]: r for r in res["rows"]}
    assert set(rows) == {"off", "post"} and rows["off"]["windows"] == rows["post"]["windows"] == 15
    assert rows["post"]["pieces"] > 0 and rows["post"]["mask_area"] != rows["off"]["mask_area"]
    assert all(r["peak_rss_mb"] > 0 and r["seconds"] > 0 for r in rows.values())


def test_largeimage_bench(capsys, tmp_path):
    """One small photo through windows (window_pixels lowered by --set) in a fresh process with its own Ray."""
    pytest.importorskip("psutil", reason="the benchmark samples memory with psutil")
    pytest.importorskip("rasterio", reason="windows need the geo extra: pip install 'finedetail[geo]'")
    from job.bench import largeimage

    res = _json_of(capsys, largeimage, ["--sizes", "400x300", "--methods", "single", "--backend", "proxy",
                                        "--cpus", "1", "--window-pixels", "65536", "--set", "window=256",
                                        "--set", "window_overlap=32", "--workdir", str(tmp_path)])
    (run,) = res["runs"]
    assert run["size"] == "400x300" and run["ok"] == 1 and not run["timed_out"]
    assert run["windows"] == 2 * 2 and run["encoder_passes"] > 0
    assert run["peak_rss_mb"]["driver"] > 0 and run["peak_rss_mb"]["model_actor"] > 0


def test_classical_bench(capsys, tmp_path):
    from finedetail.codecs import encode_png
    from job.bench import classical
    from tests.test_thin import lines_scene

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        img, mask = lines_scene(i)
        (tmp_path / f"images/s{i}.png").write_bytes(encode_png(img))
        (tmp_path / f"masks/s{i}.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
    res = _json_of(capsys, classical, ["--data", str(tmp_path), "--inputs", "1", "--configs", "single,+crop",
                                       "--set", "post.guided=false", "--set", "post.opening=none",
                                       "--option", "coarse_iterations=20"])
    assert res["prompts"] == ["s0", "s1"] and res["inputs"] == ["s2"] and res["threads"] == 1
    assert [r["config"] for r in res["rows"]] == ["single", "+crop"]
    assert all(r["f1"] > 0.5 and r["cpu_s"] > 0 for r in res["rows"]), res["rows"]


def test_classical_bench_rows_are_what_the_job_resolves():
    """Each row of ``python -m job.bench classical`` runs the classical backend's defaults plus that row's flags: its
    ``single`` row used to carry the library's post-processing, which the job's classical default does not run."""
    from finedetail.config import PostprocessConfig
    from job.bench.classical import row_config

    single = row_config("single")
    assert single.scales == (1.0,) and single.tta == ("identity",) and not single.crop.enabled
    assert not single.post.guided and single.post.close_size == 0 and single.post.island_area == 0
    assert row_config("default") == single  # the backend's default method is the single pass
    assert row_config("+post").post == PostprocessConfig()
    assert row_config("+crop").crop.enabled and row_config("+tta").tta == ("identity", "hflip")
    assert row_config("single", ["post.guided=true"]).post.guided
    with pytest.raises(SystemExit, match="unknown config"):
        row_config("+nothing")


def test_pressure_bench(capsys, tmp_path):
    """The whole job in a child driver with one stage slowed: Ray Data's counters sampled, every image done."""
    from job.bench import pressure

    assert pressure.main(["--images", "6", "--size", "64", "--delay", "0.2", "--max-actors", "2", "--cpus", "4",
                          "--gpus", "2", "--store-mb", "0", "--work", str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["ok"] == 6 and row["decoded_mb"] > 0 and set(row["actors_max"]) == {"coarse", "refiner"}
    assert 1 <= row["actors_max"]["coarse"] <= 2 and row["timeline"]


def test_archive_bench(capsys, tmp_path):
    """A 16-key local archive: trial, resume and listing each in a fresh driver; the listing skips the half done."""
    from job.bench import archive

    assert archive.main(["--keys", "16", "--store", "local", "--work", str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["trial"]["ok"] == 8 and row["resume"]["skipped"] == 8 and row["resume"]["ok"] == 8
    assert (row["listing"]["listed"], row["listing"]["done"], row["listing"]["todo"]) == (16, 8, 8)
    assert row["trial"]["first_mask_s"] is not None and row["trial"]["driver_rss_mb"] > 0
