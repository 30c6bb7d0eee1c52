"""`make demo`: a server on a free loopback port, a built-in example through the client.

Registers the example's network (spec + safetensors weights) and uploads its inputs,
computes the interaction graph as a job with a progress bar, sweeps the resolution, finds the
modules, prints them with their recovery of the example's ground truth, writes
``out/demo/graph.png``, ``out/demo/result.json`` and the module report ``out/demo/report.html``,
and stops the server. The noise scale ε
is the example's training loss when it has one (ε is a behavioural-loss value), else 1e-4.
``--example planted`` (or any other built-in example) runs another network.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from intermod import analysis as ia
from intermod.analysis import examples
from intermod.analysis.core.jsonutil import json_default

from .client import Client
from .report import partition_table
from .spawn import running_server

RESOLUTIONS = (0.01, 0.05, 0.2, 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--example", default="two_tasks", choices=examples.names())
    parser.add_argument("--out", default="out/demo", help="output directory")
    parser.add_argument("--epsilon", type=float, help="noise scale (default: the example's "
                                                      "training loss, else 1e-4)")
    parser.add_argument("--resolution", type=float, default=0.05, help="CPM resolution")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ex = examples.load(args.example)
    epsilon = args.epsilon or float(getattr(ex, "extra", {}).get("train_mse", 1e-4))
    print(f"example {ex.name}: {ex.description}")
    with tempfile.TemporaryDirectory(prefix="intermod-demo-") as tmp, \
            running_server(Path(tmp) / "data") as server, Client(server.address) as client:
        print(f"server on {server.address} ({client.health()})")
        try:
            model_id = client.register_model(ex.model, name=ex.name).id
        except TypeError:  # not expressible as a spec: use the server's own copy
            model_id = ex.name
        data = client.upload(ex.inputs, name=f"{ex.name}-inputs")
        print(f"registered model {model_id}; uploaded inputs {data.id} "
              f"{data.tensors['data']['shape']}")
        t0 = time.perf_counter()
        graph_id = client.compute_graph(model_id, data.id, ex.layers)
        seconds_graph = time.perf_counter() - t0
        info = client.graph_info(graph_id)
        print(f"graph {graph_id}: {info.n_nodes} nodes, {info.n_edges} edges "
              f"({seconds_graph:.1f} s)")
        truth = ex.truth(client.graph(graph_id)) if ex.truth is not None else None

        def recovery(p: Any) -> dict | None:
            return None if truth is None else dict(ia.compare_partitions(p, np.asarray(truth)))

        print(f"sweep at epsilon {epsilon:.3g}: resolution -> modules, cost, ARI vs truth")
        for p in client.sweep(graph_id, [epsilon], RESOLUTIONS):
            ari = recovery(p)
            print(f"  {p.resolution:>6g} -> {p.n_modules:>3} modules, cost {p.cost:8.3f}"
                  + (f", ARI {ari['ari']:.3f}" if ari else ""))
        part = client.find_modules(graph_id, epsilon=epsilon, resolution=args.resolution)
        print(f"modules at epsilon {epsilon:.3g}, resolution {args.resolution:g}:")
        print(partition_table(part, info.layers))
        found = recovery(part)
        if found is not None:
            print(f"recovery of the ground truth: ARI {found['ari']:.3f}, "
                  f"NMI {found['nmi']:.3f}")
        client.plot(graph_id, out / "graph.png", epsilon=epsilon, resolution=args.resolution)
        result = {"example": ex.name, "server": server.address, "graph_id": graph_id,
                  "graph": info.summary, "partition": part.to_dict(), "recovery": found,
                  "seconds": {"graph": seconds_graph, "total": time.perf_counter() - start}}
        (out / "result.json").write_text(json.dumps(result, default=json_default, indent=2))
        graph = client.graph(graph_id)
    report = ia.module_report(ex.model, ex.inputs, graph, part)   # what each module does
    report.save_html(out / "report.html")
    print(report)
    print(f"wrote {out / 'graph.png'}, {out / 'result.json'} and {out / 'report.html'} "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
