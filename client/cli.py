"""The ``intermod`` command line: serve, analyse, search modules, sweep, score, export, report.

Every command takes ``--json`` for scripts; a failure prints one line to stderr and exits 1.
Remote commands talk to ``--address`` (``INTERMOD_ADDRESS``, default 127.0.0.1:50051) with
``--token`` (``INTERMOD_TOKEN``); ``--local`` runs the library in process on files instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import cli_ablate
from .cli_inputs import (
    load_data,
    load_graph,
    local_model,
    read_membership,
    remote_data,
    remote_model,
)
from .report import dumps, partition_table
from .serve_cli import cmd_serve, serve_arguments

OPTION_FLAGS = {  # graph option -> (flag, type, help)
    "jacobian_target": ("--jacobian-target", str, "output | next_layer"),
    "tol_G": ("--tol-G", float, "relative cut-off of G's eigenvalues"),
    "tol_M": ("--tol-M", float, "relative cut-off of M's eigenvalues"),
    "scaling": ("--scaling", str, "sqrt | inverse"),
    "kind": ("--kind", str, "interaction | pca | neuron"),
    "n_probes": ("--n-probes", int, "random +-1 probes for wide outputs"),
    "edge_method": ("--edge-method", str, "gradient | integrated"),
    "n_alpha": ("--n-alpha", int, "integration points of edge_method=integrated"),
    "batch_size": ("--batch-size", int, "samples per batch"),
    "dtype": ("--dtype", str, "float64 | float32"),
    "seed": ("--seed", int, "random seed"),
}
SEARCH_FLAGS = {
    "epsilon": ("--epsilon", float, "noise scale epsilon > 0"),
    "objective": ("--objective", str, "cpm | modularity"),
    "resolution": ("--resolution", float, "Leiden resolution gamma"),
    "n_modules": ("--n-modules", int, "target number of modules (bisection on gamma)"),
    "seed": ("--seed", int, "random seed"),
    "n_restarts": ("--n-restarts", int, "restarts, best kept"),
}


# helpers
def _client(args: argparse.Namespace):
    from .client import Client
    return Client(args.address, token=args.token or None, tls=args.tls_ca or None)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(dumps(data) if args.json else text)


def _layout(item: str) -> tuple[str, str]:
    """``LAYER=KIND`` of --layout."""
    layer, sep, kind = item.rpartition("=")
    if not sep or not layer or not kind:
        raise argparse.ArgumentTypeError(f"--layout takes LAYER=KIND (e.g. conv2=flatten), got {item!r}")
    return layer, kind


def _graph_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k, None) is not None}
    for name in ("center", "include_bias"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    if args.layout:
        opts["layout"] = dict(args.layout)
    if args.rerotate:
        opts["rerotate"] = True
    return opts


def _search(args: argparse.Namespace) -> dict[str, Any]:
    kw = {k: getattr(args, k) for k in SEARCH_FLAGS if getattr(args, k, None) is not None}
    if args.include_bias_node:
        kw["include_bias"] = True
    return kw


def _partition_dict(part: Any) -> dict:
    return part.to_dict()


# commands
def cmd_analyze(args: argparse.Namespace) -> None:
    options = _graph_options(args)
    if args.local:
        from intermod import analysis as ia
        model, data = local_model(args), load_data(args.data, args.data_tensor)
        if not args.layers:
            raise ValueError("--local needs --layers")
        basis_kw = {k: v for k, v in options.items() if k not in ("edge_method", "n_alpha", "rerotate")}
        graph_kw = {k: v for k, v in options.items()
                    if k in ("edge_method", "n_alpha", "n_probes", "batch_size")}
        if "dtype" in options:
            import torch
            basis_kw["dtype"] = graph_kw["dtype"] = getattr(torch, options["dtype"])
        progress = not (args.no_progress or args.json)
        basis = ia.compute_basis(model, data, args.layers, progress=progress, **basis_kw)
        if args.rerotate:
            basis = ia.rerotate_degenerate(model, data, basis)
        graph = ia.build_graph(model, data, basis, progress=progress, **graph_kw)
        out = Path(args.out or "graph.json")
        graph.to_json(out)
        _emit(args, {"path": str(out), **graph.summary()}, str(out))
        return
    with _client(args) as client:
        data = remote_data(args)
        job_id = client.submit(remote_model(args, client), data, args.layers or (),
                               data_tensor=args.data_tensor, **options)
        job = client.watch(job_id, progress=not (args.no_progress or args.json))
        if job.state != "succeeded":
            raise RuntimeError(f"job {job.id} {job.state}: {job.error}")
        _emit(args, {"graph_id": job.graph_id, "job_id": job.id,
                     "elapsed_seconds": job.elapsed}, job.graph_id)


def cmd_modules(args: argparse.Namespace) -> None:
    if args.auto:
        from .cli_ablate import cmd_modules_auto
        return cmd_modules_auto(args)
    if args.local:
        from intermod import analysis as ia
        graph = load_graph(args.graph)
        part, layers = ia.find_modules(graph, **_search(args)), graph.layers
    else:
        with _client(args) as client:
            part = client.find_modules(args.graph, **_search(args))
            layers = client.graph_info(args.graph).layers
    if args.out:
        Path(args.out).write_text(dumps(_partition_dict(part)))
    _emit(args, _partition_dict(part), partition_table(part, layers))


def cmd_sweep(args: argparse.Namespace) -> None:
    search = {k: v for k, v in _search(args).items() if k not in ("epsilon", "resolution")}
    if args.local:
        from intermod import analysis as ia
        graph = load_graph(args.graph)
        grid = [(e, r) for e in args.epsilons for r in (args.resolutions or [None])]
        parts = (ia.find_modules(graph, epsilon=e, **search,
                                 **({} if r is None else {"resolution": r})) for e, r in grid)
        _print_sweep(args, parts)
        return
    with _client(args) as client:
        _print_sweep(args, client.sweep(args.graph, args.epsilons, args.resolutions or (),
                                        **search))


def _print_sweep(args: argparse.Namespace, parts: Any) -> None:
    rows = []
    if not args.json:
        print(f"{'epsilon':>10} {'resolution':>10} {'modules':>7} {'cost':>10} {'cost_units':>10}"
              f" {'quality':>10}")
    for p in parts:
        row = {"epsilon": p.epsilon, "resolution": p.resolution, "n_modules": p.n_modules,
               "cost": p.cost, "cost_units": p.cost_units, "quality": p.quality,
               "membership": np.asarray(p.membership).tolist()}
        rows.append(row)
        if not args.json:
            print(f"{p.epsilon:>10.3g} {p.resolution:>10.4g} {p.n_modules:>7} {p.cost:>10.4g} "
                  f"{p.cost_units:>10.4g} {p.quality:>10.4g}", flush=True)
    if args.json:
        print(dumps(rows))


def cmd_score(args: argparse.Namespace) -> None:
    membership = read_membership(args.membership)
    if args.local:
        from intermod import analysis as ia
        score = ia.partition_cost(load_graph(args.graph), membership, args.epsilon)
    else:
        with _client(args) as client:
            score = client.score(args.graph, membership, args.epsilon)
    data = {"cost": float(score.cost), "cost_units": float(score.cost_units),
            "n_cut_edges": int(score.n_cut_edges)}
    _emit(args, data, f"cost {data['cost']:.6g} nats ({data['cost_units']:.6g} units), "
                      f"{data['n_cut_edges']} cut edges")


def _export(args: argparse.Namespace, fmt: str, search: dict | None) -> None:
    out = Path(args.out)
    if args.local:
        from intermod import analysis as ia
        graph = load_graph(args.graph)
        if fmt == "html":
            ia.module_report(None, None, graph, ia.find_modules(graph, **(search or {}))).save_html(out)
        elif fmt in ("png", "svg"):
            part = ia.find_modules(graph, **search) if search is not None else None
            kw = {"top_n": args.top_n} if getattr(args, "top_n", None) else {}
            ia.plot_graph(graph, partition=part, path=out, **kw)
        else:
            {"json": graph.to_json, "graphml": graph.to_graphml,
             "safetensors": graph.save_safetensors}[fmt](out)
    else:
        with _client(args) as client:
            client.export(args.graph, fmt, out, modules=search,
                          top_n=getattr(args, "top_n", None))
    _emit(args, {"path": str(out), "format": fmt, "bytes": out.stat().st_size}, str(out))


def cmd_export(args: argparse.Namespace) -> None:
    fmt = args.format or Path(args.out).suffix.lstrip(".").lower()
    if fmt not in ("json", "graphml", "safetensors", "png", "svg"):
        raise ValueError(f"unknown export format {fmt!r}; use --format "
                         "json|graphml|safetensors|png|svg")
    _export(args, fmt, None)


def cmd_plot(args: argparse.Namespace) -> None:
    fmt = Path(args.out).suffix.lstrip(".").lower()
    if fmt not in ("png", "svg"):
        raise ValueError(f"--out must end in .png or .svg, got {args.out!r}")
    _export(args, fmt, None if args.no_modules else _search(args))


def cmd_report(args: argparse.Namespace) -> None:
    if Path(args.out).suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must end in .html, got {args.out!r}")
    _export(args, "html", _search(args))


def cmd_models(args: argparse.Namespace) -> None:
    with _client(args) as client:
        models = client.models()
    text = "\n".join(f"{m.id:<24} {m.source:<9} {m.name:<20} {m.n_parameters:>9} params  "
                     f"{' '.join(m.layers)}" for m in models) or "(no models)"
    _emit(args, models, text)


def cmd_graphs(args: argparse.Namespace) -> None:
    with _client(args) as client:
        if args.delete:
            client.delete_graph(args.delete)
            _emit(args, {"deleted": args.delete}, f"deleted {args.delete}")
            return
        graphs = client.graphs()
    text = "\n".join(f"{g.id:<20} {g.model_id:<20} {g.n_nodes:>6} nodes {g.n_edges:>8} edges  "
                     f"{' '.join(g.layers)}" for g in graphs) or "(no graphs)"
    _emit(args, graphs, text)


def cmd_job(args: argparse.Namespace) -> None:
    with _client(args) as client:
        if args.cancel:
            job = client.cancel(args.job)
        elif args.watch:
            job = client.watch(args.job, progress=not args.json)
        else:
            job = client.job(args.job)
    _emit(args, job, f"{job.id} {job.state} {job.fraction:.0%} {job.stage} "
                     f"{job.graph_id or job.error}")


def cmd_diagnose(args: argparse.Namespace) -> None:
    if args.local:
        from intermod import analysis as ia
        report = ia.diagnose(local_model(args), load_data(args.data, args.data_tensor),
                             args.layers, args.epsilon, progress=not args.json).to_dict()
    else:
        with _client(args) as client:
            report = client.diagnose(remote_model(args, client), remote_data(args),
                                     args.layers or (), args.epsilon,
                                     data_tensor=args.data_tensor)
    from intermod.analysis import DegeneracyReport
    _emit(args, report, DegeneracyReport.from_dict(report).summary())


# parser
def _common(p: argparse.ArgumentParser, remote: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    if remote:
        p.add_argument("--address", default=os.environ.get("INTERMOD_ADDRESS",
                                                           "127.0.0.1:50051"))
        p.add_argument("--token", default=os.environ.get("INTERMOD_TOKEN"),
                       help="bearer token (default $INTERMOD_TOKEN)")
        p.add_argument("--tls-ca", help="PEM CA certificate: connect with TLS")


def _flags(p: argparse.ArgumentParser, table: dict, skip: tuple = ()) -> None:
    for name, (flag, typ, help_) in table.items():
        if name not in skip:
            p.add_argument(flag, dest=name, type=typ, help=help_)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="id of a model registered on the server")
    p.add_argument("--spec", help="model spec JSON (intermod.v1.ModelSpec)")
    p.add_argument("--weights", help="safetensors weights of --spec")
    p.add_argument("--data", help=".npy or .safetensors data file")
    p.add_argument("--data-id", help="id of a tensor set already on the server")
    p.add_argument("--data-tensor", default="", help="tensor of a multi-tensor data file")
    p.add_argument("--layers", nargs="+", help="node layers: module paths or 'output'")
    p.add_argument("--local", action="store_true", help="run in process, no server")


def _search_args(p: argparse.ArgumentParser, skip: tuple = ()) -> None:
    _flags(p, SEARCH_FLAGS, skip)
    p.add_argument("--include-bias-node", action="store_true",
                   help="put the constant direction into the partition too")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intermod", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable, help_: str, remote: bool = True) -> Any:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        _common(p, remote)
        return p

    serve_arguments(command("serve", cmd_serve, "run the gRPC server", remote=False))

    p = command("analyze", cmd_analyze, "compute an interaction graph (prints its id)")
    _model_args(p)
    _flags(p, OPTION_FLAGS)
    for name in ("center", "include_bias"):
        flag = name.replace("_", "-")
        p.add_argument(f"--{flag}", dest=name, action="store_true", default=None)
        p.add_argument(f"--no-{flag}", dest=name, action="store_false")
    p.add_argument("--layout", nargs="+", type=_layout, metavar="LAYER=KIND",
                   help="how a layer's tensor is read: features | tokens | channels | flatten")
    p.add_argument("--rerotate", action="store_true",
                   help="re-rotate near-degenerate directions before the edges (i.i.d. data)")
    p.add_argument("--out", help="--local: where to write the graph JSON (graph.json)")
    p.add_argument("--no-progress", action="store_true")

    p = command("modules", cmd_modules, "find the modules of a graph")
    p.add_argument("graph", help="graph id (or graph JSON file with --local)")
    _search_args(p)
    p.add_argument("--out", help="also write the partition JSON here")
    p.add_argument("--local", action="store_true")
    p.add_argument("--auto", action="store_true",
                   help="ε and modules from ablation (on the server; see intermod ablate)")
    cli_ablate.add_arguments(p)
    cli_ablate.add_parser(command, _search_args)

    p = command("sweep", cmd_sweep, "find modules over a grid of epsilon x resolution")
    p.add_argument("graph")
    p.add_argument("--epsilons", type=float, nargs="+", required=True)
    p.add_argument("--resolutions", type=float, nargs="+")
    _search_args(p, skip=("epsilon", "resolution"))
    p.add_argument("--local", action="store_true")

    p = command("score", cmd_score, "cost of a given partition")
    p.add_argument("graph")
    p.add_argument("--membership", required=True,
                   help="JSON list, partition JSON or .npy of module ids")
    p.add_argument("--epsilon", type=float, required=True)
    p.add_argument("--local", action="store_true")

    p = command("export", cmd_export, "export a graph (json, graphml, safetensors, png, svg)")
    p.add_argument("graph")
    p.add_argument("--out", required=True)
    p.add_argument("--format", help="default: from --out's suffix")
    p.add_argument("--local", action="store_true")

    p = command("plot", cmd_plot, "draw a graph coloured by its modules (.png or .svg)")
    p.add_argument("graph")
    p.add_argument("--out", required=True)
    p.add_argument("--top-n", type=int, help="strongest nodes drawn per layer")
    p.add_argument("--no-modules", action="store_true", help="do not colour by modules")
    _search_args(p)
    p.add_argument("--local", action="store_true")

    p = command("report", cmd_report, "write an HTML report of a graph's modules (self-contained)")
    p.add_argument("graph", help="a graph JSON file (with --local) or a server graph id")
    p.add_argument("--out", required=True, help="the .html file to write")
    _search_args(p)
    p.add_argument("--local", action="store_true")

    command("models", cmd_models, "list the server's models")

    p = command("graphs", cmd_graphs, "list (or delete) the server's graphs")
    p.add_argument("--delete", metavar="GRAPH_ID")

    p = command("job", cmd_job, "show, watch or cancel a job")
    p.add_argument("job")
    p.add_argument("--watch", action="store_true")
    p.add_argument("--cancel", action="store_true")

    p = command("diagnose", cmd_diagnose, "degeneracy diagnostics of a model on data")
    _model_args(p)
    p.add_argument("--epsilon", type=float, default=1e-4)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:   # `intermod models --json | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the interpreter's final flush is silent
        return 0
    except KeyboardInterrupt:
        print("intermod: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, non-zero exit
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"intermod: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
