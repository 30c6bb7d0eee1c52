"""Section "Modules found": graph drawings of the interaction basis (output target) of the
examples at the plateau resolution, from the graphs of the "examples" section."""

from __future__ import annotations

from ..core.partition import find_modules
from ..report.plot import plot_graph
from .bases import Examples
from .recovery import plateau, resolution_sweep
from .section import Context, Section
from .settings import EPSILON, RESOLUTIONS

DRAWN = ("planted", "two_tasks", "digits")


def plot_modules(ctx: Context) -> list[str]:
    """Draws ``modules_<name>.png`` at ε = EPSILON (and ``modules_<name>_train_mse.png`` at
    ε = the training MSE where there is one); returns the stems drawn."""
    results: Examples = ctx.results["examples"]
    stems = []
    with ctx.timer("plots"):
        for name in DRAWN:
            if name not in results:
                continue
            ex, res = results[name]
            r = res[2]
            gamma = r.chosen.resolution if r.chosen else 0.1
            part = find_modules(r.graph, epsilon=EPSILON, resolution=gamma)
            plot_graph(r.graph, part, ctx.fig_dir / f"modules_{name}.png", epsilon=EPSILON,
                       title=f"{name}: interaction basis (output), ε={EPSILON:g}, γ={gamma:.3g}, "
                             f"{part.n_modules} modules")
            stems.append(name)
            if "train_mse" in ex.extra:
                eps = float(ex.extra["train_mse"])
                chosen = plateau(resolution_sweep(r.graph, eps, RESOLUTIONS))
                gamma = chosen.resolution if chosen else 0.1
                part = find_modules(r.graph, epsilon=eps, resolution=gamma)
                plot_graph(r.graph, part, ctx.fig_dir / f"modules_{name}_train_mse.png",
                           epsilon=eps,
                           title=f"{name}: interaction basis (output), ε = training MSE = "
                                 f"{eps:.3g}, γ={gamma:.3g}, {part.n_modules} modules")
                stems.append(f"{name}_train_mse")
    return stems


def render(stems: list[str], ctx: Context) -> str:
    return "\n".join(["## Modules found\n",
                      "Interaction basis (output target) at the plateau γ; grey: inactive "
                      "directions, black: the constant direction.\n",
                      *(f"![{stem}]({ctx.rel}/modules_{stem}.png)\n" for stem in stems)])


SECTION = Section("modules_found", plot_modules, render, needs=("examples",))
