"""Uniform access to the linear layers of a causal LM.

Quantization methods see every weight matrix in the ``(out_features, in_features)`` layout of ``nn.Linear``.
transformers' GPT-2 family stores its projections in ``Conv1D`` modules whose weight is the transpose,
``(in_features, out_features)``; :class:`LinearRef` hides that difference.

Selection rules (``include`` / ``exclude``) are :mod:`fnmatch` patterns on the module's qualified name, e.g.
``exclude=["*.mlp.*"]``. By default every linear layer is selected except the token embedding and the output
head (``lm_head`` or any module that shares its weight with the input embedding), the usual weight-only PTQ scope.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LinearRef", "linear_layers", "DEFAULT_EXCLUDE"]

#: Default exclusion patterns: output heads. Embeddings are nn.Embedding, never selected.
DEFAULT_EXCLUDE: tuple[str, ...] = ("lm_head", "*.lm_head", "embed_out", "*.embed_out")


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D; checked by class name + attribute to avoid importing transformers here.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


@dataclass(eq=False)
class LinearRef:
    """One linear layer: its qualified name, the module, and whether its weight is stored transposed."""

    name: str
    module: nn.Module
    transposed: bool

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.module.weight

    @property
    def in_features(self) -> int:
        w = self.module.weight
        return w.shape[0] if self.transposed else w.shape[1]

    @property
    def out_features(self) -> int:
        w = self.module.weight
        return w.shape[1] if self.transposed else w.shape[0]

    def get_weight(self) -> torch.Tensor:
        """The weight as ``(out, in)``: a view for nn.Linear, a transposed view for Conv1D (do not write into it)."""
        w = self.module.weight.detach()
        return w.t() if self.transposed else w

    @torch.no_grad()
    def set_weight(self, w_out_in: torch.Tensor) -> None:
        """Write a ``(out, in)`` weight back in the module's own layout and dtype."""
        target = self.module.weight
        expected = (self.out_features, self.in_features)
        if tuple(w_out_in.shape) != expected:
            raise ValueError(
                f"{self.name}: weight of shape {tuple(w_out_in.shape)} given, expected {expected}"
            )
        src = w_out_in.t() if self.transposed else w_out_in
        target.copy_(src.to(dtype=target.dtype, device=target.device))


def _tied_to_embedding(model: nn.Module, module: nn.Module) -> bool:
    get_in = getattr(model, "get_input_embeddings", None)
    if get_in is None:
        return False
    try:
        emb = get_in()
    except (NotImplementedError, AttributeError):
        return False
    return emb is not None and getattr(emb, "weight", None) is module.weight


class LayerError(ValueError):
    """A layer selection (``include`` patterns) that matches no linear layer."""


def linear_layers(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[LinearRef]:
    """The linear layers of ``model`` selected for quantization, in module order.

    ``include``: if given, only names matching one of these patterns. ``exclude``: names to skip; ``None`` means
    :data:`DEFAULT_EXCLUDE` (pass ``[]`` to quantize the head too). A module whose weight is the input embedding
    (tied head) is always skipped: quantizing it would also quantize the embedding.
    """
    excl = DEFAULT_EXCLUDE if exclude is None else tuple(exclude)
    refs: list[LinearRef] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            transposed = False
        elif _is_conv1d(module):
            transposed = True
        else:
            continue
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in excl):
            continue
        if _tied_to_embedding(model, module):
            continue
        refs.append(LinearRef(name=name, module=module, transposed=transposed))
    if include is not None and not refs:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or _is_conv1d(m)]
        raise LayerError(
            f"include={list(include)} matched no linear layer; linear layers are: {names[:12]}..."
        )
    return refs
