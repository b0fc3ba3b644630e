"""The Ray Data job end to end on a real local Ray: tiny real-architecture models, corrupt inputs, resume,
fractional GPU scheduling on a declared fake GPU."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import die_with_parent
from jobkit import CORRUPT, check_outputs, read_manifest_rows, write_inputs, write_prompts

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**values):
    from job.config import job_config_from_dict

    return job_config_from_dict(values)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    keys = write_inputs(root / "in")
    write_prompts(root / "prompts")
    return root, keys


def test_whole_job_with_tiny_models_and_corrupt_inputs(ray_local, tiny_weights, data, tmp_path):
    from job.run import run_job

    root, keys = data
    out = tmp_path / "out"
    cfg = _cfg(input=str(root / "in"), prompts=str(root / "prompts"), output=str(out), backend="seggpt-sam",
               sam_checkpoint=tiny_weights["sam"], seggpt_checkpoint=tiny_weights["seggpt"], device="cpu",
               scales=[1.0, 2.0], tta=["identity", "hflip"], resources={"gpu": "on"},
               refine={"skip_empty": False})  # random weights: empty coarse maps; still run SAM on every window
    buf = io.StringIO()
    summary = run_job(cfg, out=buf)
    good = [k for k in keys if k not in CORRUPT]
    assert summary["ok"] == len(good) and summary["errors"] == len(CORRUPT), buf.getvalue()
    check_outputs(out, good, root / "in")
    rows = {r["key"]: r for r in read_manifest_rows(out)}
    assert sorted(rows) == keys  # every input accounted for, exactly once
    for key in CORRUPT:
        assert rows[key]["status"] == "error"
        assert rows[key]["error"], key
        assert not (out / "masks" / (os.path.splitext(key)[0] + ".png")).exists()
    for key in good:
        r = rows[key]
        assert r["status"] == "ok" and r["error"] == ""
        # 1 coarse view pass per TTA view (identity, hflip) + refiner: 2 scales + hflip + crops
        assert r["coarse_passes"] == 2
        assert r["refiner_passes"] >= 3
        assert r["encoder_passes"] == r["coarse_passes"] + r["refiner_passes"]
        assert r["config_hash"] == cfg.config_hash
        assert r["seconds_refine"] > 0 and r["seconds_fuse"] > 0
    assert "error broken/empty.png" in buf.getvalue()


def test_fractional_gpus_sum_to_at_most_one():
    from job.run import plan_resources

    cfg = _cfg(input="in", prompts="p", output="out", scales=[1.0, 2.0, 0.5], tta=["identity", "hflip", "rot90"])
    plan = plan_resources(cfg, {"CPU": 2.0, "GPU": 1.0})
    assert plan.use_gpu
    assert plan.gpu_sum(cfg) == pytest.approx(1.0)  # one actor of each model pool (coarse, refiner) on one GPU
    cpu_plan = plan_resources(cfg, {"CPU": 2.0})
    assert not cpu_plan.use_gpu
    # on CPU the model stages are chained by default, one chained actor per core (each mostly single-threaded):
    # both actors and a read task fit in 2 CPUs (no deadlock)
    assert cpu_plan.chain and cpu_plan.max_actors == 2
    assert cpu_plan.max_actors * cpu_plan.chain_cpus + cpu_plan.io_cpus <= 2.0 + 1e-9
    pools = plan_resources(_cfg(input="in", prompts="p", output="out", scales=[1.0, 2.0, 0.5],
                                tta=["identity", "hflip", "rot90"], resources={"chain": "off"}), {"CPU": 2.0})
    # a read task + a write task (which fuses) + one actor of each of the 2 model pools fit in 2 CPUs: no deadlock
    assert not pools.chain and 2 * pools.io_cpus + 2 * pools.model_cpus <= 2.0 + 1e-9
    assert not plan.chain  # GPUs: a pool per stage unless asked
    chained = plan_resources(_cfg(input="in", prompts="p", output="out", resources={"chain": "on"}),
                             {"CPU": 2.0, "GPU": 1.0})
    assert chained.chain and chained.use_gpu and chained.chain_gpus == 1.0


def test_model_pools_restart_and_retry_without_a_limit_of_rays_own():
    """The stages' attempt accounting, not Ray, bounds how often an input or a model build is tried
    (`job.operators.pool_args`), so the pools' actors must be restarted and their tasks retried without limit. We
    rely on Ray Data's defaults for that (passing them ourselves is deprecated, removed in Ray 2.64): this checks the
    remote arguments Ray Data gives an actor pool built from our arguments, so a Ray upgrade that changes them fails
    here. Nothing deprecated is passed."""
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

    from job.operators import pool_args
    from job.run import plan_resources

    for resources in ({"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0}):
        plan = plan_resources(_cfg(input="in", prompts="p", output="out"), resources)
        args = pool_args(plan, gpus=plan.coarse_gpus)
        assert set(args) <= {"compute", "num_cpus", "num_gpus"}, args  # map_batches' named parameters only
        remote = {k: v for k, v in args.items() if k != "compute"}
        applied = ActorPoolMapOperator._apply_default_remote_args(remote, DataContext.get_current())
        assert applied["max_restarts"] == -1 and applied["max_task_retries"] == -1, applied


def _run_image_files(cfg, input_root: Path, key: str, *, coarse=None) -> dict[str, bytes]:
    """The output files ``finedetail.execute.run_image`` gives for one input, with the models the job builds:
    {relative path: bytes}, as the job would write them."""
    from finedetail.codecs import decode_image
    from finedetail.execute import run_image
    from finedetail.outputs import render_outputs
    from job import io as jio
    from job.models import build_coarse, build_refiner, load_prompts

    image = decode_image((input_root / key).read_bytes(), max_pixels=cfg.max_pixels)
    seg = None if coarse is not None else build_coarse(cfg, load_prompts(cfg.prompts, classes=cfg.classes))
    res = run_image(image, seg, build_refiner(cfg), cfg.pipeline, coarse=coarse)
    files = render_outputs(image, res.prob, res.mask, classes=cfg.classes, overlays=cfg.overlays, coco=cfg.coco,
                           file_name=key, info={"config_hash": cfg.config_hash})
    return {jio.output_key(folder, key, suffix=suffix): data for (folder, suffix), data in files.items()}


@pytest.mark.parametrize("chain", ["off", "on"])
def test_the_job_writes_the_bytes_run_image_gives(ray_local, data, tmp_path, chain):
    """One plan, executed two ways: the job (a Ray actor pool per step, or every step in one chained actor, states
    crossing operators as bytes) writes exactly the masks, probs, RLE and overlays ``run_image`` gives in-process.
    Selective compute on, so views are skipped, a 2x variant takes a reference and crops are chosen per image."""
    from job.run import run_job

    root, keys = data
    out = tmp_path / chain
    cfg = _cfg(input=str(root / "in"), prompts=str(root / "prompts"), output=str(out), backend="proxy",
               scales=[1.0, 2.0], tta=["identity", "hflip", "rot90"], selective={"enabled": True},
               resources={"gpu": "on", "chain": chain})
    summary = run_job(cfg, out=io.StringIO())
    good = [k for k in keys if k not in CORRUPT]
    assert summary["ok"] == len(good), chain
    for key in good:
        for rel, data_ in _run_image_files(cfg, root / "in", key).items():
            assert (out / rel).read_bytes() == data_, (chain, rel)


def _readme_paths() -> dict[str, list[tuple[int, str, str]]]:
    """The README's numbered hop lists ("A pixel's path, input file to mask"), by shape: [(n, operator, text)]."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### A pixel's path, input file to mask", 1)[1].split("\n### ", 1)[0]
    per_pool, chained = section.split("\nChained (", 1)
    return {shape: [(int(n), op, text) for n, op, text in re.findall(r"^(\d+)\. \[([^\]]+)\] (.+)$", part, re.M)]
            for shape, part in (("off", per_pool), ("on", chained))}


def _resolve(name: str) -> object:
    """A dotted name of the hop lists (``job.io.read_bytes``, ``pipeline.fuse``, ``ImageState.put_map``)."""
    import importlib

    prefixes = {"pipeline": "finedetail.pipeline", "ImageState": "finedetail.state.ImageState"}
    head, *rest = name.split(".")
    parts = prefixes.get(head, head).split(".") + rest
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


@pytest.mark.parametrize("chain", ["off", "on"])
def test_the_readme_pixel_path_is_the_dataset_the_job_builds(ray_local, data, chain):
    """README's hop list for each shape: at most 15 hops, numbered in one direction, every function it names exists,
    and its operators (in brackets; "a -> b" is the round trip between two) are, in order, the Ray operators of the
    dataset ``job.run.build_dataset`` builds for the default method, a serialisation round trip between each two."""
    from ray.data._internal.logical.operators.map_operator import MapBatches

    from job.operators import operators
    from job.run import build_dataset, plan_resources

    root, keys = data
    cfg = _cfg(input=str(root / "in"), prompts=str(root / "prompts"), output="unused", backend="proxy",
               resources={"chain": chain})
    plan = plan_resources(cfg, ray_local.cluster_resources())
    ds = build_dataset(cfg, keys[:1], plan)
    names = {op.steps: op.name for op in operators(cfg, chain=plan.chain, fuse=False)}
    built = []
    for op in ds._logical_plan.dag.post_order_iter():  # input first
        if isinstance(op, MapBatches):
            fn = op.name.removeprefix("MapBatches(").removesuffix(")")
            built.append(names[tuple(op.fn_constructor_kwargs["steps"])] if fn == "PlanStage" else fn)

    hops = _readme_paths()[chain]
    assert [n for n, _, _ in hops] == list(range(1, len(hops) + 1)) and len(hops) <= 15, hops
    documented, trips = [], 0
    for _, op, text in hops:
        src, _, dst = op.partition(" -> ")
        trips += bool(dst)
        assert (src if not documented else documented[-1]) == src, f"hop {text!r} goes back to {src}"
        for name in (src, dst):
            if name and (not documented or documented[-1] != name):
                documented.append(name)
        for fn in re.findall(r"`([A-Za-z_][\w.]*)`", text):
            if "." in fn:
                assert callable(_resolve(fn)), fn
    assert documented == built, (documented, built)
    assert trips == len(built) - 1


def test_resume_skips_done_inputs(ray_local, data, tmp_path):
    from job.run import run_job

    root, keys = data
    out = tmp_path / "out"
    base = dict(input=str(root / "in"), prompts=str(root / "prompts"), output=str(out), backend="proxy",
                scales=[1.0], tta=["identity"])
    first = run_job(_cfg(limit=4, **base), out=io.StringIO())
    assert first["images"] == 4
    before = {r["key"] for r in read_manifest_rows(out)}
    second = run_job(_cfg(**base), out=io.StringIO())
    assert second["images"] == len(keys) - len({k for k in before if k not in CORRUPT})
    rows = read_manifest_rows(out)
    ok_keys = [r["key"] for r in rows if r["status"] == "ok"]
    assert len(ok_keys) == len(set(ok_keys))  # nothing done twice
    assert {r["key"] for r in rows} == set(keys)
    third = run_job(_cfg(**base), out=io.StringIO())
    assert third["images"] == len(CORRUPT)  # only the error rows are tried again
    # a different config is a different job: everything runs again
    fourth = run_job(_cfg(**{**base, "tta": ["identity", "hflip"]}), out=io.StringIO())
    assert fourth["images"] == len(keys)


def test_killed_driver_then_rerun_writes_each_input_once(data, tmp_path):
    root, keys = data
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "job", "run", "--input", str(root / "in"), "--prompts", str(root / "prompts"),
           "--output", str(out), "--backend", "proxy", "--scales", "1", "--tta", "identity", "--batch-size", "1",
           "--set", "resources.read_batch=1"]
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent())
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "manifest").glob("*.parquet"))) >= 2:
            break
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
    proc.wait()
    first = {r["key"] for r in read_manifest_rows(out)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # Exit 1 means "no image ok": right when the kill landed after every good image was written (12 tiny images
    # can all land within a second) and the rerun only retried the corrupt ones
    assert done.returncode == 0 or f"done 0 ok, {len(CORRUPT)} errors" in done.stdout, done.stdout + done.stderr
    rows = read_manifest_rows(out)
    assert {r["key"] for r in rows} == set(keys)
    ok = [r["key"] for r in rows if r["status"] == "ok"]
    assert len(ok) == len(set(ok)), "an input was written twice"
    assert first <= {r["key"] for r in rows}
    # no partial files anywhere under the output
    assert not [p for p in out.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.startswith("."))]


def test_coarse_masks_made_elsewhere(ray_local, data, tmp_path):
    """--coarse replaces the coarse model: no coarse encoder passes, outputs are run_image's given those masks."""
    import numpy as np

    from finedetail import synthetic
    from finedetail.codecs import encode_png
    from job.run import run_job

    root, keys = data
    coarse = tmp_path / "coarse"
    good = [k for k in keys if k not in CORRUPT]
    for k in good:
        from PIL import Image

        with Image.open(root / "in" / k) as im:
            w, h = im.size
        m = np.zeros((h, w), np.uint8)
        m[h // 4: h // 2, w // 4: w // 2] = 255
        p = coarse / (os.path.splitext(k)[0] + ".png")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encode_png(m))
    out = tmp_path / "out"
    cfg = _cfg(input=str(root / "in"), coarse=str(coarse), output=str(out), backend="proxy", scales=[1.0],
               tta=["identity"])
    summary = run_job(cfg, out=io.StringIO())
    assert summary["ok"] == len(good)
    rows = {r["key"]: r for r in read_manifest_rows(out)}
    assert all(rows[k]["coarse_passes"] == 0 for k in good)
    for k in good:  # the same bytes as run_image given the same coarse masks
        given = (np.asarray(Image.open(coarse / (os.path.splitext(k)[0] + ".png"))) > 0)[None].astype(np.float32)
        for rel, data_ in _run_image_files(cfg, root / "in", k, coarse=given).items():
            assert (out / rel).read_bytes() == data_, rel


@pytest.mark.parametrize("stage", ["fuse", "refine"])
def test_stage_seconds_are_per_image_not_the_batch_mean(stage, tmp_path):
    """A batch of a 32 px and a 1400 px image: each row's seconds_<stage> is its own time (the large one dominates),
    and the columns still sum to the operator's wall time over the batch. Before, both rows held the batch's mean.
    The fuse step is timed where the job runs it: in the write task, apart from seconds_write."""
    import time

    import numpy as np

    from finedetail import synthetic
    from finedetail.state import ImageState
    from job import stages

    cfg = _cfg(input="in", prompts="p", output=str(tmp_path), backend="proxy", scales=[1.0], tta=["identity"],
               crop={"enabled": False})
    rows = []
    for i, size in enumerate([(32, 32), (1400, 1400)]):
        scene = synthetic.make_scene("fur", seed=i, size=size)
        state = ImageState(image=scene.image)
        state.put_coarse("identity", scene.mask.astype(np.float32)[None])
        state.put_map("scale1", scene.mask.astype(np.float32)[None])
        rows.append({**stages._empty_row(f"img{i}.png"), "state": state.to_bytes()})
    if stage == "fuse":
        run = lambda batch: stages.write_outputs(batch, cfg=cfg, config_hash="h", steps=("fuse",))  # noqa: E731
    else:
        run = stages.PlanStage(cfg, ["refine-scale1"])
    t0 = time.perf_counter()
    out = run(stages._batch(rows))
    wall = time.perf_counter() - t0
    small, large = (float(v) for v in out[f"seconds_{stage}"])
    assert list(out["status"]) == ["ok", "ok"]
    assert large > 5 * small, (small, large)
    total = sum(float(v) for v in out[f"seconds_{stage}"]) + sum(float(v) for v in out["seconds_write"])
    assert total <= wall + 1e-6 and total >= 0.5 * wall


def test_the_refiner_operator_encodes_every_variant_in_one_call():
    """The job's refiner operator (``job.operators``: every refine step, then the crops) runs the plan by groups as
    ``run_image`` does: every window of every variant of the batch's images in ONE ``encode`` call (then one per
    image for its crops), and the same state bytes as ``run_image``. Before, it ran one pool (and one ``encode``)
    per variant."""
    import numpy as np

    from finedetail import synthetic
    from finedetail.execute import run_image
    from finedetail.state import ImageState
    from job import stages
    from job.models import build_refiner
    from job.operators import operators

    cfg = _cfg(input="in", prompts="p", output="out", backend="proxy", scales=[1.0, 2.0], tta=["identity", "hflip"])
    coarse_op, refiner_op = operators(cfg, chain=False, fuse=False)
    assert (coarse_op.name, refiner_op.name) == ("coarse", "refiner")
    assert refiner_op.steps == ("refine-scale1", "refine-scale2", "refine-hflip", "crop")
    stage = stages.PlanStage(cfg, list(refiner_op.steps))
    calls = []
    encode = stage.models.refiner.encode
    stage.models.refiner.encode = lambda images: (calls.append(len(images)), encode(images))[1]
    scenes = [synthetic.make_scene("fur", seed=i, size=(96, 128)) for i in range(2)]
    rows = []
    for i, scene in enumerate(scenes):
        state = ImageState(image=scene.image)
        state.put_coarse("identity", scene.mask.astype(np.float32)[None])
        rows.append({**stages._empty_row(f"img{i}.png"), "state": state.to_bytes()})
    out = stage(stages._batch(rows))
    assert list(out["status"]) == ["ok", "ok"]
    assert calls[0] == 2 * 3 and len(calls) == 1 + 2  # 2 images x 3 variants (a window each), then each one's crops
    for scene, data in zip(scenes, out["state"]):
        done = ImageState.from_bytes(data)
        ref = run_image(scene.image, None, build_refiner(cfg), cfg.pipeline,
                        coarse=scene.mask.astype(np.float32)[None]).state
        for name in ("scale1", "scale2", "hflip", "crop"):
            assert np.array_equal(done.maps[name], ref.maps[name]), name


def test_manifest_columns_carry_their_description():
    import io as _io

    import pyarrow.parquet as pq

    from job import manifest as jm

    assert set(jm.COLUMNS) == set(jm.SCHEMA.names)
    buf = _io.BytesIO()
    pq.write_table(jm.SCHEMA.empty_table(), buf)
    field = pq.read_schema(_io.BytesIO(buf.getvalue())).field("seconds_refine")
    assert b"per input" in field.metadata[b"description"]
