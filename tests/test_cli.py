"""The command line as a user meets it: one-line errors with consistent exit statuses, per-image progress in a
captured log, quiet logs, ``--json`` and ``--help``.

Refusals run ``job.__main__.main`` in this process (no Ray is started for them); the runs that need Ray run the CLI
as a subprocess and read its captured output, as a log would."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import pytest

from jobkit import write_inputs, write_prompts

ROOT = Path(__file__).resolve().parents[1]
PROXY = ["--backend", "proxy", "--scales", "1", "--tta", "identity", "--no-crop"]


# ------------------------------------------------------------------------------------------ help


def _actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif not isinstance(action, argparse._HelpAction):
            yield parser.prog, action


def test_every_flag_has_help_and_run_help_has_examples(capsys):
    from job.__main__ import build_parser, main

    missing = [f"{prog} {action.option_strings or action.dest}" for prog, action in _actions(build_parser())
               if action.option_strings and not action.help]
    assert not missing, f"flags without help text: {missing}"
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "python -m job run --backend classical" in text and "exit status:" in text
    assert "``" not in text
    for flag in ("--input", "--output", "--prompts"):
        line = text[text.index(f"  {flag} URI"):].split("\n  --")[0]
        assert "required" in line, line


def test_bench_help_lists_every_benchmark(capsys):
    from job.bench.__main__ import COMMANDS, main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.split()}
    assert set(COMMANDS) <= listed, set(COMMANDS) - listed
    assert "``" not in text


# ------------------------------------------------------------------------------ one-line refusals


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_inputs(root / "in", n_good=2, corrupt=False)
    write_prompts(root / "prompts")
    return root


def _refused(capsys, argv: list[str]) -> str:
    """``main(argv)`` refused: status 2 and one line on stderr, naming the problem; returns that line."""
    from job.__main__ import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "error:" in err.split("\n")[0] and "Traceback" not in err, err
    return err


def _run_args(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--input", str(data / "in"), "--prompts", str(data / "prompts"), "--output",
            str(tmp_path / "out"), *PROXY, *extra]


def test_config_file_missing(capsys, data, tmp_path):
    err = _refused(capsys, _run_args(data, tmp_path, "--config", str(tmp_path / "nope.yaml")))
    assert f"--config {tmp_path / 'nope.yaml'}: cannot read" in err and "not found" in err
    assert "pass the path or s3:// URI of an existing YAML file" in err


def test_config_file_malformed_yaml(capsys, data, tmp_path):
    (tmp_path / "job.yaml").write_text("scales: [1, 2\npost: {radius: 4}\n")
    err = _refused(capsys, _run_args(data, tmp_path, "--config", str(tmp_path / "job.yaml")))
    assert f"--config {tmp_path / 'job.yaml'}: not valid YAML at line" in err and "fix the file" in err
    assert "<unicode string>" not in err


def test_config_file_not_a_mapping(capsys, data, tmp_path):
    (tmp_path / "job.yaml").write_text("- scales\n")
    err = _refused(capsys, _run_args(data, tmp_path, "--config", str(tmp_path / "job.yaml")))
    assert "--config" in err and "must hold a mapping of keys, got list" in err


def test_missing_required_flag(capsys, data):
    err = _refused(capsys, ["run", "--input", str(data / "in"), "--prompts", str(data / "prompts"), *PROXY])
    assert "output is required: pass --output URI" in err and "missing 1 required positional" not in err


def test_limit_zero(capsys, data, tmp_path):
    err = _refused(capsys, _run_args(data, tmp_path, "--limit", "0"))
    assert "limit (--limit) must be >= 1, got self.limit=0; leave it out to run every input" in err


@pytest.mark.parametrize("key, hint", [("scale=[1]", "did you mean 'scales'?"),
                                       ("post.radious=2", "did you mean post.'radius'?"),
                                       ("resources.max_actor=2", "did you mean resources.'max_actors'?")])
def test_unknown_key_did_you_mean(capsys, data, tmp_path, key, hint):
    err = _refused(capsys, _run_args(data, tmp_path, "--set", key))
    assert "unknown config key" in err and hint in err


def test_bad_choice_is_one_line(capsys, data, tmp_path):
    err = _refused(capsys, _run_args(data, tmp_path, "--backend", "nope"))
    assert "argument --backend: invalid choice: 'nope'" in err and "--help" in err


def test_quickstart_bad_size(capsys, tmp_path):
    err = _refused(capsys, ["quickstart", "--workdir", str(tmp_path / "qs"), "--size", "10"])
    assert "quickstart needs --images >= 1 and --size >= 64, got --images 6 --size 10" in err
    assert not (tmp_path / "qs").exists()


def test_input_is_a_single_file(capsys, data, tmp_path):
    err = _refused(capsys, ["run", "--input", str(data / "in" / "img_00.png"), "--prompts", str(data / "prompts"),
                            "--output", str(tmp_path / "out"), *PROXY])
    assert f"--input {data / 'in' / 'img_00.png'} is a file" in err and "pass that folder" in err
    assert not (tmp_path / "out").exists()


def test_two_inputs_that_would_write_the_same_mask(data, tmp_path, ray_tmp):
    """The listing streams (an archive is not listed whole before the first image), so a clash is found as the
    listing reaches it: the later key becomes an error row whose one-line message names both inputs and the fix,
    the other is segmented, and --strict exits 3 for it."""
    (tmp_path / "in").mkdir()
    for name in ("a.png", "a.jpg"):
        (tmp_path / "in" / name).write_bytes((data / "in" / "img_00.png").read_bytes())
    proc = _cli(["--input", str(tmp_path / "in"), "--prompts", str(data / "prompts"), "--output",
                 str(tmp_path / "out"), *PROXY, "--strict"], ray_tmp)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 3, stdout[-2000:] + stderr[-4000:]
    assert ("error a.png: inputs 'a.jpg' and 'a.png' would both write masks/a.png; rename one of them"
            in stdout + stderr), stdout[-2000:] + stderr[-2000:]
    assert (tmp_path / "out" / "masks" / "a.png").exists()  # a.jpg's mask


# ----------------------------------------------------------------------------------- S3 refusals


def _s3_args(data: Path, tmp_path: Path, input_uri: str) -> list[str]:
    return ["run", "--input", input_uri, "--prompts", str(data / "prompts"), "--output", str(tmp_path / "out"),
            *PROXY]


def test_s3_wrong_credentials(capsys, data, tmp_path, s3_env, monkeypatch):
    bucket = s3_env.make_bucket("cli-creds")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    err = _refused(capsys, _s3_args(data, tmp_path, f"s3://{bucket}/photos"))
    assert f"--input s3://{bucket}/photos: the S3 server refused the credentials; check AWS_ACCESS_KEY_ID" in err
    assert "not-the-secret" not in err


def test_s3_missing_bucket(capsys, data, tmp_path, s3_env):
    err = _refused(capsys, _s3_args(data, tmp_path, "s3://no-such-bucket-here/photos"))
    assert "--input s3://no-such-bucket-here/photos: the bucket does not exist: check its name" in err


def test_s3_endpoint_down(capsys, data, tmp_path, s3_env, monkeypatch):
    from conftest import free_ports

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")
    err = _refused(capsys, _s3_args(data, tmp_path, "s3://archive/photos"))
    assert "--input s3://archive/photos: cannot reach the S3 endpoint: is the server up" in err


# ------------------------------------------------------------------------------ exit statuses


@pytest.mark.parametrize("ok, errors, strict, status", [(3, 0, False, 0), (3, 1, False, 0), (3, 1, True, 3),
                                                         (0, 2, False, 1), (0, 2, True, 1), (0, 0, True, 0)])
def test_exit_status(ok, errors, strict, status):
    from job.errors import exit_status

    assert exit_status({"ok": ok, "errors": errors}, strict=strict) == status


# ------------------------------------------------------------------------------------ progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_count_images_and_show_rate_eta():
    from job.progress import Progress, ProgressOptions

    out, clock = io.StringIO(), _Clock()
    with Progress(out=out, options=ProgressOptions(every=2, seconds=3600), clock=clock) as bar:
        bar.start(5)
        for status in ("ok", "error", "ok", "ok", "error"):
            clock.now += 2.0
            bar.add({"status": status})
    assert out.getvalue().splitlines() == [
        "progress: 2/5 images (1 error), 0.5 img/s, 4s elapsed, ETA 6s",
        "progress: 4/5 images (1 error), 0.5 img/s, 8s elapsed, ETA 2s",
        "progress: 5/5 images (2 errors), 0.5 img/s, 10s elapsed",
    ]


def test_progress_rate_and_eta_leave_the_start_up_out():
    from job.progress import Progress, ProgressOptions

    out, clock = io.StringIO(), _Clock()
    with Progress(out=out, options=ProgressOptions(every=1, seconds=3600), clock=clock) as bar:
        bar.start(4)
        clock.now += 60.0  # Ray starts, the models load
        bar.add({"status": "ok"})
        clock.now += 2.0
        bar.add({"status": "ok"})
    assert out.getvalue().splitlines() == ["progress: 1/4 images, 1m00s elapsed",  # no pace from one image
                                           "progress: 2/4 images, 0.5 img/s, 1m02s elapsed, ETA 4s"]


def test_progress_heartbeat_while_an_image_runs():
    """Nothing finishes for a while: a line with the elapsed time still comes every ``seconds``."""
    from job.progress import Progress, ProgressOptions

    out = io.StringIO()
    with Progress(out=out, options=ProgressOptions(every=10, seconds=0.2)) as bar:
        bar.start(3)
        time.sleep(1.0)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("progress: 0/3 images, ") for line in lines), lines
    assert lines[0].endswith("elapsed, first images still running")


def test_progress_bar_redraws_one_line():
    from job.progress import Progress, ProgressOptions

    out = io.StringIO()
    with Progress(out=out, options=ProgressOptions(bar=True)) as bar:
        bar.start(2)
        bar.add({"status": "ok"})
        bar.add({"status": "ok"})
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and "\r" in text
    assert "[####################] 2/2 images" in text.split("\r")[-1]


# ------------------------------------------------------------------- a real run, as a log sees it


@pytest.fixture
def ray_tmp():
    """A short RAY_TMPDIR (Ray's socket paths must stay under 108 bytes), removed afterwards."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(args: list[str], ray_tmp: str, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local", "RAY_TMPDIR": ray_tmp}
    return subprocess.Popen([sys.executable, "-m", "job", "run", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_run_log_progress_lines_quiet_json_and_strict(tmp_path, ray_tmp):
    """4 good inputs and 3 corrupt ones, one row per block: a progress line per image, the counts in order, a
    heartbeat before the first image; stdout holds the JSON summary only; none of Ray's INFO lines, deprecation
    warnings or core-worker notes; --strict exits 3 for the error rows."""
    keys = write_inputs(tmp_path / "in", n_good=4)
    write_prompts(tmp_path / "prompts")
    proc = _cli(["--input", str(tmp_path / "in"), "--prompts", str(tmp_path / "prompts"), "--output",
                 str(tmp_path / "out"), *PROXY, "--batch-size", "1", "--set", "resources.read_batch=1",
                 "--progress-every", "1", "--progress-seconds", "0.5", "--json", "--strict"], ray_tmp)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 3, stdout[-2000:] + stderr[-4000:]
    summary = json.loads(stdout)  # nothing but the JSON document
    assert summary["ok"] == 4 and summary["errors"] == 3
    lines = stderr.splitlines()
    progress = [line for line in lines if line.startswith("progress: ")]
    counted = [int(line.split()[1].split("/")[0]) for line in progress]
    assert [c for c in counted if c] == sorted(c for c in counted if c)  # never backwards
    assert set(range(1, len(keys) + 1)) <= set(counted), progress  # every image counted, one line each at least
    assert progress[-1].startswith(f"progress: {len(keys)}/{len(keys)} images (3 errors), ")
    assert any("first images still running" in line for line in progress), progress  # Ray's start-up: heartbeat
    assert lines.index(progress[-1]) < next(i for i, line in enumerate(lines) if line.startswith("finedetail: done"))
    for noise in (" INFO ", "RayDeprecationWarning", "ray_remote_args", "constructor arguments", "no GPU",
                  "DecompressionBomb", "Total Progress", "Progress bars disabled"):
        assert noise not in stderr, f"{noise!r} in:\n{stderr[-4000:]}"


def test_ctrl_c_exits_130_with_one_line(tmp_path, ray_tmp):
    write_inputs(tmp_path / "in", n_good=6, corrupt=False)
    write_prompts(tmp_path / "prompts")
    proc = _cli(["--input", str(tmp_path / "in"), "--prompts", str(tmp_path / "prompts"), "--output",
                 str(tmp_path / "out"), *PROXY, "--batch-size", "1", "--set", "resources.read_batch=1",
                 "--progress-every", "1"], ray_tmp, start_new_session=True)
    try:
        first = proc.stdout.readline()  # "finedetail: N inputs ..." when the streamed listing ends, images running
        assert first.startswith("finedetail: 6 inputs"), first
        proc.send_signal(signal.SIGINT)  # the driver only, as a terminal's Ctrl-C reaches the foreground job
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stdout[-2000:] + stderr[-4000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("finedetail: interrupted;") and "re-run the same command to resume" in last
    assert "Traceback" not in stderr, stderr[-4000:]


# ----------------------------------------------------------------------------------- quiet logs


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data: Pillow reads the header only when opening)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_no_decompression_bomb_warning_below_max_pixels():
    """Pillow warns from 89.5 Mpx on; our own max_pixels guard is what decides, silently."""
    from finedetail.codecs import image_pixels

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_pixels(_png_header(9500, 9500), max_pixels=100_000_000) == 9500 * 9500


def test_core_worker_note_is_dropped_from_stderr_and_the_rest_passes():
    """Ray's core worker logs in C++ straight to file descriptor 2: `drop_stderr_lines` filters that descriptor."""
    code = ("import os, sys\nfrom job.logs import drop_stderr_lines\ndrop_stderr_lines()\n"
            "os.write(2, b'[E core_worker.cc] Actor x has constructor arguments in the object store and "
            "max_restarts > 0.\\nkept line\\n')\nprint('python line', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stderr == "kept line\npython line\n", done.stderr
