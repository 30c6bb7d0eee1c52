"""Section "Module reports": what the modules of ``two_tasks`` and ``digits`` read and write.

For the interaction basis (output target) of the "examples" section, at the truth-free plateau γ:
``two_tasks`` at ε = its training MSE (each module's input shares on the inputs of task A (0–2)
and B (3–5), and its output shares — from module ablations — on the outputs of A (0–1) and B
(2–3)), ``digits`` at the study's ε (input pixel maps and the classes each module serves, with
the KL loss grouped by the clean prediction). Writes the HTML reports and a figure of the digit
pixel maps next to the report.
"""

from __future__ import annotations

from typing import Any

from ..core.partition import find_modules
from ..report import ModuleReport, decode_image, module_report
from .formatting import fmt, table
from .recovery import plateau, resolution_sweep
from .section import Context, Section
from .settings import EPSILON, RESOLUTIONS

MIN_SIZE = 2      # two_tasks modules in the table (singletons are listed in the HTML report)
MAX_DIGIT_ROWS = 10   # digits: the largest modules in the table, singletons included
MAX_MAPS = 8      # digits: the largest modules drawn


def _partition(graph, epsilon: float):
    chosen = plateau(resolution_sweep(graph, epsilon, RESOLUTIONS))
    return find_modules(graph, epsilon=epsilon, resolution=chosen.resolution if chosen else 0.1)


def _share(shares: dict, keys: list[int]) -> float:
    return float(sum(shares.get(k, 0.0) for k in keys))


def two_tasks_rows(rep: ModuleReport, ex) -> list[list[Any]]:
    """Per module of ≥ MIN_SIZE directions: size, directions per layer, input and output shares
    of each task, and the task it serves (≥ 90 % of both shares on one task; "–" otherwise)."""
    (ia, ib), (oa, ob) = ex.extra["input_groups"], ex.extra["output_groups"]
    rows = []
    for m in rep.modules:
        if m.size < MIN_SIZE:
            continue
        s = [_share(m.inputs, ia), _share(m.inputs, ib), _share(m.outputs or {}, oa), _share(m.outputs or {}, ob)]
        task = "A" if s[0] >= 0.9 and s[2] >= 0.9 else "B" if s[1] >= 0.9 and s[3] >= 0.9 else "–"
        rows.append([m.id, m.size, " ".join(str(len(m.directions.get(n, []))) for n in rep.graph.layers),
                     *s, m.ablation_loss, task])
    return rows


def _largest(rep: ModuleReport, n: int) -> list:
    return sorted(rep.modules, key=lambda m: (-m.size, m.id))[:n]


def digit_rows(rep: ModuleReport) -> list[list[Any]]:
    """Per module (the MAX_DIGIT_ROWS largest): size, first layer, the three classes with the
    largest share of the loss increase when it is ablated, and the ablated loss."""
    rows = []
    for m in _largest(rep, MAX_DIGIT_ROWS):
        top = ", ".join(f"{m.output_names[c]} ({v:.0%})" for c, v in list((m.outputs or {}).items())[:3])
        rows.append([m.id, m.size, m.first_layer, top or "–", m.ablation_loss])
    return rows


def plot_maps(rep: ModuleReport, path) -> int:
    """Input pixel maps of the MAX_MAPS largest modules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = [m for m in _largest(rep, MAX_MAPS) if m.input_map is not None]
    if not mods:
        return 0
    fig, axes = plt.subplots(1, len(mods), figsize=(1.9 * len(mods), 2.3), squeeze=False)
    for ax, m in zip(axes[0], mods):
        ax.imshow(m.input_map, cmap="viridis")
        top = next(iter(m.outputs or {}), None)
        ax.set_title(f"module {m.id} ({m.size})" + (f"\n{m.output_names[top]}" if top is not None else ""),
                     fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(mods)


def module_reports(ctx: Context) -> dict[str, Any]:
    """Reports of two_tasks (ε = training MSE) and digits (ε = EPSILON) from the examples'
    interaction-basis graphs; writes ``report_<name>.html`` and ``report_digits_maps.png``."""
    from ..ablation import module_effects  # the ablation package (issue 9)

    out: dict[str, Any] = {}
    for name, loss in (("two_tasks", "mse"), ("digits", "kl")):
        if name not in ctx.results["examples"]:
            continue
        ex, res = ctx.results["examples"][name]
        graph = res[2].graph
        eps = float(ex.extra.get("train_mse", EPSILON))
        part = _partition(graph, eps)
        image = {"input_shape": (8, 8), "decode": decode_image(ex.inputs, (8, 8))} if name == "digits" else {}
        with ctx.timer(f"{name}: module effects"):
            fx = module_effects(ex.model, ex.inputs, graph, part, loss=loss, progress=False)
        with ctx.timer(f"{name}: module report"):
            rep = module_report(ex.model, ex.inputs, graph, part, effects=fx, top_k=10, **image)
        rep.save_html(ctx.fig_dir / f"report_{name}.html")
        out[name] = {"epsilon": eps, "resolution": part.resolution, "n_modules": part.n_modules,
                     "rows": two_tasks_rows(rep, ex) if name == "two_tasks" else digit_rows(rep),
                     "maps": plot_maps(rep, ctx.fig_dir / "report_digits_maps.png") if name == "digits" else 0}
    return out


def render(res: dict[str, Any], ctx: Context) -> str:
    lines = ["## Module reports\n",
             "`ia.module_report` on the interaction basis (output target) at the plateau γ: input "
             "shares from integrated gradients of each module's first-layer directions (the exact "
             "linear map at the input layer), output shares from `ia.module_effects` (each module "
             "ablated at every layer). The HTML reports (open them in a browser) show every module.\n"]
    if "two_tasks" in res:
        t = res["two_tasks"]
        lines += [f"**two_tasks** (ε = training MSE = {fmt(t['epsilon'])}, γ = {fmt(t['resolution'])}, "
                  f"{t['n_modules']} modules; [HTML report]({ctx.rel}/report_two_tasks.html)). Task A reads "
                  "inputs 0–2 and writes outputs 0–1, task B inputs 3–5 and outputs 2–3; a module "
                  "*serves* a task when ≥ 90 % of both its input and its output shares are on it "
                  f"(modules of ≥ {MIN_SIZE} directions).\n",
                  table(["module", "size", "per layer", "inputs A", "inputs B", "outputs A", "outputs B",
                         "L ablated", "serves"], t["rows"]) + "\n"]
    if "digits" in res:
        d = res["digits"]
        lines += [f"**digits** (ε = {fmt(d['epsilon'])}, γ = {fmt(d['resolution'])}, {d['n_modules']} "
                  f"modules; [HTML report]({ctx.rel}/report_digits.html)), the {MAX_DIGIT_ROWS} largest "
                  "modules. Classes: share of the KL increase on the images of each clean-predicted "
                  "class when the module is ablated. A module that serves every class about equally "
                  "is a shared computation, not a class detector.\n",
                  table(["module", "size", "first layer", "classes", "L ablated"], d["rows"]) + "\n"]
        if d["maps"]:
            lines.append(f"![digit modules: input pixel maps]({ctx.rel}/report_digits_maps.png)\n")
    return "\n".join(lines)


def headlines(res: dict[str, Any], ctx: Context) -> list[str]:
    if "two_tasks" not in res:
        return []
    served = [r[-1] for r in res["two_tasks"]["rows"]]
    return [f"- **Module reports, two_tasks**: {served.count('A')} module(s) serve task A and "
            f"{served.count('B')} task B (≥ 90 % of input and output shares on the task), of "
            f"{len(served)} modules of ≥ {MIN_SIZE} directions."]


SECTION = Section("module_reports", module_reports, render, headlines, needs=("examples",))
