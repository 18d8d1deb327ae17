"""Loss-landscape curvature of a causal LM on a token batch: Hessian trace and top eigenvalues,
quantization-direction terms, radial loss profiles.

The loss is ``mean CE(logits[:, :-1], ids[:, 1:])`` over the B*(L-1) predicted tokens of ``input_ids`` (B, L);
H is its Hessian in the chosen parameters (``params=None``: every trainable one, tied weights once). Each
``Hv`` is one double backward through a gradient graph built once per call (torch.func gave asymmetric
Hessians here). Needs float32/float64 parameters and an attention with a double backward: a non-eager
transformers model is switched to eager for the call. The model runs in eval mode; weights end bit-exact.

Worked numbers for H = [[2, 1], [1, -1]] (trace 1, eigenvalues 2.303, -1.303):

- :func:`hessian_trace`: Hutchinson, E[v^T H v] = tr H for Rademacher v: v = (1, 1) gives 3, v = (1, -1)
  gives -1, mean 1. Per-group sums of v_i (Hv)_i estimate each group's block trace (and add up to the total).
- :func:`hessian_top_eigenvalues`: Lanczos with full re-orthogonalisation, largest *algebraic* (2.303), or
  ``method="power"`` with deflation, largest *magnitude* (-3 first for H = [[1, 0], [0, -3]]).
- :func:`quant_direction_terms`: D = Q(W) - W over the quantized linear layers; g.D and 1/2 D^T H D, whose sum
  is the second-order prediction of the loss change.
- :func:`radial_profile`: loss at W + r*u, u Gaussian rescaled to each tensor's norm (r = 0.01: 1% per tensor).

PyHessian is not a dependency (GPL-3.0; ``torch.eig`` removed; no transformers outputs): tests cross-check only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qscale.registry import unknown_name_message

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CurvatureError",
    "EigenResult",
    "GroupTrace",
    "QuantDirectionTerms",
    "RadialProfile",
    "TraceResult",
    "curvature_mode",
    "group_name",
    "hessian_top_eigenvalues",
    "hessian_trace",
    "hvp",
    "lm_loss",
    "quant_direction_terms",
    "radial_profile",
]

GROUPINGS = ("tensor", "layer", "block", "all")
EIGEN_METHODS = ("lanczos", "power")


class CurvatureError(ValueError):
    """Bad input to a curvature computation (dtype, attention implementation, parameters, batch)."""


# ---------------------------------------------------------------------------------------------------------
# Loss, parameter selection, model mode
# ---------------------------------------------------------------------------------------------------------


def lm_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``input_ids`` (B, L) under ``model`` (scalar, the parameters' dtype).

    ``model(input_ids)`` may return an object with ``.logits`` (transformers), a tuple whose first element is
    the logits, or the logits tensor (B, L, V) itself.
    """
    import torch
    from torch import nn

    kwargs: dict[str, Any] = {}
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kwargs["use_cache"] = False
    out = model(input_ids, **kwargs)
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, tuple | list) else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise CurvatureError(
            f"model(input_ids) must give logits of shape (B, L, V); got {type(logits).__name__}"
            + (f" of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else "")
        )
    v = logits.shape[-1]
    return nn.functional.cross_entropy(logits[:, :-1, :].reshape(-1, v), input_ids[:, 1:].reshape(-1))


def _check_ids(model: nn.Module, input_ids: Any) -> torch.Tensor:
    import torch

    if not isinstance(input_ids, torch.Tensor):
        raise CurvatureError(f"input_ids must be a torch.LongTensor (B, L), got {type(input_ids).__name__}")
    if input_ids.dtype != torch.long:
        raise CurvatureError(f"input_ids must be integer token ids (torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise CurvatureError(
            f"input_ids must have shape (batch, seq_len) with seq_len >= 2, got {tuple(input_ids.shape)}"
        )
    p = next(iter(model.parameters()), None)
    return input_ids.to(p.device) if p is not None else input_ids


def _select_params(
    model: nn.Module, params: Sequence[torch.Tensor | str] | None
) -> tuple[list[str], list[torch.Tensor]]:
    """Names and tensors of the parameters to differentiate; strings are resolved as parameter names."""
    import torch

    named = dict(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named.items() if p.requires_grad]
        if not chosen:
            raise CurvatureError("the model has no trainable parameter (requires_grad=False everywhere)")
    else:
        if isinstance(params, torch.Tensor | str):
            raise CurvatureError("params must be a list of tensors or parameter names, not a single one")
        by_id = {id(p): n for n, p in named.items()}
        chosen = []
        for i, p in enumerate(params):
            if isinstance(p, str):
                if p not in named:
                    raise CurvatureError(unknown_name_message(p, list(named), "parameter", n=3))
                chosen.append((p, named[p]))
            elif isinstance(p, torch.Tensor):
                if not p.requires_grad:
                    raise CurvatureError(
                        f"params[{i}] does not require grad; curvature needs a leaf parameter"
                    )
                chosen.append((by_id.get(id(p), f"param{i}"), p))
            else:
                raise CurvatureError(f"params[{i}] is a {type(p).__name__}; give tensors or parameter names")
        if not chosen:
            raise CurvatureError("params is empty")
        if len({id(p) for _, p in chosen}) != len(chosen):
            raise CurvatureError("params lists the same tensor twice")
    for n, p in chosen:
        if p.dtype not in (torch.float32, torch.float64):
            raise CurvatureError(
                f"parameter {n!r} is {p.dtype}; Hessians need float32 or float64 weights "
                "(load the model with dtype=torch.float32)"
            )
    return [n for n, _ in chosen], [p for _, p in chosen]


@contextmanager
def curvature_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and eager attention for the duration of the block; the previous settings are restored."""
    was_training = model.training
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    switched = False
    if impl is not None and impl != "eager":
        setter = getattr(model, "set_attn_implementation", None)
        if setter is None:
            raise CurvatureError(
                f"attention implementation {impl!r} has no double backward and this model cannot be switched; "
                "load it with attn_implementation='eager' (valid for Hessians: 'eager')"
            )
        try:
            setter("eager")
        except Exception as err:  # transformers raises ValueError/ImportError variants
            raise CurvatureError(
                f"could not switch attention {impl!r} -> 'eager' for the double backward: {err}"
            ) from err
        switched = True
    model.eval()
    try:
        yield model
    finally:
        if switched:
            model.set_attn_implementation(impl)
        model.train(was_training)


def _double_backward_hint(err: RuntimeError) -> CurvatureError | None:
    msg = str(err)
    if ("derivative for" in msg and "not implemented" in msg) or "once_differentiable" in msg:
        return CurvatureError(
            f"an operation of this model has no double backward ({msg.splitlines()[0]}); use eager attention "
            "(attn_implementation='eager') and plain torch ops for Hessians"
        )
    return None


class _HVP:
    """``v -> H v`` for the loss of one batch, sharing one forward pass and one first-order graph."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, params: list[torch.Tensor]):
        import torch

        self.params = params
        with torch.enable_grad():
            self.loss = lm_loss(model, input_ids)
            grads = torch.autograd.grad(self.loss, params, create_graph=True, allow_unused=True)
        self.grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
        # Unused parameters (None) have zero Hessian rows. A gradient that exists but carries no graph comes
        # from a backward that is not itself differentiable (a custom op): its curvature would be silently 0.
        flat = [i for i, g in enumerate(grads) if g is not None and not g.requires_grad]
        if flat:
            raise CurvatureError(
                f"the gradient of {len(flat)} parameter(s) has no graph for a second derivative (an op with a "
                "non-differentiable backward, e.g. a fused kernel); use eager attention "
                "(attn_implementation='eager') and plain torch ops for Hessians"
            )
        self._live = [i for i, g in enumerate(self.grads) if g.requires_grad]
        self.n_calls = 0

    def gradient(self) -> list[torch.Tensor]:
        return [g.detach() for g in self.grads]

    def __call__(self, v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        import torch

        out = [torch.zeros_like(p) for p in self.params]
        if self._live:
            try:
                hv = torch.autograd.grad(
                    [self.grads[i] for i in self._live],
                    [self.params[i] for i in range(len(self.params))],
                    grad_outputs=[v[i].to(self.grads[i].dtype) for i in self._live],
                    retain_graph=True,
                    allow_unused=True,
                )
            except RuntimeError as err:
                hint = _double_backward_hint(err)
                if hint is not None:
                    raise hint from err
                raise
            out = [
                torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, self.params, strict=True)
            ]
        self.n_calls += 1
        return out


def hvp(
    model: nn.Module,
    input_ids: torch.Tensor,
    vector: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor | str] | None = None,
) -> list[torch.Tensor]:
    """The Hessian-vector product ``H v`` of the batch loss, one tensor per parameter (same order as params)."""
    input_ids = _check_ids(model, input_ids)
    names, ps = _select_params(model, params)
    if len(vector) != len(ps):
        raise CurvatureError(f"vector has {len(vector)} tensors but there are {len(ps)} parameters")
    for n, v, p in zip(names, vector, ps, strict=True):
        if tuple(v.shape) != tuple(p.shape):
            raise CurvatureError(
                f"vector for {n!r} has shape {tuple(v.shape)}, parameter has {tuple(p.shape)}"
            )
    with curvature_mode(model):
        return _HVP(model, input_ids, ps)(vector)


# ---------------------------------------------------------------------------------------------------------
# Hutchinson trace with per-group results
# ---------------------------------------------------------------------------------------------------------


_INDEX = re.compile(r"^\d+$")


def group_name(param_name: str, by: str | Callable[[str], str] = "block") -> str:
    """The group of a parameter name.

    ``"tensor"``: the name itself; ``"layer"``: the owning module (``model.layers.0.mlp.up_proj.weight`` ->
    ``model.layers.0.mlp.up_proj``); ``"block"``: the prefix up to the first numeric component
    (``model.layers.0``), or the owning module for parameters outside numbered blocks (``model.embed_tokens``);
    ``"all"``: ``"all"``; a callable maps names to groups.
    """
    if callable(by):
        return str(by(param_name))
    if by == "tensor":
        return param_name
    if by == "all":
        return "all"
    parts = param_name.split(".")
    owner = ".".join(parts[:-1]) or param_name
    if by == "layer":
        return owner
    if by == "block":
        for i, part in enumerate(parts[:-1]):
            if _INDEX.match(part):
                return ".".join(parts[: i + 1])
        return owner
    raise CurvatureError(unknown_name_message(str(by), [*GROUPINGS, "<a callable>"], "grouping"))


@dataclass(frozen=True)
class GroupTrace:
    """Hutchinson estimate of one diagonal block's trace: value, standard error, size and per-parameter value."""

    value: float
    stderr: float
    n_params: int

    @property
    def per_param(self) -> float:
        return self.value / self.n_params if self.n_params else math.nan


def _mean_stderr(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n)


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson estimate of tr H.

    ``value`` and ``stderr`` (sample standard deviation / sqrt(samples)) for the whole Hessian;
    ``tensor_samples[s][j]`` is sum_i v_i (Hv)_i over tensor j's entries for sample s, from which any grouping
    is aggregated exactly (:meth:`groups`); ``per_group`` is the grouping asked for in the call.
    """

    value: float
    stderr: float
    samples: int
    n_params: int
    loss: float
    param_names: tuple[str, ...]
    param_sizes: tuple[int, ...]
    tensor_samples: tuple[tuple[float, ...], ...]
    group_by: str = "block"

    @property
    def per_param(self) -> float:
        """Trace per parameter, tr H / n: the mean diagonal curvature."""
        return self.value / self.n_params

    @property
    def per_param_stderr(self) -> float:
        return self.stderr / self.n_params

    @property
    def sample_values(self) -> tuple[float, ...]:
        return tuple(math.fsum(row) for row in self.tensor_samples)

    def groups(self, by: str | Callable[[str], str] | None = None) -> dict[str, GroupTrace]:
        """Per-group trace estimates (group -> GroupTrace), in first-appearance order."""
        by = self.group_by if by is None else by
        members: dict[str, list[int]] = {}
        for j, name in enumerate(self.param_names):
            members.setdefault(group_name(name, by), []).append(j)
        out = {}
        for g, idx in members.items():
            vals = [math.fsum(row[j] for j in idx) for row in self.tensor_samples]
            mean, se = _mean_stderr(vals)
            out[g] = GroupTrace(mean, se, sum(self.param_sizes[j] for j in idx))
        return out

    @property
    def per_group(self) -> dict[str, float]:
        """Group -> trace estimate for the call's grouping."""
        return {g: t.value for g, t in self.groups().items()}

    @property
    def per_group_per_param(self) -> dict[str, float]:
        """Group -> trace / number of parameters in the group."""
        return {g: t.per_param for g, t in self.groups().items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "stderr": self.stderr,
            "per_param": self.per_param,
            "samples": self.samples,
            "n_params": self.n_params,
            "loss": self.loss,
            "group_by": self.group_by,
            "groups": {
                g: {"value": t.value, "stderr": t.stderr, "n_params": t.n_params, "per_param": t.per_param}
                for g, t in self.groups().items()
            },
        }


def _generator(seed: int) -> torch.Generator:
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def _rademacher(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    import torch

    r = torch.randint(0, 2, tuple(p.shape), generator=gen, dtype=torch.int8)
    return (r.to(p.dtype) * 2 - 1).to(p.device)


def hessian_trace(
    model: nn.Module,
    input_ids: torch.Tensor,
    params: Sequence[torch.Tensor | str] | None = None,
    samples: int = 64,
    seed: int = 0,
    *,
    group_by: str | Callable[[str], str] = "block",
) -> TraceResult:
    """Hutchinson (Rademacher) estimate of the trace of the loss Hessian, with per-group estimates.

    One HVP per sample over all parameters at once; ``samples >= 2`` (the standard error needs two).
    ``group_by`` picks :attr:`TraceResult.per_group` (``"tensor"``, ``"layer"``, ``"block"``, ``"all"`` or a
    callable); :meth:`TraceResult.groups` re-aggregates the same samples any other way.
    """
    import torch

    if not isinstance(samples, int) or samples < 2:
        raise CurvatureError(f"samples must be an int >= 2 (a standard error needs two), got {samples!r}")
    if not callable(group_by):
        group_name("x.0.w", group_by)  # validate early
    input_ids = _check_ids(model, input_ids)
    names, ps = _select_params(model, params)
    gen = _generator(seed)
    rows: list[tuple[float, ...]] = []
    with curvature_mode(model):
        op = _HVP(model, input_ids, ps)
        for _ in range(samples):
            v = [_rademacher(p, gen) for p in ps]
            hv = op(v)
            rows.append(tuple(float(torch.sum(a.double() * b.double())) for a, b in zip(v, hv, strict=True)))
        loss = float(op.loss.detach())
    mean, se = _mean_stderr([math.fsum(r) for r in rows])
    return TraceResult(
        value=mean,
        stderr=se,
        samples=samples,
        n_params=sum(p.numel() for p in ps),
        loss=loss,
        param_names=tuple(names),
        param_sizes=tuple(p.numel() for p in ps),
        tensor_samples=tuple(rows),
        group_by=group_by if isinstance(group_by, str) else getattr(group_by, "__name__", "custom"),
    )


# ---------------------------------------------------------------------------------------------------------
# Top eigenvalues
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EigenResult:
    """Top Hessian eigenvalues, largest first, with the residual norms ||H y - theta y|| of their vectors."""

    values: tuple[float, ...]
    residuals: tuple[float, ...]
    iterations: int
    hvps: int
    converged: bool
    method: str
    loss: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": list(self.values),
            "residuals": list(self.residuals),
            "iterations": self.iterations,
            "hvps": self.hvps,
            "converged": self.converged,
            "method": self.method,
            "loss": self.loss,
        }


class _Flat:
    """Flatten / unflatten between one vector and a list of parameter-shaped tensors."""

    def __init__(self, params: list[torch.Tensor]):
        self.shapes = [p.shape for p in params]
        self.sizes = [p.numel() for p in params]
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.n = sum(self.sizes)

    def unflatten(self, x: torch.Tensor) -> list[torch.Tensor]:
        import torch

        return [c.view(s) for c, s in zip(torch.split(x, self.sizes), self.shapes, strict=True)]

    def flatten(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.cat([x.reshape(-1).to(self.dtype) for x in xs])


def _lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    make_start: Callable[[], torch.Tensor],
    k: int,
    iters: int,
    tol: float,
) -> tuple[list[float], list[float], int, bool]:
    """Lanczos with full re-orthogonalisation; the k largest Ritz values and their residual bounds."""
    import torch

    q = make_start()
    n = q.numel()
    basis = [q / q.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    values: list[float] = []
    resid: list[float] = []
    converged = False
    m = min(iters, n)
    for j in range(m):
        w = matvec(basis[j])
        alpha = float(torch.dot(basis[j].double(), w.double()))
        alphas.append(alpha)
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            for b in basis:
                w = w - torch.dot(b, w) * b
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(t)
        order = torch.argsort(theta, descending=True)[:k]
        values = [float(theta[i]) for i in order]
        resid = [abs(beta * float(s[-1, i])) for i in order]
        scale = max(abs(values[0]), 1e-30)
        invariant = beta <= 1e-10 * max(scale, 1.0)
        if (
            len(values) >= k
            and all(r <= tol * max(abs(v), 1e-30) for r, v in zip(resid, values, strict=True))
        ) or (invariant and len(values) >= k):
            converged = True
            return values, resid, j + 1, converged
        if invariant:  # Krylov space exhausted before k values: restart in the orthogonal complement
            w = make_start()
            for _ in range(2):
                for b in basis:
                    w = w - torch.dot(b, w) * b
            beta_next = 0.0
            basis.append(w / w.norm())
            betas.append(beta_next)
            continue
        betas.append(beta)
        basis.append(w / beta)
    return values, resid, m, converged or len(values) >= k and m == n


def _power(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    make_start: Callable[[], torch.Tensor],
    k: int,
    iters: int,
    tol: float,
) -> tuple[list[float], list[float], int, bool]:
    """Power iteration with deflation by projection: the k largest-magnitude eigenvalues."""
    import torch

    found: list[torch.Tensor] = []
    values: list[float] = []
    resid: list[float] = []
    total = 0
    all_conv = True

    def project(x: torch.Tensor) -> torch.Tensor:
        for u in found:
            x = x - torch.dot(u, x) * u
        return x

    for _ in range(k):
        v = project(make_start())
        v = v / v.norm()
        theta_prev = None
        conv = False
        theta = 0.0
        w = v
        for _ in range(iters):
            w = project(matvec(v))
            total += 1
            theta = float(torch.dot(v.double(), w.double()))
            if theta_prev is not None and abs(theta - theta_prev) <= tol * max(abs(theta), 1e-30):
                conv = True
                break
            theta_prev = theta
            norm = w.norm()
            if float(norm) == 0.0:
                conv = True
                break
            v = w / norm
        resid.append(float((w - theta * v).norm()))
        values.append(theta)
        found.append(v)
        all_conv = all_conv and conv
    order = sorted(range(k), key=lambda i: -values[i])
    return [values[i] for i in order], [resid[i] for i in order], total, all_conv


def hessian_top_eigenvalues(
    model: nn.Module,
    input_ids: torch.Tensor,
    params: Sequence[torch.Tensor | str] | None = None,
    k: int = 1,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    *,
    method: str = "lanczos",
) -> EigenResult:
    """The ``k`` largest eigenvalues of the loss Hessian, largest first.

    ``method="lanczos"`` (default): the largest algebraic eigenvalues; stops when every residual bound
    ``beta_m |s_m|`` is below ``tol * |theta|`` or after ``iters`` HVPs; keeps its Krylov basis, so it needs
    about ``iters * n_params`` floats of memory. ``method="power"``: power iteration with deflation, the
    largest-magnitude eigenvalues (PyHessian's definition), ``iters`` HVPs per eigenvalue at most, stopping at
    a relative change below ``tol``; memory ``k * n_params``.
    """
    import torch

    if method not in EIGEN_METHODS:
        raise CurvatureError(unknown_name_message(str(method), EIGEN_METHODS, "eigenvalue method"))
    if not isinstance(k, int) or k < 1:
        raise CurvatureError(f"k must be a positive int, got {k!r}")
    if not isinstance(iters, int) or iters < 1:
        raise CurvatureError(f"iters must be a positive int, got {iters!r}")
    if not tol > 0:
        raise CurvatureError(f"tol must be positive, got {tol!r}")
    input_ids = _check_ids(model, input_ids)
    _, ps = _select_params(model, params)
    flat = _Flat(ps)
    if k > flat.n:
        raise CurvatureError(f"k={k} exceeds the number of parameters ({flat.n})")
    gen = _generator(seed)

    def start() -> torch.Tensor:
        return torch.randn(flat.n, generator=gen, dtype=torch.float64).to(flat.dtype).to(flat.device)

    with curvature_mode(model):
        op = _HVP(model, input_ids, ps)

        def matvec(x: torch.Tensor) -> torch.Tensor:
            return flat.flatten(op(flat.unflatten(x)))

        if method == "lanczos":
            values, resid, n_iter, conv = _lanczos(matvec, start, k, max(iters, k), tol)
        else:
            values, resid, n_iter, conv = _power(matvec, start, k, iters, tol)
        loss = float(op.loss.detach())
        n_hvp = op.n_calls
    return EigenResult(tuple(values), tuple(resid), n_iter, n_hvp, conv, method, loss)


# ---------------------------------------------------------------------------------------------------------
# Quantization directions
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantDirectionTerms:
    """Second-order terms of the loss change along the quantization direction D = Q(W) - W.

    ``linear`` = g.D and ``quadratic`` = 1/2 D^T H D over all quantized weights together (cross-layer
    curvature included); ``per_layer_linear[l]`` = g_l.D_l and ``per_layer_quadratic[l]`` = 1/2 D_l.(H D)_l,
    which add up exactly to the totals. ``predicted_dloss`` = linear + quadratic; ``measured_dloss`` (when
    asked for) is loss(W + D) - loss(W) on the same batch.
    """

    format: str
    loss: float
    linear: float
    quadratic: float
    per_layer_linear: dict[str, float]
    per_layer_quadratic: dict[str, float]
    d_norm: float
    w_norm: float
    n_params: int
    measured_dloss: float | None = None

    @property
    def predicted_dloss(self) -> float:
        return self.linear + self.quadratic

    @property
    def curvature_along_d(self) -> float:
        """D^T H D / ||D||^2: the Rayleigh quotient of H along the quantization direction."""
        return 2.0 * self.quadratic / self.d_norm**2 if self.d_norm > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "loss": self.loss,
            "linear": self.linear,
            "quadratic": self.quadratic,
            "predicted_dloss": self.predicted_dloss,
            "measured_dloss": self.measured_dloss,
            "curvature_along_d": self.curvature_along_d,
            "d_norm": self.d_norm,
            "w_norm": self.w_norm,
            "n_params": self.n_params,
            "per_layer_linear": dict(self.per_layer_linear),
            "per_layer_quadratic": dict(self.per_layer_quadratic),
        }


def _quantizer(fmt: Any) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(label, (out, in) weight -> fake-quantized weight) from a spec string, a Format or a callable."""
    from qscale.formats import Format, get_format

    if isinstance(fmt, str):
        fmt = get_format(fmt)
    if isinstance(fmt, Format):
        from qscale.kernels import fake_quant

        return str(fmt), lambda w: fake_quant(fmt, w)
    if callable(fmt):
        return getattr(fmt, "__name__", "custom"), fmt
    raise CurvatureError(
        f"format must be a spec string (e.g. 'int4-g128'), a Format or a callable; got {type(fmt).__name__}"
    )


def _linear_refs(model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str] | None) -> list[Any]:

    from qscale.lm.layers import linear_layers

    refs = linear_layers(model, include, exclude)
    if not refs:
        raise CurvatureError(
            "the model has no quantizable linear layer (nn.Linear / Conv1D outside the head)"
        )
    return refs


def quant_directions(
    model: nn.Module, fmt: Any, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> tuple[str, list[str], list[torch.Tensor], list[torch.Tensor]]:
    """(format label, layer names, weight parameters, D in each parameter's own layout) for every linear layer.

    D = fake_quant(W) - W with W in the (out, in) layout (groups along the input axis), transposed back for
    transformers Conv1D weights.
    """
    label, fq = _quantizer(fmt)
    names, weights, ds = [], [], []
    for ref in _linear_refs(model, include, exclude):
        w = ref.get_weight().contiguous()
        q = fq(w)
        if tuple(q.shape) != tuple(w.shape):
            raise CurvatureError(f"{label}: fake quantization changed the shape of {ref.name}")
        d = q.to(w.dtype) - w
        if ref.transposed:
            d = d.t()
        names.append(ref.name)
        weights.append(ref.weight)
        ds.append(d.contiguous())
    return label, names, weights, ds


@contextmanager
def _perturbed(params: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]) -> Iterator[None]:
    """Weights W + delta inside the block; the original values restored bit-exactly afterwards."""
    import torch

    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, d in zip(params, deltas, strict=True):
                p.add_(d.to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def directional_terms(
    model: nn.Module,
    input_ids: torch.Tensor,
    params: Sequence[torch.Tensor],
    directions: Sequence[torch.Tensor],
) -> tuple[float, list[float], list[float]]:
    """(loss, [g_j . d_j], [1/2 d_j . (H d)_j]) for a direction d given per parameter (one HVP)."""
    import torch

    input_ids = _check_ids(model, input_ids)
    _select_params(model, list(params))  # dtype / grad checks
    with curvature_mode(model):
        op = _HVP(model, input_ids, list(params))
        hd = op(directions)
        g = op.gradient()
        lin = [float(torch.sum(a.double() * b.double())) for a, b in zip(g, directions, strict=True)]
        quad = [0.5 * float(torch.sum(a.double() * b.double())) for a, b in zip(directions, hd, strict=True)]
        loss = float(op.loss.detach())
    return loss, lin, quad


def _loss_value(model: nn.Module, input_ids: torch.Tensor) -> float:
    import torch

    with torch.no_grad(), curvature_mode(model):
        return float(lm_loss(model, input_ids))


def quant_direction_terms(
    model: nn.Module,
    input_ids: torch.Tensor,
    fmt: Any,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    measure: bool = False,
) -> QuantDirectionTerms:
    """g.D and 1/2 D^T H D for the format's weight quantization of every linear layer (see the module doc).

    ``fmt``: a spec string, a ``qscale.formats.Format`` or any callable mapping an (out, in) weight to its
    fake-quantized value. ``measure=True`` also evaluates the quantized model on the batch (one extra forward).
    """
    input_ids = _check_ids(model, input_ids)
    label, names, weights, ds = quant_directions(model, fmt, include, exclude)
    loss, lin, quad = directional_terms(model, input_ids, weights, ds)
    measured = None
    if measure:
        with _perturbed(weights, ds):
            measured = _loss_value(model, input_ids) - loss
    return QuantDirectionTerms(
        format=label,
        loss=loss,
        linear=math.fsum(lin),
        quadratic=math.fsum(quad),
        per_layer_linear=dict(zip(names, lin, strict=True)),
        per_layer_quadratic=dict(zip(names, quad, strict=True)),
        d_norm=math.sqrt(math.fsum(float(d.double().square().sum()) for d in ds)),
        w_norm=math.sqrt(math.fsum(float(w.detach().double().square().sum()) for w in weights)),
        n_params=sum(w.numel() for w in weights),
        measured_dloss=measured,
    )


# ---------------------------------------------------------------------------------------------------------
# Radial loss profile
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RadialProfile:
    """Loss at W + r*u: ``losses[i][j]`` for direction i and radius ``radii[j]``; ``base_loss`` at r = 0."""

    radii: tuple[float, ...]
    losses: tuple[tuple[float, ...], ...]
    base_loss: float
    seed: int

    @property
    def mean_losses(self) -> tuple[float, ...]:
        return tuple(math.fsum(col) / len(col) for col in zip(*self.losses, strict=True))

    @property
    def mean_dloss(self) -> tuple[float, ...]:
        return tuple(x - self.base_loss for x in self.mean_losses)

    def to_dict(self) -> dict[str, Any]:
        return {
            "radii": list(self.radii),
            "losses": [list(r) for r in self.losses],
            "mean_dloss": list(self.mean_dloss),
            "base_loss": self.base_loss,
            "seed": self.seed,
        }


def random_directions(params: Sequence[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """One Gaussian direction with each tensor's part rescaled to that tensor's Frobenius norm.

    A tensor of zeros gets a zero direction (relative perturbations of zero are zero).
    """
    import torch

    gen = _generator(seed)
    out = []
    for p in params:
        u = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float64)
        wn = float(p.detach().double().norm())
        un = float(u.norm())
        u = u * (wn / un) if un > 0 else u * 0
        out.append(u.to(dtype=p.dtype, device=p.device))
    return out


def radial_profile(
    model: nn.Module,
    input_ids: torch.Tensor,
    radii: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1),
    directions: int = 4,
    seed: int = 0,
    params: Sequence[torch.Tensor | str] | None = None,
) -> RadialProfile:
    """Loss along ``directions`` random per-tensor-normalised directions at each radius (no gradients).

    Direction i uses seed ``seed + i`` (:func:`random_directions`); the weights are restored bit-exactly.
    """
    if not isinstance(directions, int) or directions < 1:
        raise CurvatureError(f"directions must be a positive int, got {directions!r}")
    radii = tuple(float(r) for r in radii)
    if not radii or not all(math.isfinite(r) for r in radii):
        raise CurvatureError(f"radii must be a non-empty list of finite numbers, got {radii!r}")
    input_ids = _check_ids(model, input_ids)
    _, ps = _select_params(model, params)
    base = _loss_value(model, input_ids)
    rows = []
    for i in range(directions):
        u = random_directions(ps, seed + i)
        row = []
        for r in radii:
            with _perturbed(ps, [r * x for x in u]):
                row.append(_loss_value(model, input_ids))
        rows.append(tuple(row))
    return RadialProfile(radii=radii, losses=tuple(rows), base_loss=base, seed=seed)
