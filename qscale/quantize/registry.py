"""The method registry and the restorable ``quantized(...)`` context.

A *method* decides the quantized weights (and, for activation methods, installs hooks). Methods are registered by
name so that a sweep spec, the CLI and the run store refer to them as data::

    @register_method("rtn")
    class RTN(Method):
        def apply(self, ctx: MethodContext) -> dict: ...

``quantized(model, fmt, method=..., params=...)`` applies a method in place and undoes it on exit: every tensor a
method changes is registered first with :meth:`MethodContext.save` (a float copy is kept) and every hook with
:meth:`MethodContext.add_hook`, so one loaded model serves many formats without reloading, and the restored weights
are bit-identical to the originals.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from qscale.lm.layers import LinearRef, linear_layers
from qscale.registry import unknown_name_message

__all__ = [
    "Method",
    "MethodContext",
    "MethodError",
    "MethodSpec",
    "get_method",
    "layer_format",
    "list_methods",
    "quantized",
    "register_method",
]


class MethodError(ValueError):
    """A method name or its parameters are not valid."""


class Method(ABC):
    """Base class of quantization methods.

    Subclasses set ``name``, ``defaults`` (every accepted parameter with its default value; unknown parameters are
    rejected), ``needs_calibration`` and ``needs_format``, and implement :meth:`apply`.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    needs_calibration: ClassVar[bool] = False
    needs_format: ClassVar[bool] = True
    per_layer_formats: ClassVar[bool] = False  # accepts a {layer: format} mapping (a plan) as ``fmt``
    description: ClassVar[str] = ""

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Merge ``params`` over the defaults; unknown keys raise :class:`MethodError` naming the valid ones."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "(none)"
            raise MethodError(
                f"method {self.name!r}: unknown parameter(s) {unknown}; valid parameters: {valid}"
            )
        return {**self.defaults, **params}

    def calibration_needed(self, params: Mapping[str, Any]) -> bool:
        """Whether these (resolved) parameters need calibration tokens; by default the class flag."""
        return self.needs_calibration

    @abstractmethod
    def apply(self, ctx: MethodContext) -> dict[str, Any]:
        """Quantize ``ctx.model`` in place (saving every tensor first) and return a JSON-able info dict."""


def layer_format(fmt: Any, name: str) -> Any:
    """The format of layer ``name``: ``fmt`` itself, or ``fmt[name]`` when ``fmt`` maps layers to formats."""
    return fmt[name] if isinstance(fmt, Mapping) else fmt


_REGISTRY: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}


def register_method(name: str, *aliases: str):
    """Class decorator registering a :class:`Method` subclass under ``name`` (and aliases)."""

    def deco(cls: type[Method]) -> type[Method]:
        if not issubclass(cls, Method):
            raise TypeError(f"{cls!r} is not a qscale.quantize.Method")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name]!r}")
        cls.name = name
        _REGISTRY[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        return cls

    return deco


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """A fresh instance of the method called ``name`` (or an alias); unknown names suggest the nearest."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _REGISTRY:
        raise MethodError(unknown_name_message(name, list_methods(), "method"))
    return _REGISTRY[key]()


@dataclass(frozen=True)
class MethodSpec:
    """A method and its parameters as data: hashable, JSON round-trippable, canonical for run keys."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, name: str, params: Mapping[str, Any] | None = None) -> MethodSpec:
        method = get_method(name)
        resolved = method.resolve_params(params)
        return cls(method.name, tuple(sorted(resolved.items())))

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.param_dict}

    def canonical(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + "(" + ",".join(f"{k}={v}" for k, v in self.params) + ")"


@dataclass(eq=False)
class MethodContext:
    """What a method sees: the model, the format, its resolved parameters, calibration tokens and the layers."""

    model: nn.Module
    fmt: Any  # qscale.formats.Format or None
    params: dict[str, Any]
    calib: torch.Tensor | None
    layers: list[LinearRef]
    _saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _hooks: list[Any] = field(default_factory=list)

    def save(self, tensor: torch.Tensor) -> None:
        """Keep a copy of ``tensor`` (a parameter or buffer) so that it is restored on exit. Idempotent."""
        key = id(tensor)
        if key not in self._saved:
            self._saved[key] = (tensor, tensor.detach().clone())

    def add_hook(self, handle: Any) -> None:
        """Register a hook handle (``.remove()``) to be removed on exit."""
        self._hooks.append(handle)

    @torch.no_grad()
    def restore(self) -> None:
        """Remove hooks (last first) and copy every saved tensor back, bit for bit."""
        while self._hooks:
            self._hooks.pop().remove()
        for tensor, copy in self._saved.values():
            tensor.data.copy_(copy)
        self._saved.clear()

    @property
    def n_saved(self) -> int:
        return len(self._saved)


@contextmanager
def quantized(
    model: nn.Module,
    fmt: Any = None,
    method: str | MethodSpec = "rtn",
    params: Mapping[str, Any] | None = None,
    calib: torch.Tensor | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Apply a quantization method to ``model`` in place for the duration of the ``with`` block.

    ``fmt`` is a :class:`qscale.formats.Format` or a spec string. Yields the method's info dict (per-layer SQNR,
    records such as GPTQ's damping), with ``"method"`` and ``"format"`` added. On exit, also after an exception,
    every touched tensor is restored bit-exactly and every hook removed.
    """
    from qscale.formats import get_format

    if isinstance(fmt, str):
        fmt = get_format(fmt)
    elif isinstance(fmt, Mapping):  # per-layer formats (a mixed-precision plan): exactly these layers
        fmt = {str(name): get_format(spec) for name, spec in fmt.items()}
        if include is not None:
            raise MethodError("per-layer formats name their layers; do not also pass include=")
        include = sorted(fmt)
    if isinstance(method, MethodSpec):
        m = get_method(method.name)
        resolved = m.resolve_params({**method.param_dict, **dict(params or {})})
    else:
        m = get_method(method)
        resolved = m.resolve_params(params)
    if isinstance(fmt, Mapping) and not m.per_layer_formats:
        ok = ", ".join(n for n in sorted(_REGISTRY) if _REGISTRY[n].per_layer_formats)
        raise MethodError(f"method {m.name!r} takes one format; per-layer formats (a plan) work with: {ok}")
    if m.needs_format and fmt is None:
        raise MethodError(f"method {m.name!r} needs a format (e.g. fmt='int4-g128')")
    if m.calibration_needed(resolved) and calib is None:
        raise MethodError(
            f"method {m.name!r} needs calibration tokens: pass calib=qscale.corpora.calibration_batch(tokenizer, ...)"
        )
    if isinstance(fmt, Mapping):
        by_name = {r.name: r for r in linear_layers(model, exclude=exclude if exclude is not None else [])}
        missing = [n for n in fmt if n not in by_name]
        if missing:
            raise MethodError(
                f"per-layer formats name {len(missing)} layer(s) the model does not have (or that are excluded): "
                f"{missing[:3]}; "
                f"its linear layers are e.g. {list(by_name)[:3]}"
            )
        layers = [r for r in by_name.values() if r.name in fmt]
    else:
        layers = linear_layers(model, include=include, exclude=exclude)
    ctx = MethodContext(model=model, fmt=fmt, params=resolved, calib=calib, layers=layers)
    try:
        info = dict(m.apply(ctx) or {})
        info.setdefault("method", MethodSpec(m.name, tuple(sorted(resolved.items()))).to_dict())
        info.setdefault(
            "format", None if fmt is None else "per-layer" if isinstance(fmt, Mapping) else str(fmt)
        )
        yield info
    finally:
        ctx.restore()
