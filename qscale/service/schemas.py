"""Request bodies of the service, validated by pydantic: types are strict (no ``true`` for a number, no
``"abc"`` for a count), numbers are finite (``Infinity``/``NaN`` refused), every range is stated in the field's
description and repeated in the 422 message (:func:`valid_range`).

``inputs`` takes only documented names: the public-law inputs below, or for other laws the law's own feature
columns (checked against the law by :func:`qscale.laws.predict.check_inputs`). Keyword arguments of the Python
API (``alpha``, ``extrapolate``, ``features``, ``models_dir``, ...) can never be set through it; ``alpha`` and
``extrapolate`` are request fields of their own.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Largest number of format specs one request may name (a list, or a named set after expansion).
MAX_FORMATS = 200
MAX_NAME = 256
MAX_STR = 64
#: Largest number of entries in ``inputs``.
MAX_INPUTS = 32

#: The ranges of the constrained fields, by field name, as shown to clients.
RANGES: dict[str, str] = {
    "law": f"a law name from GET /api/laws, 1 to {MAX_NAME} characters",
    "model": f"zoo:NAME, panel:NAME or a checkpoint name from GET /api/models, 1 to {MAX_NAME} characters",
    "format": f"one format spec from GET /api/formats, 1 to {MAX_NAME} characters",
    "formats": f"a named set or a list of at most {MAX_FORMATS} format specs",
    "budget": "a finite number >= 0, the largest acceptable upper interval bound",
    "alpha": "a number strictly between 0 and 1; 1 - alpha is the interval's coverage",
    "baseline_ppl": "a finite number > 0, the unquantized model's perplexity",
    "extrapolate": "true or false (default false); true answers inputs far outside the law's training range",
    "params_b": "a finite number > 0, the model size in billions of parameters, not a boolean",
    "bits": "a number from 1 to 32, the nominal weight bits",
    "bpw": "a number > 0 and at most 64, bits per weight including scale overhead",
    "group_size": "an integer >= 1, the quantization group size",
    "n_nonembed": "a finite number > 0, the non-embedding parameter count",
    "train_tokens": "a finite number > 0, the training tokens",
    "method": f"a method name such as rtn, gptq or awq, 1 to {MAX_STR} characters",
    "family": f"a model family such as Llama-2, 1 to {MAX_STR} characters",
    "inputs": f"an object of at most {MAX_INPUTS} documented input names: the law's features",
    "candidates": f"a named set or a list of at most {MAX_FORMATS} format specs a layer may take",
    "target_bpw": "a finite number > 0 and at most 32, average bits per weight including scales",
    "max_kld": "a finite number > 0, the largest acceptable predicted KL in nats/token",
    "keep": "at most 64 layer name patterns (fnmatch) kept in 16-bit",
}
#: Any other feature given in ``inputs``: what its value may be.
FEATURE_RANGE = f"a finite number, or a category name of 1 to {MAX_STR} characters"
_FEATURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # the whole name (fullmatch: no trailing newline either)


def valid_range(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """The stated range of the field at ``loc`` (a pydantic error location), or None."""
    for part in reversed(list(loc)):
        if isinstance(part, str) and part in RANGES:
            return RANGES[part] if part != "inputs" else FEATURE_RANGE
    return None


def _d(name: str, what: str) -> str:
    return f"{what} Valid: {RANGES[name]}."


Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Short = Annotated[str, Field(min_length=1, max_length=MAX_STR)]


class Inputs(BaseModel):
    """Feature values given directly. Public laws derive their features from these."""

    # the schema states what the validator below enforces on the extra (feature) entries
    model_config = ConfigDict(
        extra="allow",
        strict=True,
        json_schema_extra={
            "maxProperties": MAX_INPUTS,
            "propertyNames": {"pattern": f"^{_FEATURE_NAME.pattern}$"},
            "additionalProperties": {
                "anyOf": [{"type": "number"}, {"type": "string", "minLength": 1, "maxLength": MAX_STR}],
                "description": FEATURE_RANGE,
            },
        },
    )

    params_b: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description=_d("params_b", "Model size in billions of parameters.")
    )
    bits: Annotated[float, Field(ge=1, le=32, allow_inf_nan=False)] | None = Field(
        None, description=_d("bits", "Nominal weight bits.")
    )
    bpw: Annotated[float, Field(gt=0, le=64, allow_inf_nan=False)] | None = Field(
        None, description=_d("bpw", "Bits per weight including scale overhead.")
    )
    group_size: Annotated[int, Field(ge=1, le=1 << 24)] | None = Field(
        None, description=_d("group_size", "Quantization group size (adds 16/group_size bits).")
    )
    n_nonembed: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description=_d("n_nonembed", "Non-embedding parameter count.")
    )
    train_tokens: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description=_d("train_tokens", "Training tokens.")
    )
    method: Short | None = Field(None, description=_d("method", "Quantization method."))
    family: Short | None = Field(None, description=_d("family", "Model family, for exact N and D."))

    @field_validator("group_size", mode="before")
    @classmethod
    def _integral(cls, v: Any) -> Any:
        """JSON Schema's integer includes 128.0; strict mode alone would refuse it (booleans stay refused)."""
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            return int(v)
        return v

    @model_validator(mode="after")
    def _check_extra(self) -> Inputs:
        extra = self.__pydantic_extra__ or {}
        if len(self.model_fields_set) + len(extra) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs")
        for k, v in extra.items():
            if not _FEATURE_NAME.fullmatch(k):
                raise ValueError(
                    f"input name {k[:70]!r} is not a feature name (lower-case letters, digits, _)"
                )
            ok_num = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ok_str = isinstance(v, str) and 1 <= len(v) <= MAX_STR
            if not (ok_num or ok_str):
                raise ValueError(f"input {k!r}: must be {FEATURE_RANGE}")
        return self

    def given(self) -> dict[str, Any]:
        """The inputs the client set, as keyword values."""
        out = {k: getattr(self, k) for k in self.model_fields_set if getattr(self, k) is not None}
        out.update(self.__pydantic_extra__ or {})
        return out


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    law: Name | None = Field(
        None,
        description=_d(
            "law",
            "Name of a fitted law (GET /api/laws); omitted or 'profile' with a model: the model's own "
            "sensitivity profile (KL per format, with the layers that carry it).",
        ),
    )
    model: Name | None = Field(
        None,
        description=_d("model", "The model to predict for, by a name this server allows (GET /api/models)."),
    )
    format: Name | None = Field(None, description=_d("format", "One format spec, e.g. int4-g128."))
    formats: (
        Annotated[str, Field(min_length=1, max_length=4096)]
        | Annotated[list[Name], Field(min_length=1, max_length=MAX_FORMATS)]
        | None
    ) = Field(None, description=_d("formats", "A named set (all-4bit) or a list of specs to rank."))
    budget: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] | None = Field(
        None, description=_d("budget", "Largest acceptable predicted damage (upper interval bound).")
    )
    alpha: Annotated[float, Field(gt=0, lt=1, strict=True)] = Field(
        0.1, description=_d("alpha", "Miscoverage of the interval: 0.1 gives a 90% interval.")
    )
    baseline_ppl: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)] | None = Field(
        None,
        description=_d("baseline_ppl", "log-ppl-ratio laws: the fp16 perplexity, to add delta_ppl."),
    )
    extrapolate: Annotated[bool, Field(strict=True)] = Field(
        False,
        description=_d(
            "extrapolate",
            "Answer inputs more than 100x beyond the law's training range (with a warning) instead of a 400.",
        ),
    )
    inputs: Inputs | None = Field(None, description=_d("inputs", "Feature values given directly."))


class PlanRequest(BaseModel):
    """POST /api/plan: one format per linear layer of ``model`` for a bits budget (or a KL ceiling)."""

    model_config = ConfigDict(extra="forbid")

    model: Name = Field(..., description=_d("model", "The model to plan, by a name this server allows."))
    candidates: (
        Annotated[str, Field(min_length=1, max_length=4096)]
        | Annotated[list[Name], Field(min_length=1, max_length=MAX_FORMATS)]
    ) = Field(
        "int3-g128,int4-g128,nf4-g64,int5-pc,fp6-e2m3-pc,int8-pc",
        description=_d("candidates", "Formats a layer may take: a named set or a list of specs."),
    )
    target_bpw: Annotated[float, Field(gt=0, le=32, allow_inf_nan=False, strict=True)] | None = Field(
        None, description=_d("target_bpw", "Average bits per weight to stay at or under (scales counted).")
    )
    max_kld: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)] | None = Field(
        None, description=_d("max_kld", "The dual: the fewest bits whose predicted KL is at most this.")
    )
    keep: Annotated[list[Name], Field(max_length=64)] = Field(
        default_factory=list, description=_d("keep", "Layer name patterns kept in 16-bit.")
    )
    alpha: Annotated[float, Field(gt=0, lt=1, strict=True)] = Field(
        0.1, description=_d("alpha", "Miscoverage of the interval: 0.1 gives a 90% interval.")
    )
