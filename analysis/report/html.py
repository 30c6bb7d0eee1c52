"""The module report as one self-contained HTML file: :func:`write_html`.

Everything is inline (CSS, JS, SVG drawings, images as ``data:`` URIs); the page makes no
network request and works offline. Layout: the layered graph (one circle per direction,
coloured by module; drawn when the graph has at most ``max_nodes`` nodes), the module graph
(modules as boxes spanning their node layers, edges = Σ ŵ between modules, the largest
``max_boxes`` modules), the module table, and one panel per module (directions, input map,
output effects, top examples) shown when a module is clicked.

Loading the page with ``#module-<c>`` opens module c's panel. Test hook: loading the page with the fragment ``#selftest`` clicks every module in turn and
writes ``ok <n>`` (or ``fail: …``) to ``<body data-selftest>`` and ``#selftest-log``, together with
any script errors, so a headless browser's ``--dump-dom`` shows whether the page works.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.partition import cutoff_strength
from .layout import module_boxes, node_layout
from .modules import ModuleInfo, ModuleReport, _label
from .palette import BIAS, INACTIVE, module_colours

__all__ = ["png_data_uri", "render_html", "write_html"]

MAX_BARS = 12
CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;max-width:1400px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.4em} h3{font-size:1em;margin:.8em 0 .3em}
.row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
svg .node,svg .box{cursor:pointer} svg .node:hover{stroke:#000;stroke-width:2}
svg .dim{opacity:.12} .legend span{display:inline-block;margin-right:1em;font-size:.85em}
.sw{display:inline-block;width:.9em;height:.9em;border-radius:50%;vertical-align:middle;margin-right:.3em}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
tr[data-module]{cursor:pointer} tr[data-module]:hover{background:#f3f3f3}
.panel{border:2px solid #888;border-radius:6px;padding:.6em 1em;margin-top:1em}
.bar{display:flex;align-items:center;font-size:.8em;margin:1px 0}
.bar i{display:inline-block;height:.8em;background:#4c78a8;margin:0 .4em}
.bar b{font-weight:normal;min-width:6em;text-align:right}
img.map{image-rendering:pixelated;width:128px;border:1px solid #ccc}
img.ex{image-rendering:pixelated;width:48px;border:1px solid #ccc;margin:2px}
.text-ex{font-family:monospace;font-size:.8em;white-space:pre-wrap;margin:2px 0}
mark{background:#ffe08a} .note{color:#666;font-size:.85em}
"""
JS = r"""
(function(){
  var errors=[]; window.addEventListener('error',function(e){errors.push(String(e.message));});
  function show(c){
    var panels=document.querySelectorAll('.panel');
    for(var i=0;i<panels.length;i++){panels[i].hidden=panels[i].getAttribute('data-module')!==String(c);}
    var nodes=document.querySelectorAll('svg [data-module]');
    for(var j=0;j<nodes.length;j++){
      var m=nodes[j].getAttribute('data-module');
      nodes[j].classList.toggle('dim', c!==null && m!==String(c));}
    var p=document.getElementById('module-'+c); if(p){p.scrollIntoView({block:'nearest'});}
    return p;
  }
  document.addEventListener('click',function(e){
    var t=e.target.closest?e.target.closest('[data-module]'):null;
    if(t&&!t.classList.contains('panel')){show(t.getAttribute('data-module'));}
  });
  window.intermodShow=show;
  window.addEventListener('load',function(){
    var open=/^#module-(\d+)$/.exec(location.hash); if(open){show(open[1]);}
    if(location.hash!=='#selftest'){return;}
    var ids=[],seen={},els=document.querySelectorAll('[data-module]'),bad=[];
    for(var i=0;i<els.length;i++){var m=els[i].getAttribute('data-module');
      if(!seen[m]&&!els[i].classList.contains('panel')){seen[m]=1;ids.push(els[i]);}}
    for(var k=0;k<ids.length;k++){
      ids[k].dispatchEvent(new MouseEvent('click',{bubbles:true}));
      var id=ids[k].getAttribute('data-module'),p=document.getElementById('module-'+id);
      if(!p||p.hidden){bad.push(id);}
      var vis=document.querySelectorAll('.panel:not([hidden])').length; if(vis!==1){bad.push(id+':'+vis);}
    }
    var res=(bad.length||errors.length)?('fail: '+bad.join(',')+' '+errors.join(' | ')):('ok '+ids.length);
    document.body.setAttribute('data-selftest',res);
    document.getElementById('selftest-log').textContent=res;
  });
})();
"""


def write_html(report: ModuleReport, path: str | os.PathLike, *, max_nodes: int = 400,
               max_boxes: int = 60) -> str:
    """Write :func:`render_html` of ``report`` to ``path`` (atomically); returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(render_html(report, max_nodes=max_nodes, max_boxes=max_boxes), encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


def render_html(report: ModuleReport, *, max_nodes: int = 400, max_boxes: int = 60) -> str:
    """The report page as a string (see the module docstring)."""
    g, part = report.graph, report.partition
    colours = module_colours(part)
    e = html.escape
    head = (f"<p>{len(report.modules)} modules of {g.n_nodes} directions in {len(g.layers)} node layers "
            f"({', '.join(f'{e(n)}: {k}' for n, k in g.layer_sizes.items())}); ε = {part.epsilon:g}, "
            f"cost {part.cost:.4g} nats ({part.cost_units:.4g} unit interactions cut), "
            f"{part.objective} γ = {part.resolution:g}.</p>")
    if report.reconstruction_loss is not None:
        head += f"<p>Reconstruction loss of the basis: {report.reconstruction_loss:.3g}.</p>"
    head += "".join(f"<p class='note'>{e(n)}</p>" for n in report.notes)
    if g.n_nodes <= max_nodes:
        graph_svg = "<h2>Interaction graph</h2>" + _legend() + _node_svg(report, colours)
    else:
        graph_svg = (f"<p class='note'>{g.n_nodes} directions: more than {max_nodes}, so the graph is "
                     "shown module by module below.</p>")
    body = [f"<h1>intermod module report</h1>{head}{graph_svg}",
            f"<h2>Module graph</h2><p class='note'>Modules as boxes spanning their node layers (the "
            f"{max_boxes} largest); lines: Σ ŵ of the interactions between two modules.</p>"
            + _module_svg(report, colours, max_boxes),
            "<h2>Modules</h2><p class='note'>Click a module (here or in a drawing) to see its panel.</p>"
            + _table(report, colours)]
    body += [_panel(report, m, colours.get(m.id, "#888")) for m in report.modules]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width'><title>intermod module report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}"
            f"<pre id='selftest-log' class='note'></pre><script>{JS}</script></body></html>")


def _legend() -> str:
    items = [("#1f77b4", "a module (colour; the 18 largest, singletons grey)"), (BIAS, "constant direction"),
             (INACTIVE, "inactive (no edge above √ε)")]
    sw = "".join(f"<span><i class='sw' style='background:{c}'></i>{html.escape(t)}</span>" for c, t in items)
    return (f"<p class='legend'>{sw}<span>node area ∝ log Λ; line width ∝ ŵ = ln(w/√ε); "
            "grey lines: between modules</span></p>")


def _node_svg(report: ModuleReport, colours: dict[int, str]) -> str:
    g, part = report.graph, report.partition
    mem = np.asarray(part.membership)
    pos, shown, _ = node_layout(g, mem)
    W, H = 180 * max(len(g.layers) - 1, 1) + 160, int(min(1200, max(240, 14 * max(g.layer_sizes.values()))))
    xy = np.stack([80 + pos[:, 0] * 180, 20 + (1 - pos[:, 1]) * (H - 40)], 1)
    w_hat = cutoff_strength(g.w, part.epsilon)
    sel = np.flatnonzero(shown[g.src] & shown[g.dst] & (w_hat > 0))
    sel = sel[np.argsort(w_hat[sel])][-3000:]
    top = w_hat[sel].max() if sel.size else 1.0
    lines = []
    for k in sel:
        a, b = mem[g.src[k]], mem[g.dst[k]]
        col = colours.get(int(a), "#888") if a == b and a >= 0 else "#bbb"
        (x1, y1), (x2, y2) = xy[g.src[k]], xy[g.dst[k]]
        attr = f" data-module='{a}'" if a == b and a >= 0 else ""
        lines.append(f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='{col}' "
                     f"stroke-width='{0.3 + 3 * w_hat[k] / top:.2f}' stroke-opacity='0.6'{attr}/>")
    lam = np.log10(np.maximum(g.Lambda, 1e-300))
    span = max(np.ptp(lam[shown]) if shown.any() else 1.0, 1e-12)
    circles = []
    for i in np.flatnonzero(shown):
        node, c = g.nodes[i], int(mem[i])
        fill = BIAS if node.is_bias else INACTIVE if c < 0 else colours.get(c, "#888")
        r = 2.5 + 5 * (lam[i] - lam[shown].min()) / span
        attr = f" class='node' data-module='{c}'" if c >= 0 else ""
        circles.append(f"<circle cx='{xy[i, 0]:.1f}' cy='{xy[i, 1]:.1f}' r='{r:.1f}' fill='{fill}'{attr}>"
                       f"<title>{html.escape(node.layer)}[{node.index}] Λ={node.Lambda:.3g}"
                       f"{f' module {c}' if c >= 0 else ''}</title></circle>")
    labels = [f"<text x='{80 + x * 180}' y='{H - 4}' text-anchor='middle' font-size='11'>"
              f"{html.escape(n)} (k={g.layer_sizes[n]})</text>" for x, n in enumerate(g.layers)]
    return (f"<svg id='node-graph' width='{W}' height='{H + 10}' viewBox='0 0 {W} {H + 10}'>"
            f"{''.join(lines)}{''.join(circles)}{''.join(labels)}</svg>")


def _module_svg(report: ModuleReport, colours: dict[int, str], max_boxes: int) -> str:
    g, mem = report.graph, np.asarray(report.partition.membership)
    order = sorted(report.modules, key=lambda m: (-m.size, m.id))[:max_boxes]
    boxes = module_boxes(g, mem, [m.id for m in order])
    if not boxes:
        return "<p class='note'>No modules.</p>"
    n_rows = max(b.row for b in boxes) + 1
    W, H = 180 * max(len(g.layers) - 1, 1) + 160, 40 + 34 * n_rows
    centre = {b.module: (80 + 90 * (b.x0 + b.x1), 30 + 34 * b.row + 12) for b in boxes}
    mg = report.module_graph
    pairs = [(a, b) for a in centre for b in centre if a < b and mg[a, b] > 0]
    top = max((mg[a, b] for a, b in pairs), default=1.0)
    lines = [f"<line x1='{centre[a][0]:.0f}' y1='{centre[a][1]:.0f}' x2='{centre[b][0]:.0f}' "
             f"y2='{centre[b][1]:.0f}' stroke='#d62728' stroke-opacity='0.5' "
             f"stroke-width='{0.5 + 5 * mg[a, b] / top:.2f}'><title>modules {a}–{b}: Σŵ = {mg[a, b]:.3g}"
             "</title></line>" for a, b in pairs]
    size = {m.id: m.size for m in report.modules}
    rects = [f"<g class='box' data-module='{b.module}'><rect x='{80 + 180 * b.x0 - 30}' y='{30 + 34 * b.row}' "
             f"width='{180 * (b.x1 - b.x0) + 60}' height='24' rx='5' fill='{colours.get(b.module, '#888')}' "
             f"fill-opacity='0.75'/><text x='{centre[b.module][0]:.0f}' y='{30 + 34 * b.row + 16}' "
             f"text-anchor='middle' font-size='11'>module {b.module} ({size[b.module]})</text></g>" for b in boxes]
    labels = [f"<text x='{80 + x * 180}' y='16' text-anchor='middle' font-size='11'>{html.escape(n)}</text>"
              for x, n in enumerate(g.layers)]
    return (f"<svg id='module-graph' width='{W}' height='{H}' viewBox='0 0 {W} {H}'>"
            f"{''.join(labels)}{''.join(lines)}{''.join(rects)}</svg>")


def _table(report: ModuleReport, colours: dict[int, str]) -> str:
    rows = report.table()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        f"<tr data-module='{m.id}'><td><i class='sw' style='background:{colours.get(m.id, '#888')}'></i>"
        + "</td><td>".join(html.escape(c) for c in r) + "</td></tr>"
        for m, r in zip(report.modules, rows[1:]))
    return f"<table id='module-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(shares: dict[Any, float], title: str, names: Sequence[str] = ()) -> str:
    if not shares:
        return ""
    items = list(shares.items())[:MAX_BARS]
    rest = 1.0 - sum(v for _, v in items)
    rows = "".join(f"<div class='bar'><b>{html.escape(_label(k, names))}</b><i style='width:{200 * v:.1f}px'></i>"
                   f"{v:.1%}</div>" for k, v in items)
    more = f"<div class='note'>others: {rest:.1%}</div>" if len(shares) > MAX_BARS else ""
    return f"<div><h3>{html.escape(title)}</h3>{rows}{more}</div>"


def png_data_uri(image: np.ndarray, cmap: str = "viridis") -> str:
    """A PNG ``data:`` URI of a 2-D array (colour-mapped) or an (H, W, 3) image in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(image, dtype=np.float64)
    buf = io.BytesIO()
    if arr.ndim == 3:
        lo, hi = arr.min(), arr.max()
        plt.imsave(buf, (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr), format="png")
    else:
        plt.imsave(buf, arr, cmap=cmap, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _examples(m: ModuleInfo) -> str:
    if not m.top_examples:
        return ""
    parts = []
    for key, hit, dec in zip(m.top_examples, m.hits, m.decoded or [None] * len(m.hits)):
        label = f"sample {hit.sample}" + (f", position {hit.position}" if hit.position is not None else "")
        tip = html.escape(f"{label}: ‖f̂‖ = {hit.score:.3g}")
        if isinstance(dec, np.ndarray):
            parts.append(f"<img class='ex' src='{png_data_uri(dec, 'gray_r')}' title='{tip}' alt='{tip}'>")
        elif isinstance(dec, str):
            text = html.escape(dec).replace("⟦", "<mark>").replace("⟧", "</mark>")
            parts.append(f"<div class='text-ex' title='{tip}'>{text}</div>")
        else:
            parts.append(f"<span title='{tip}'>{html.escape(str(key))}</span> ")
    rows = "".join(f"<tr><td>{html.escape(layer)}[{i}]</td><td>{html.escape(', '.join(map(str, keys)))}</td></tr>"
                   for layer, per in m.direction_examples.items() for i, keys in per.items())
    per_direction = (f"<details><summary>per direction (largest |f̂_i|)</summary><table>{rows}</table></details>"
                     if rows else "")
    return "<div><h3>Top examples (largest ‖f̂‖ of the module)</h3>" + "".join(parts) + per_direction + "</div>"


def _panel(report: ModuleReport, m: ModuleInfo, colour: str) -> str:
    e = html.escape
    dirs = "".join(f"<tr><td>{e(layer)}</td><td>{len(idx)}</td><td>{e(', '.join(map(str, idx[:40])))}"
                   f"{' …' if len(idx) > 40 else ''}</td></tr>" for layer, idx in m.directions.items())
    parts = [f"<h2>Module {m.id}</h2><p>{e(m.summary())}</p>",
             f"<p class='note'>Σ ŵ inside {m.internal:.3g}, cut to other modules {m.cut:.3g}.</p>",
             f"<h3>Directions</h3><table><tr><th>layer</th><th>n</th><th>indices</th></tr>{dirs}</table>"]
    inputs = ""
    if m.input_map is not None and m.input_map.ndim == 2:
        inputs = (f"<div><h3>Input map (share per input, layer {e(str(m.first_layer))})</h3>"
                  f"<img class='map' src='{png_data_uri(m.input_map)}' alt='input map of module {m.id}'></div>")
    inputs += _bars(m.inputs, f"Inputs (share of attribution at layer {m.first_layer})")
    inputs += _bars(m.input_positions, "Token positions") + _bars(m.input_tokens, "Tokens")
    if m.outputs is None:
        outputs = "<div><h3>Outputs</h3><p class='note'>No module effects given.</p></div>"
    else:
        outputs = _bars(m.outputs, "Outputs (share of the loss increase when ablated)", m.output_names) or \
            "<div><h3>Outputs</h3><p class='note'>Ablating it does not raise the loss.</p></div>"
        if m.ablation_loss is not None:
            outputs += f"<p class='note'>loss when ablated: {m.ablation_loss:.3g}</p>"
    parts.append(f"<div class='row'>{inputs}{outputs}</div>{_examples(m)}")
    return (f"<section class='panel' id='module-{m.id}' data-module='{m.id}' hidden "
            f"style='border-color:{colour}'>{''.join(parts)}</section>")
