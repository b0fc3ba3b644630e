"""``python -m job report OUTPUT [--out FILE]``: one static HTML page about a whole run, opened in a browser with no
server.

The page shows the run (``run.json``: version, command line, config summary, the whole resolved config), the
manifest's counts (ok, errors, empty masks, encoder passes, seconds), the errors, and one table row per input (its
latest manifest row): a thumbnail of its overlay (of its mask with ``--no-overlays``), status, empty, mean
probability, mask area, size, passes and seconds per stage. Thumbnails are small JPEGs embedded in the page
(``data:`` URIs), so the page is one file that can be mailed or copied anywhere; each links to the full-size overlay
when the page sits where it can reach it (the default: ``report.html`` at the root of the output, local or S3).
Works on a local output or an ``s3://`` one (read through ``finedetail.storage``).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
import time
import urllib.parse
from typing import Any

from job import io as jio
from job import manifest as jm
from job.runrecord import read_run_record

__all__ = ["REPORT_KEY", "build_report", "main", "write_report"]

REPORT_KEY = "report.html"
#: thumbnails are at most this many pixels on their long side
THUMB_PX = 192
#: at most this many rows get a thumbnail (the page stays a few MB on a large archive); the rest link only
MAX_THUMBS = 1000
#: the keys of the config the page's summary shows (the whole config is folded below it)
SUMMARY_KEYS = ("backend", "classes", "preset", "scales", "tta", "ensemble.rule", "crop.enabled",
                "selective.enabled", "input", "prompts", "coarse")

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.2em 0 .4em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f2f2f2;position:sticky;top:0}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.error td{background:#fff0f0}tr.empty td{background:#fffbe6}
.kv th{position:static;width:12em}.err{color:#a00;white-space:pre-wrap;max-width:40em}
img.thumb{display:block;max-width:192px;max-height:192px}code{font-size:12px}pre{font-size:12px;background:#f7f7f7;
padding:.6em;overflow:auto;max-height:30em}
"""


def _get(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, digits) for v in value)
    return str(value)


def _thumbnail(data: bytes, size: int) -> str:
    """A PNG's bytes -> a ``data:image/jpeg`` URI of it at most ``size`` px on its long side."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the job's own output (a large scene's overlay), not an input to guard against
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size, size))
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pictures(storage: jio.Storage) -> dict[str, str]:
    """Input stem -> the output key of what shows it best: its overlay, else its mask (its label map with several
    classes). One listing per folder (a large archive's output on S3 is listed, never probed file by file)."""
    found: dict[str, str] = {}
    for folder in ("labels", "masks", "overlays"):  # later folders win
        for key in jio.list_files(storage, folder, extensions=(".png",)):
            found[key[: -len(".png")]] = f"{folder}/{key}"
    return found


def _picture_key(pictures: dict[str, str], key: str) -> str | None:
    """The picture of the input ``key`` (a manifest key: its extension included), or None."""
    try:
        stem = jio.output_key("x", key, suffix=".png")[len("x/"): -len(".png")]
    except ValueError:
        return None  # not a key an input can have (a refused name): no picture
    return pictures.get(stem)


def _link_base(output: str, out: str | None) -> str | None:
    """How the page reaches the output's files: "" when the page sits at the output's root, a relative path when
    both are local folders, None when it cannot (an S3 output seen from a local page)."""
    if out is None:
        return ""
    if "://" in output and not output.startswith("file://"):
        return None
    root = output[len("file://"):] if output.startswith("file://") else output
    rel = os.path.relpath(os.path.abspath(root), os.path.dirname(os.path.abspath(out)))
    return "" if rel == "." else rel.replace(os.sep, "/") + "/"


def _row_html(row: dict[str, Any], picture: str | None, thumb: str | None, link_base: str | None) -> str:
    key, status = row["key"], row["status"]
    cls = "error" if status == "error" else ("empty" if row.get("empty") else "ok")
    if thumb:
        img = f'<img class="thumb" src="{thumb}" alt="{html.escape(key)}">'
        cell = img if picture is None or link_base is None else (
            f'<a href="{html.escape(link_base + urllib.parse.quote(picture))}">{img}</a>')
    elif picture is not None and link_base is not None:
        cell = f'<a href="{html.escape(link_base + urllib.parse.quote(picture))}">{html.escape(picture)}</a>'
    else:
        cell = ""
    area = row.get("mask_area")
    pixels = (row.get("height") or 0) * (row.get("width") or 0)
    share = f" ({100 * area / pixels:.1f} %)" if area is not None and pixels else ""
    size = f"{row['width']}×{row['height']}" if row.get("height") else ""
    seconds = [row.get(f"seconds_{s}") or 0.0 for s in jm.STAGES]
    mean = _fmt(row.get("mean_prob"), 3)
    if row.get("class_mean_prob"):
        mean += "<br><small>" + html.escape(_fmt(row["class_mean_prob"], 3)) + "</small>"
    cells = [
        cell, f"<code>{html.escape(key)}</code>", html.escape(status), _fmt(row.get("empty")), mean,
        html.escape(f"{_fmt(area)}{share}"), size,
        f"{_fmt(row.get('coarse_passes'))} + {_fmt(row.get('refiner_passes'))} = {_fmt(row.get('encoder_passes'))}",
        *(f"{s:.2f}" for s in seconds), f"{sum(seconds):.2f}", _fmt(row.get("attempts")),
        f'<span class="err">{html.escape(row.get("error") or "")}</span>',
    ]
    numeric = {4, 5, *range(8, 8 + len(jm.STAGES) + 2)}  # mean prob, area, seconds, tries: right-aligned
    tds = "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells))
    return f'<tr class="row {cls}" data-key="{html.escape(key)}">{tds}</tr>'


def build_report(output: str, *, out: str | None = None, thumb: int = THUMB_PX, max_thumbs: int = MAX_THUMBS
                 ) -> str:
    """The page (HTML text) of the run in ``output`` (a local folder or s3:// URI). ``out``: the local path the page
    will be written to (None: ``report.html`` at the output's root), for its links to the full-size overlays.
    Raises ValueError when ``output`` holds no manifest (not a run's output)."""
    storage = jio.open_storage(output)[0]
    rows = sorted(jm.latest_rows(jm.read_manifest(storage)).values(), key=lambda r: r["key"])
    run = read_run_record(storage)
    if not rows and run is None:
        raise ValueError(f"{jio.redact(output)} holds no manifest/ and no run.json: not the "
                         "--output of a run; pass the folder (or s3:// prefix) a run wrote")
    link_base = _link_base(output, out)
    summary = jm.summarize(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    total_s = sum(sum(r.get(f"seconds_{s}") or 0.0 for s in jm.STAGES) for r in rows)
    hashes: dict[str, int] = {}
    for r in rows:
        hashes[r["config_hash"] or "?"] = hashes.get(r["config_hash"] or "?", 0) + 1

    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>finedetail run: "
             f"{html.escape(jio.redact(output))}</title><style>{_CSS}</style></head><body>",
             f"<h1>finedetail run: <code>{html.escape(jio.redact(output))}</code></h1>"]
    kv = [("images", summary["images"]), ("ok", summary["ok"]), ("errors", summary["errors"]),
          ("empty masks", summary["empty"]),
          ("encoder passes / image", f"{summary['encoder_passes_per_image']:.2f}"),
          ("stage seconds, all images", f"{total_s:.1f}"),
          ("stage seconds / ok image", f"{total_s / len(ok):.2f}" if ok else ""),
          ("config hashes", ", ".join(f"{h} ({n} rows)" for h, n in hashes.items()))]
    if run is not None:
        cfg = run.get("config") or {}
        kv = [("finedetail", run.get("finedetail_version")), ("run", run.get("run_id")),
              ("started", run.get("started_at")), ("command", " ".join(run.get("command") or [])),
              *((k, _fmt(_get(cfg, k))) for k in SUMMARY_KEYS), *kv]
    else:
        kv.append(("run.json", "none (written by an older version)"))
    parts.append("<h2>Run</h2><table class='kv'>"
                 + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in kv)
                 + "</table>")
    if run is not None:
        parts.append("<details><summary>resolved config (config.yaml)</summary><pre>"
                     + html.escape(json.dumps(run.get("config"), indent=2)) + "</pre></details>")
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        parts.append(f"<h2>Errors ({len(errors)})</h2><ul class='errors'>" + "".join(
            f"<li><code>{html.escape(r['key'])}</code>: <span class='err'>{html.escape(r['error'] or '')}</span></li>"
            for r in errors) + "</ul>")
    head = ["picture", "key", "status", "empty", "mean prob", "mask px", "size (w×h)",
            "passes (coarse + refiner)", *(f"s {s}" for s in jm.STAGES), "s total", "tries", "error"]
    parts.append(f"<h2>Images ({len(rows)})</h2>")
    if len(rows) > max_thumbs:
        parts.append(f"<p>Thumbnails for the first {max_thumbs} rows only; the rest link to their files.</p>")
    parts.append("<table class='rows'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                 + "</tr></thead><tbody>")
    shown, pictures = 0, _pictures(storage)
    for r in rows:
        picture = _picture_key(pictures, r["key"]) if r["status"] == "ok" else None
        uri = None
        if picture is not None and shown < max_thumbs:
            try:
                uri = _thumbnail(jio.read_bytes(storage, picture), thumb)
                shown += 1
            except (jio.StorageError, OSError, ValueError):
                uri = None  # unreadable picture: the row stays, with its link
        parts.append(_row_html(r, picture, uri, link_base))
    parts.append(f"</tbody></table><p><small>Written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} by "
                 "<code>python -m job report</code>. The columns are described in the README (outputs under "
                 "--output).</small></p></body></html>")
    return "\n".join(parts)


def write_report(output: str, *, out: str | None = None, thumb: int = THUMB_PX, max_thumbs: int = MAX_THUMBS
                 ) -> str:
    """Build the page and write it: to the local file ``out``, or (None) to ``report.html`` at the output's root.
    Returns where it went."""
    page = build_report(output, out=out, thumb=thumb, max_thumbs=max_thumbs).encode()
    if out is None:
        storage = jio.open_storage(output)[0]
        jio.write_bytes_atomic(storage, REPORT_KEY, page)
        return f"{output.rstrip('/')}/{REPORT_KEY}"
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    jio.write_bytes_atomic(folder, os.path.basename(out), page)
    return os.path.abspath(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finedetail report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", metavar="OUTPUT", help="a run's --output: a local folder or s3://bucket/prefix")
    parser.add_argument("--out", help="write the page to this local file (default: OUTPUT/report.html)")
    parser.add_argument("--thumb", type=int, default=THUMB_PX, help=f"thumbnail size in px (default {THUMB_PX})")
    parser.add_argument("--max-thumbs", type=int, default=MAX_THUMBS,
                        help=f"thumbnails for at most this many rows (default {MAX_THUMBS})")
    args = parser.parse_args(argv)
    if args.thumb < 16 or args.max_thumbs < 0:
        parser.error(f"--thumb must be >= 16 and --max-thumbs >= 0, got {args.thumb} and {args.max_thumbs}")
    try:
        where = write_report(args.output, out=args.out, thumb=args.thumb, max_thumbs=args.max_thumbs)
    except (ValueError, jio.StorageError) as exc:
        parser.exit(2, f"finedetail report: error: {' '.join(jio.redact(exc).split())}\n")
    print(f"finedetail: report -> {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
