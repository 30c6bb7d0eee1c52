"""A Hugging Face transformer over the wire: config JSON + safetensors, computed on the
server, equal to the library in process; bad configs are refused with the field named."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
import transformers
from intermod import analysis as ia
from intermod.analysis.models import hf
from intermod.client import Client, RemoteError
from intermod.client.spawn import running_server

CONFIG = {"model_type": "bert", "vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 12, "max_position_embeddings": 16,
          "type_vocab_size": 1, "pad_token_id": 0}
LAYERS = ["encoder.layer.0", "encoder.layer.1", "output"]
OPTIONS = {"dtype": "float64", "n_probes": None}


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig.from_dict(CONFIG, attn_implementation="eager")
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ids = torch.randint(1, 40, (12, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[:4, 4:] = 0
    ids[mask == 0] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("hf") / "data") as srv, Client(srv.address) as c:
        yield c


def test_hf_model_over_the_wire_equals_the_library(client, bert):
    model, inputs = bert
    info = client.register_hf(CONFIG, {k: v.detach() for k, v in model.state_dict().items()}, name="tiny-bert")
    graph_id = client.compute_graph(info.id, inputs, LAYERS, progress=False, **OPTIONS)
    remote = client.graph(graph_id)
    local_model = hf.model_from_config(CONFIG, _safetensors(model))
    basis = ia.compute_basis(local_model, inputs, LAYERS, progress=False)
    local = ia.build_graph(local_model, inputs, basis, progress=False)
    for a, b in zip(LAYERS, LAYERS[1:]):
        np.testing.assert_allclose(remote.edge_matrix(a, b), local.edge_matrix(a, b), rtol=1e-9, atol=1e-12)
    assert any(m.id == info.id and "bert" in m.description for m in client.models())


@pytest.mark.parametrize("config,message", [
    ({**CONFIG, "model_type": "llama"}, "unsupported transformer family"),
    ({**CONFIG, "auto_map": {"AutoModel": "evil.Model"}}, "auto_map"),
    ({**CONFIG, "hidden_size": 16}, ""),
])
def test_bad_hf_configs_are_refused(client, bert, config, message):
    model, _ = bert
    with pytest.raises(RemoteError) as err:
        client.register_hf(config, {k: v.detach() for k, v in model.state_dict().items()})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.field == "hf_config_json"
    assert message in err.value.message
    assert client.health()


def _safetensors(model) -> bytes:
    from safetensors.torch import save
    return save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
