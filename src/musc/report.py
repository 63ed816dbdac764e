"""`report.html`: one self-contained page a person can look through (no network, no CDN).

Images ranked by score with overlay thumbnails and decisions, a histogram of image scores with the
threshold drawn, a click-through view per image (original, heatmap, overlay, mask), the configuration
and timings. Thumbnails are small JPEGs in `thumbs/` next to the page, loaded lazily, so it stays
usable for thousands of images.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .decision import mask_notes
from .export import INPUT_ORDER
from .io import atomic_write_bytes, atomic_write_text, read_image, read_scores_table

MAP_MAXIMA_COLUMNS = ("map_max", "raw_score", "evidence")
"""scores.csv columns a decision's threshold_on may name that hold map maxima (raw_score in results written before
map_max existed; evidence: what the map-based decisions test, on tiles the finest view's map maxima)."""

THUMB = 192


def _thumb(src: Path, dst: Path) -> None:
    img = read_image(src)
    img.thumbnail((THUMB, THUMB))
    dst.parent.mkdir(parents=True, exist_ok=True)
    import io as _io

    buf = _io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    atomic_write_bytes(dst, buf.getvalue())


def histogram_svg(scores: np.ndarray, threshold: float | None, width: int = 640, height: int = 180, bins: int = 40) -> str:
    """An inline SVG histogram of the scores with the threshold as a red line."""
    lo, hi = float(scores.min()), float(scores.max())
    if threshold is not None and np.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    hi = hi if hi > lo else lo + 1.0
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
    pad, top = 30, max(int(counts.max()), 1)
    bw = (width - 2 * pad) / bins
    bars = []
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / top
        x = pad + i * bw
        bars.append(f'<rect x="{x:.1f}" y="{height - pad - h:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                    f'fill="#4a78b5"><title>{edges[i]:.3f}–{edges[i + 1]:.3f}: {c}</title></rect>')
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="histogram of image scores">', *bars,
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>',
             f'<text x="{pad}" y="{height - 8}" font-size="11">{lo:.3f}</text>',
             f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">{hi:.3f}</text>',
             f'<text x="{pad}" y="{pad - 10}" font-size="11">{top} images</text>']
    if threshold is not None and np.isfinite(threshold):
        x = pad + (width - 2 * pad) * (threshold - lo) / (hi - lo)
        parts.append(f'<line x1="{x:.1f}" y1="{pad - 5}" x2="{x:.1f}" y2="{height - pad}" stroke="#d22" '
                     f'stroke-width="2" stroke-dasharray="4 2"/>')
        anchor, dx = ("end", -4) if x > width * 0.7 else ("start", 4)
        parts.append(f'<text x="{x + dx:.1f}" y="{pad}" font-size="11" fill="#d22" text-anchor="{anchor}">'
                     f'threshold {threshold:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em .8em;margin:.4em 0}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:196px;background:#fff;border:1px solid #ddd;border-radius:4px;cursor:pointer;font-size:12px}
.card img{width:192px;height:192px;object-fit:contain;background:#eee;display:block;margin:2px}
.card .meta{padding:3px 6px;display:flex;justify-content:space-between}
.defective{border:2px solid #d22}.badge{font-weight:bold}.defective .badge{color:#d22}.normal .badge{color:#287}
#view{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);color:#fff;padding:1em;overflow:auto}
#view .panes{display:flex;gap:8px;flex-wrap:wrap}#view figure{margin:0}#view img{max-width:45vw;max-height:70vh}
table.kv td{padding:1px 8px;border-bottom:1px solid #eee;font-size:12px;vertical-align:top}
button{font-size:14px}
"""

_SCRIPT = """
const items = JSON.parse(document.getElementById('items').textContent);
const view = document.getElementById('view');
let current = -1;
function show(i){
  current = i; const it = items[i];
  document.getElementById('vtitle').textContent =
    `#${it.rank}  ${it.path}  score ${it.score}  ${it.decision}` + (it.q ? `  q ${it.q}` : '');
  for (const k of ['original','heatmap','overlay','mask']){
    const fig = document.getElementById('v-'+k);
    fig.style.display = it[k] ? '' : 'none';
    if (it[k]) fig.querySelector('img').src = it[k];
  }
  view.style.display = 'block';
}
function hide(){ view.style.display = 'none'; current = -1; }
document.querySelectorAll('.card').forEach(c => c.addEventListener('click', () => show(+c.dataset.index)));
document.getElementById('close').addEventListener('click', hide);
function countThumbs(){
  const imgs = [...document.querySelectorAll('#grid img')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.thumbsRendered = ok + '/' + imgs.length;
}
document.querySelectorAll('#grid img').forEach(i => i.addEventListener('load', countThumbs));
window.addEventListener('load', countThumbs);
document.addEventListener('keydown', e => {
  if (current < 0) return;
  if (e.key === 'Escape') hide();
  if (e.key === 'ArrowRight' && current + 1 < items.length) show(current + 1);
  if (e.key === 'ArrowLeft' && current > 0) show(current - 1);
});
"""


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def _card(it: dict) -> str:
    """One image's card in the gallery: thumbnail, rank, score, decision, name and, when the decision gave one, its
    q-value."""
    e = html.escape
    q = (f'<div class="meta"><span title="q-value: the smallest false-discovery rate at which this image is '
         f'flagged">q-value {e(it["q"])}</span></div>' if it["q"] else "")
    return (f'<div class="card {e(it["decision"])}" data-index="{it["index"]}">'
            f'<img loading="lazy" src="{e(it["thumb"])}" alt="{e(it["name"])}" width="192" height="192">'
            f'<div class="meta"><span>#{it["rank"]} · {e(it["score"])}</span>'
            f'<span class="badge">{e(it["decision"])}</span></div>'
            f'<div class="meta"><span title="{e(it["path"])}">{e(it["name"][:28])}</span></div>{q}</div>')


def write_report(results: str | Path, progress: bool = True, title: str | None = None) -> Path:
    """Write `report.html` (and `thumbs/`) into an existing `musc score` result folder."""
    out = Path(results)
    _, _, rows = read_scores_table(out)
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    decision = json.loads((out / "decision.json").read_text()) if (out / "decision.json").is_file() else None
    items = []
    for i, row in enumerate(tqdm(rows, desc="report", unit="img", disable=not progress, leave=False)):
        name = row["name"]
        overlay, heat, mask = out / "overlays" / f"{name}.png", out / "heatmaps" / f"{name}.png", out / "masks" / f"{name}.png"
        original = Path(row["path"])
        thumb = out / "thumbs" / f"{name}.jpg"
        source = overlay if overlay.is_file() else original
        if not thumb.is_file() or thumb.stat().st_mtime < source.stat().st_mtime:
            _thumb(source, thumb)
        items.append({
            "index": i, "rank": int(row["rank"]), "path": row["path"], "name": name, "score": row["score"],
            "decision": row.get("decision", ""), "q": row.get("q_value", ""), "thumb": _rel(thumb, out),
            "original": _rel(original.resolve(), out.resolve()) if original.is_file() else None,
            "heatmap": _rel(heat, out) if heat.is_file() else None,
            "overlay": _rel(overlay, out) if overlay.is_file() else None,
            "mask": _rel(mask, out) if mask.is_file() else None,
        })
    on = decision.get("image", {}).get("threshold_on", "score") if decision else "score"
    scores = np.array([float(r.get(on) or r["score"]) for r in rows])
    threshold = decision.get("image", {}).get("threshold") if decision else None
    e = html.escape
    cards = "".join(_card(it) for it in items)
    summary = f"{len(items)} images"
    warn_html = ""
    if decision:
        img = decision["image"]
        summary += (f"; {img['defective']} flagged defective by <b>{e(img['method'])}</b> "
                    f"(threshold {'none' if img['threshold'] is None else format(img['threshold'], '.4f')} on the "
                    f"{'map maxima' if on in MAP_MAXIMA_COLUMNS else 'scores'}: "
                    f"{e(img['detail'])})")
        if img.get("defect_rate"):
            r = img["defect_rate"]
            summary += (f"; estimated defect rate {r['estimate']:.0%} ({r['level']:.0%} interval "
                        f"{r['low']:.0%} to {r['high']:.0%})")
        if img.get("undecided"):
            summary += "; <b>undecided</b>: the method could not decide this batch"
        notes = mask_notes(decision.get("pixel"), config.get(INPUT_ORDER, []))
        warn_html = "".join(f'<div class="warn">{e(w)}</div>' for w in [*img.get("warnings", []), *notes])
    cfg = config.get("config", {})
    facts = {k: v for k, v in config.items() if k != "config"}
    kv = lambda d: "".join(f"<tr><td>{e(str(k))}</td><td>{e(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
                           for k, v in d.items())
    items_json = json.dumps(items).replace("</", "<\\/")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(title or "musc report")}</title><style>{_STYLE}</style></head>
<body>
<h1>{e(title or "musc report")}</h1>
<p id="summary">{summary}</p>{warn_html}
<h2>Image scores</h2>{histogram_svg(scores, threshold)}
<h2>Images, most anomalous first</h2><div class="grid" id="grid">{cards}</div>
<h2>Configuration</h2><table class="kv">{kv(cfg)}</table>
<h2>Run</h2><table class="kv">{kv(facts)}</table>
<div id="view"><button id="close">close (Esc)</button> <span id="vtitle"></span>
<div class="panes">
<figure id="v-original"><img alt="original"><figcaption>original</figcaption></figure>
<figure id="v-heatmap"><img alt="heatmap"><figcaption>heatmap</figcaption></figure>
<figure id="v-overlay"><img alt="overlay"><figcaption>overlay</figcaption></figure>
<figure id="v-mask"><img alt="mask"><figcaption>mask</figcaption></figure>
</div></div>
<script type="application/json" id="items">{items_json}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
    path = out / "report.html"
    atomic_write_text(path, page)
    return path


__all__ = ["write_report", "histogram_svg"]
