"""The HTTP prediction service: the fitted laws under ``models/`` behind a small JSON API and a web page.

Endpoints (all JSON unless noted)::

    GET  /                  the web page (static/index.html)
    GET  /api/health        {"status": "ok", "version": ..., "laws": n}
    GET  /api/laws          the manifests of the laws the service can use
    GET  /api/laws/{name}   one manifest
    GET  /api/formats       the format catalogue (spec, family, element bits, bits/element)
    POST /api/predict       {"law": ..., "model": ..., "format": ...}                 -> one prediction
                            {"law": ..., "model": ..., "formats": "all-4bit" | [...],
                             "budget": 0.1}                                           -> ranked, + recommendation
                            public-data laws take inputs instead of a model, e.g.
                            {"law": "public-...", "inputs": {"params_b": 7, "bits": 4, "method": "gptq"}}

Bad input answers 400 with a message that names the problem and the valid choices; nothing is written anywhere.
The service only reads artifacts (JSON / skops with an explicit trusted-type list): loading never runs their code.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from qscale import __version__

STATIC = Path(__file__).with_name("static")


class PredictRequest(BaseModel):
    law: str = Field(..., description="Name of a fitted law (GET /api/laws).")
    model: str | None = Field(None, description="HF checkpoint dir, zoo name (zoo:llama-s) or .gguf file.")
    format: str | None = Field(None, description="One format spec, e.g. int4-g128.")
    formats: str | list[str] | None = Field(
        None, description="A named set (all-4bit) or a list of specs to rank."
    )
    budget: float | None = Field(
        None, description="Largest acceptable predicted damage (upper interval bound)."
    )
    inputs: dict[str, Any] | None = Field(
        None, description="Feature values given directly (public-data laws)."
    )


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    return obj


def _expand_formats(formats: str | list[str]) -> list[str]:
    """:func:`qscale.formats.expand_formats`, with a 400 that also names the sets on bad input."""
    from qscale.formats import FORMAT_SETS, expand_formats

    try:
        return expand_formats(formats)
    except ValueError as err:
        raise HTTPException(400, f"{err} (named sets: {', '.join(sorted(FORMAT_SETS))})") from err


def create_app(models_dir: str | Path | None = None) -> FastAPI:
    """Build the FastAPI app over the laws in ``models_dir`` (default: the repository's ``models/``)."""
    from qscale.laws import artifacts

    app = FastAPI(
        title="qscale",
        version=__version__,
        description="Predict quantization damage of language models from fitted laws.",
    )
    cache: dict[str, Any] = {}

    def get_law(name: str):
        if name not in cache:
            known = artifacts.list_laws(models_dir)
            if name not in known:
                import difflib

                near = difflib.get_close_matches(name, known, n=3)
                hint = f" (did you mean {', '.join(near)}?)" if near else ""
                raise HTTPException(
                    400, f"unknown law {name!r}{hint}; available laws: {', '.join(known) or '(none)'}"
                )
            cache[name] = artifacts.load_law(name, models_dir)
        return cache[name]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "laws": len(artifacts.list_laws(models_dir))}

    @app.get("/api/laws")
    def laws() -> list[dict[str, Any]]:
        return [_jsonable(artifacts.manifest_of(get_law(n))) for n in artifacts.list_laws(models_dir)]

    @app.get("/api/laws/{name}")
    def law(name: str) -> dict[str, Any]:
        return _jsonable(artifacts.manifest_of(get_law(name)))

    @app.get("/api/formats")
    def formats() -> list[dict[str, Any]]:
        from qscale.formats import get_format, list_formats

        out = []
        for spec in list_formats():
            f = get_format(spec)
            out.append(
                {
                    "spec": spec,
                    "family": f.family,
                    "element_bits": f.element_bits,
                    "bits_per_element": f.bits_per_element,
                    "description": f.description,
                }
            )
        return out

    @app.post("/api/predict")
    def predict(req: PredictRequest) -> dict[str, Any]:
        from qscale.laws import predict as P

        law_obj = get_law(req.law)
        if req.format and req.formats:
            raise HTTPException(
                400, "give either 'format' (one spec) or 'formats' (a set or list to rank), not both"
            )
        specs: list[str | None]
        if req.formats is not None:
            specs = list(_expand_formats(req.formats))
        else:
            specs = [req.format]
        try:
            preds = P.predict_formats(req.model, specs, law_obj, **(req.inputs or {}))
        except (ValueError, KeyError, FileNotFoundError, TypeError) as err:
            raise HTTPException(400, str(err)) from err
        result: dict[str, Any] = {"predictions": preds}
        if req.formats is not None:
            preds = sorted(preds, key=lambda p: (p.value, p.bits_per_element or 0.0))
            result["predictions"] = preds
        if req.budget is not None:
            pick = P.recommend(preds, req.budget)
            result["recommended"] = None if pick is None else pick.format
            result["budget"] = req.budget
        if len(preds) == 1 and req.formats is None:
            result = {**preds[0].to_dict()}
        return {"law": req.law, "result": _jsonable(result)}

    return app
