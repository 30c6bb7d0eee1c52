"""`make demo`: a server on a free loopback port, a built-in example through the client.

Registers the example's network (spec + safetensors weights) and uploads its inputs,
computes the interaction graph as a job with a progress bar, finds the modules, prints them
with their recovery of the example's ground truth, writes ``out/demo/graph.png`` and
``out/demo/result.json``, and stops the server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from intermod import analysis as ia

from .client import Client
from .report import jsonable, partition_table
from .spawn import running_server

EXAMPLES = ("two_tasks", "planted")  # the first one installed is used


def load_example(names: tuple[str, ...] = EXAMPLES) -> Any:
    """The first of `names` that intermod.analysis.examples provides."""
    from intermod.analysis import examples
    available = examples.names() if hasattr(examples, "names") else []
    for name in names:
        if name in available:
            return examples.load(name)
        try:
            return importlib.import_module(f"intermod.analysis.examples.{name}").build()
        except ImportError:
            continue
    raise RuntimeError(f"none of the examples {list(names)} is installed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/demo", help="output directory")
    parser.add_argument("--epsilon", type=float, default=1e-4, help="noise scale")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ex = load_example()
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
        part = client.find_modules(graph_id, epsilon=args.epsilon)
        print(partition_table(part, info.layers))
        recovery = None
        truth = ex.truth(client.graph(graph_id)) if ex.truth is not None else None
        if truth is not None:
            recovery = ia.compare_partitions(part.membership, np.asarray(truth))
            print(f"recovery of the ground truth: ARI {recovery['ari']:.3f}, "
                  f"NMI {recovery['nmi']:.3f}")
        client.plot(graph_id, out / "graph.png", epsilon=args.epsilon)
        result = {"example": ex.name, "server": server.address, "graph_id": graph_id,
                  "graph": info.summary, "partition": part.to_dict(), "recovery": recovery,
                  "seconds": {"graph": seconds_graph, "total": time.perf_counter() - start}}
        (out / "result.json").write_text(json.dumps(result, default=jsonable, indent=2))
    print(f"wrote {out / 'graph.png'} and {out / 'result.json'} "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
