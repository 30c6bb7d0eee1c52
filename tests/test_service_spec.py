"""The declarative model format: round trips, strict weights, extensibility, no allocation."""

import pytest
import torch
from intermod.server import model_spec
from intermod.server.model_spec import SpecError, describe_model, load_model
from torch import nn


def every_layer() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.GELU(approximate="tanh"),
                         nn.Linear(4, 4, bias=False), nn.Sigmoid(), nn.Identity(), nn.Tanh(),
                         nn.ReLU(), nn.GELU(), nn.LayerNorm(4, elementwise_affine=False)).double()


def test_round_trip_of_every_layer_type():
    model = every_layer()
    spec, weights = describe_model(model)
    rebuilt = load_model(spec, weights)
    x = torch.randn(7, 3, dtype=torch.float64)
    assert torch.equal(model(x), rebuilt(x))
    assert [layer["type"] for layer in spec["layers"]] == [
        "linear", "layernorm", "gelu", "linear", "sigmoid", "identity", "tanh", "relu", "gelu",
        "layernorm"]


def test_weights_must_match_the_spec_exactly():
    spec, weights = describe_model(nn.Sequential(nn.Linear(2, 3)))
    with pytest.raises(SpecError, match="missing"):
        load_model(spec, {"0.weight": weights["0.weight"]})
    with pytest.raises(SpecError, match="unexpected"):
        load_model(spec, {**weights, "1.weight": torch.zeros(1)})
    with pytest.raises(SpecError, match="floating point"):
        load_model(spec, {"0.weight": torch.zeros(3, 2, dtype=torch.int64),
                          "0.bias": torch.zeros(3, dtype=torch.int64)})
    bad = {"layers": [{"type": "linear", "in_features": 2, "out_features": 3},
                      {"type": "linear", "in_features": 4, "out_features": 1}]}
    with pytest.raises(SpecError) as err:
        load_model(bad, weights)
    assert err.value.field == "spec.layers[1].in_features"


def test_huge_declared_layers_allocate_nothing():
    spec = {"layers": [{"type": "linear", "in_features": 10**6, "out_features": 10**6}]}
    with pytest.raises(SpecError, match="the spec needs"):
        load_model(spec, {"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)})


def test_unsupported_module_points_to_the_library():
    with pytest.raises(TypeError, match="intermod.analysis"):
        describe_model(nn.Sequential(nn.Conv3d(1, 1, 3)))
    with pytest.raises(TypeError, match="nn.Sequential"):
        describe_model(nn.Linear(2, 2))


def test_register_layer_extends_the_format(monkeypatch):
    monkeypatch.setattr(model_spec, "LAYER_TYPES", dict(model_spec.LAYER_TYPES))
    model_spec.register_layer("softplus", lambda spec, width: (nn.Softplus(), width),
                              lambda m: {"type": "softplus"} if type(m) is nn.Softplus else None)
    model = nn.Sequential(nn.Linear(2, 2), nn.Softplus()).double()
    spec, weights = describe_model(model)
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(load_model(spec, weights)(x), model(x))


class _Shifted(nn.Module):
    """x + a buffer that is not saved with the model (persistent=False)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.ones(width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


def test_loaded_models_hold_the_uploaded_weights_and_nothing_unset(monkeypatch):
    """load_model puts copies of the weights in place (the caller's tensors are not shared, so
    nothing done to the model reaches them); a registered layer with a tensor the weights do
    not carry (a non-persistent buffer) is refused by name instead of left without a value."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    spec, weights = describe_model(model)
    before = {k: v.clone() for k, v in weights.items()}
    loaded = load_model(spec, weights)
    assert loaded[0].weight.dtype == torch.float64 and not loaded[0].weight.is_meta
    with torch.no_grad():
        loaded[0].weight.zero_()
    assert all(torch.equal(weights[k], before[k]) for k in weights)
    monkeypatch.setattr(model_spec, "LAYER_TYPES", dict(model_spec.LAYER_TYPES))
    model_spec.register_layer("shifted", lambda spec, width: (_Shifted(width), width),
                              lambda m: {"type": "shifted"} if type(m) is _Shifted else None)
    spec, weights = describe_model(nn.Sequential(nn.Linear(2, 3), _Shifted(3)).double())
    with pytest.raises(SpecError, match="shift"):
        load_model(spec, weights)
