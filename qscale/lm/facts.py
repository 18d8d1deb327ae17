"""Model facts: the numbers a scaling law needs about a model, computed from the module itself.

Parameter counting follows the nanoGPT convention (``get_num_params(non_embedding=True)``), extended to
untied heads: ``n_nonembed`` excludes

* the token embedding (``model.get_input_embeddings()``),
* every learned position embedding (any other ``nn.Embedding``, e.g. GPT-2 ``wpe``, OPT ``embed_positions``),
* the output head (``model.get_output_embeddings()``) when it is *not* tied to the token embedding
  (a tied head shares the embedding's storage and is counted once, inside the embedding).

Norms, biases and every projection (including OPT's ``project_in/out``) stay in ``n_nonembed``.

Worked example, GPT-2 with vocab V=8192, context P=128, d=64, L=2, tied head:
per block ``12 d^2 + 13 d`` = 49,984 (attn 4d^2+4d, mlp 8d^2+5d, two LayerNorms 4d), so
``n_nonembed = 2 * 49,984 + 2 d`` (final LayerNorm) = 100,096 and ``n_params = n_nonembed + V d + P d``
= 100,096 + 524,288 + 8,192 = 632,576.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where a model is counted: the panel registry reads these facts torch-free
    from torch import nn


@dataclass(frozen=True)
class ModelFacts:
    """What qscale knows about a model; JSON-able (``to_dict`` / ``from_dict``).

    ``family`` is ``config.model_type`` (``"gpt2"``, ``"llama"``, ...). ``train_tokens`` is the number of
    training tokens for zoo models (from their metadata) and ``None`` otherwise. ``identity`` names the exact
    weights: ``"zoo:<name>@<config hash>/<seed>"`` for zoo models, else ``"sha256:<16 hex>"`` of the
    checkpoint's weight files.
    """

    name: str
    family: str
    n_params: int
    n_nonembed: int
    n_layers: int
    d_model: int
    vocab_size: int
    tied_embeddings: bool
    train_tokens: int | None
    identity: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelFacts:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelFacts fields {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def count_params(model: nn.Module) -> tuple[int, int, bool]:
    """``(n_params, n_nonembed, tied)`` of a transformers causal LM, by the rule in the module docstring.

    Parameters shared between modules are counted once.
    """
    from torch import nn

    params = {id(p): p for p in model.parameters()}
    n_params = sum(p.numel() for p in params.values())
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = out is not None and out.weight is inp.weight
    embed: dict[int, nn.Parameter] = {id(p): p for p in inp.parameters()}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            embed.update({id(p): p for p in module.parameters()})
    if out is not None and not tied:
        embed.update({id(p): p for p in out.parameters()})
    n_embed = sum(p.numel() for i, p in embed.items() if i in params)
    return n_params, n_params - n_embed, tied


def _config_int(config: Any, *names: str) -> int:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int):
            return v
    text = getattr(config, "text_config", None)
    if text is not None and text is not config:
        return _config_int(text, *names)
    raise ValueError(f"config of type {type(config).__name__} has none of {names}")


def model_facts(model: nn.Module, name: str, identity: str, train_tokens: int | None = None) -> ModelFacts:
    """Facts of a loaded transformers causal LM (see :class:`ModelFacts`)."""
    config = model.config
    n_params, n_nonembed, tied = count_params(model)
    return ModelFacts(
        name=name,
        family=str(config.model_type),
        n_params=n_params,
        n_nonembed=n_nonembed,
        n_layers=_config_int(config, "num_hidden_layers", "n_layer", "num_layers"),
        d_model=_config_int(config, "hidden_size", "n_embd", "d_model"),
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        tied_embeddings=tied,
        train_tokens=train_tokens,
        identity=identity,
    )
