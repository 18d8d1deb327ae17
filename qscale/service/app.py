"""The HTTP prediction service: the fitted laws under ``models/`` behind a small JSON API and a web page.

Endpoints (all JSON unless noted)::

    GET  /                  the web page (static/index.html; its script and style are static/app.js, app.css)
    GET  /api/health        {"status": "ok" | "degraded", "version": ..., "laws": n, "bad_laws": [{name, reason}],
                            "artifacts": {name: "verified" | "unverified" | "bad"}, "models": {...}}
                            (degraded: an artifact failed its hash check or load; docs/security.md)
    GET  /api/laws          the manifests of the laws the service can use
    GET  /api/laws/{name}   one manifest
    GET  /api/formats       the format catalogue: Format.facts() of each (spec, family, element_bits, block,
                            granularity, bits_per_element, description), the keys of `qscale formats --json`
    GET  /api/models        the model names this server can load (zoo:, panel:, --model-dir entries)
    POST /api/predict       {"law": ..., "model": ..., "format": ...}                 -> one prediction
                            {"law": ..., "model": ..., "formats": "all-4bit" | [...],
                             "budget": 0.1}                                           -> ranked, + recommendation
                            public-data laws take inputs instead of a model, e.g.
                            {"law": "public-...", "inputs": {"params_b": 7, "bits": 4, "method": "gptq"}}
                            or a format, whose bits per weight become the law's input:
                            {"law": "public-...", "format": "int4-g128",
                             "inputs": {"params_b": 7, "method": "gptq"}}
                            optional: "alpha" (0.1), "baseline_ppl" (adds delta_ppl), "extrapolate" (false;
                            true answers inputs far outside the law's training range, with a warning)

The prediction is :func:`qscale.laws.predict.rank_formats`, the same function as ``qscale predict --law``: the
same ranking (least damage first, then fewest bits per element), recommendation and JSON (``Ranking.to_dict``).

Bad input answers 400 (or 422 for a body that does not match the schema, naming the valid range), a body over
the size limit 413, a full server 503 with ``Retry-After``. Nothing is written anywhere. The service only reads
artifacts (JSON / skops with an explicit trusted-type list) and models from the roots the operator allows
(:mod:`qscale.service.models`); loading never runs code from them, nothing is downloaded. The threat model is
in docs/security.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from qscale import __version__
from qscale.registry import unknown_name_message
from qscale.service.guard import Guard, allowed_host_set
from qscale.service.models import Busy, ModelLoadFailed, ModelPool, ModelRefused, ModelRoots, WorkQueue
from qscale.service.schemas import MAX_FORMATS, PlanRequest, PredictRequest, valid_range
from qscale.workflows.profile import PROFILE_LAW

STATIC = Path(__file__).with_name("static")
log = logging.getLogger("qscale.service")

#: Default limits (``qscale serve`` options change them).
MAX_BODY = 64 * 1024
MODEL_CACHE = 2
MAX_WORKERS = 2
MAX_QUEUE = 8
TIME_LIMIT = 120.0


class ErrorDetail(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "Bad input: the message names the problem and valid choices."},
    413: {"model": ErrorDetail, "description": "Request body over the size limit."},
    503: {
        "model": ErrorDetail,
        "description": "Busy (concurrency cap) or past the time limit; see the Retry-After header.",
    },
}
HOST_ERROR = {400: {"model": ErrorDetail, "description": "Invalid Host header."}}


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
        specs = expand_formats(formats)
    except ValueError as err:
        raise HTTPException(400, f"{err} (named sets: {', '.join(sorted(FORMAT_SETS))})") from err
    if len(specs) > MAX_FORMATS:
        raise HTTPException(400, f"{len(specs)} formats: at most {MAX_FORMATS} per request")
    if not specs:
        raise HTTPException(400, "'formats' names no format")
    return specs


def create_app(
    models_dir: str | Path | None = None,
    *,
    model_dirs: Iterable[str | Path] = (),
    zoo_root: str | Path | None = None,
    panel_root: str | Path | None = None,
    bind: str | None = None,
    allowed_hosts: Iterable[str] = (),
    max_body: int = MAX_BODY,
    model_cache: int = MODEL_CACHE,
    max_workers: int = MAX_WORKERS,
    max_queue: int = MAX_QUEUE,
    time_limit: float = TIME_LIMIT,
) -> FastAPI:
    """Build the FastAPI app over the laws in ``models_dir`` (default: the repository's ``models/``).

    Models come only from ``model_dirs``, the zoo root and the panel root (defaults: ``$QSCALE_ZOO_DIR`` /
    ``$QSCALE_PANEL_DIR`` or their ``~/.cache/qscale`` directories). Requests must carry a ``Host`` naming
    loopback, ``bind`` or one of ``allowed_hosts`` (``"*"`` allows any).
    """
    from qscale.laws import artifacts
    from qscale.laws.estimators import LawError

    roots = ModelRoots(model_dirs, zoo_root=zoo_root, panel_root=panel_root)
    pool = ModelPool(size=model_cache)
    queue = WorkQueue(max_workers=max_workers, max_queue=max_queue, time_limit=time_limit)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        title="qscale",
        version=__version__,
        description="Predict quantization damage of language models from fitted laws.",
        docs_url=None,  # Swagger UI / ReDoc load script from a CDN: not under this CSP; /openapi.json stays
        redoc_url=None,
    )
    app.state.roots, app.state.pool, app.state.queue = roots, pool, queue
    cache: dict[str, Any] = {}
    verified: dict[str, str] = {}  # law name -> "verified" | "unverified" (artifacts.verify_law), once loaded
    law_lock = threading.Lock()

    app.add_middleware(Guard, allowed_hosts=allowed_host_set(bind, allowed_hosts), max_body=max_body)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            msg = str(err.get("msg", "invalid value"))
            rng = valid_range(loc)
            if rng:
                msg = f"{msg} (valid: {rng})"
            detail.append({"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))})
        return JSONResponse({"detail": detail}, status_code=422)

    def get_law(name: str):
        with law_lock:
            if name not in cache:
                known = artifacts.list_laws(models_dir)
                if name not in known:
                    shown = name if len(name) <= 80 else name[:77] + "..."
                    raise HTTPException(
                        400,
                        unknown_name_message(shown, known, "law", n=3)
                        if known
                        else f"unknown law {shown!r}: this server has no laws",
                    )
                try:
                    state = artifacts.verify_law(name, models_dir)
                    cache[name] = artifacts.load_law(name, models_dir)
                    verified[name] = state
                except LawError as err:  # a corrupt artifact: this law only, named, never a 500
                    raise HTTPException(400, f"law {name!r} cannot be used: {_law_reason(err)}") from None
            return cache[name]

    def _law_reason(err: Exception) -> str:
        return str(err).replace(
            str(artifacts.default_models_dir() if models_dir is None else models_dir), "models"
        )

    def law_status() -> tuple[list[str], list[dict[str, str]]]:
        good: list[str] = []
        bad: list[dict[str, str]] = []
        for n in artifacts.list_laws(models_dir):
            try:
                get_law(n)
            except HTTPException as err:
                bad.append({"name": n, "reason": str(err.detail)})
            else:
                good.append(n)
        return good, bad

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The OpenAPI schema, with the names of the laws this server can use as the enum of every law field
        (a name outside it still answers the documented 400 naming the available laws)."""
        import copy

        schema = copy.deepcopy(base_openapi())
        names, _bad = law_status()
        if names:
            schema["components"]["schemas"]["PredictRequest"]["properties"]["law"]["enum"] = names
            for param in schema["paths"]["/api/laws/{name}"]["get"].get("parameters", []):
                if param.get("name") == "name":
                    param["schema"]["enum"] = names
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/static/app.js", include_in_schema=False)
    def script() -> Response:
        return Response((STATIC / "app.js").read_bytes(), media_type="text/javascript; charset=utf-8")

    @app.get("/static/app.css", include_in_schema=False)
    def style() -> Response:
        return Response((STATIC / "app.css").read_bytes(), media_type="text/css; charset=utf-8")

    @app.get("/api/health", responses=HOST_ERROR)
    def health() -> dict[str, Any]:
        good, bad = law_status()
        return {
            "status": "degraded" if bad else "ok",
            "version": __version__,
            "laws": len(good),
            "bad_laws": bad,
            "artifacts": {
                **{n: verified.get(n, "unverified") for n in good},
                **{b["name"]: "bad" for b in bad},
            },
            "models": {"cached": len(pool), "pending": queue.pending, "capacity": queue.capacity},
        }

    @app.get("/api/laws", responses=HOST_ERROR)
    def laws() -> list[dict[str, Any]]:
        good, _bad = law_status()  # a corrupt artifact is left out (and reported by /api/health)
        return [_jsonable(artifacts.manifest_of(get_law(n))) for n in good]

    @app.get("/api/laws/{name}", responses=ERRORS)
    def law(name: str) -> dict[str, Any]:
        return _jsonable(artifacts.manifest_of(get_law(name)))

    @app.get("/api/formats", responses=HOST_ERROR)
    def formats() -> list[dict[str, Any]]:
        from qscale.formats import get_format, list_formats

        return [get_format(spec).facts() for spec in list_formats()]

    @app.get("/api/models", responses=HOST_ERROR)
    def models() -> list[dict[str, str]]:
        return roots.available()

    @app.post("/api/predict", responses=ERRORS)
    def predict(req: PredictRequest) -> dict[str, Any]:
        from qscale.laws import predict as P
        from qscale.laws.estimators import LawError

        if req.format and req.formats:
            raise HTTPException(
                400, "give either 'format' (one spec) or 'formats' (a set or list to rank), not both"
            )
        specs: list[str | None] = (
            list(_expand_formats(req.formats)) if req.formats is not None else [req.format]
        )
        if req.law in (None, PROFILE_LAW):
            return predict_profile(req, specs)
        law_obj = get_law(req.law)
        given = req.inputs.given() if req.inputs is not None else {}

        def rank(model: Any) -> Any:
            return P.rank_formats(
                model, specs, law_obj, alpha=req.alpha, extrapolate=req.extrapolate, budget=req.budget,
                baseline_ppl=req.baseline_ppl, inputs=given, model_name=req.model,
            )  # fmt: skip

        try:
            if law_obj.kind != "public" and req.model is not None:
                P.check_inputs(law_obj, given)  # a bad request is answered before a model is loaded
                ref = roots.resolve(req.model)

                def work() -> Any:
                    with pool.use(ref) as lm:
                        return rank(lm)

                ranking = queue.run(work)
            else:  # no model to load (a public law answers a model with its 400)
                ranking = rank(req.model)
        except (ModelRefused, ModelLoadFailed) as err:
            raise HTTPException(400, str(err)) from None
        except Busy as err:
            raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after)}) from None
        except (LawError, ValueError, KeyError, TypeError) as err:
            raise HTTPException(400, str(err)) from err
        result = ranking.to_dict()
        if req.formats is None and len(ranking.predictions) == 1:  # one format: the prediction itself
            result = result["predictions"][0]
        return {"law": req.law, "result": _jsonable(result)}

    def predict_profile(req: PredictRequest, specs: list[str | None]) -> dict[str, Any]:
        """The default law for a model: its sensitivity profile (the CLI's `qscale predict --model M`)."""
        from qscale.laws.estimators import LawError
        from qscale.workflows.profile import predict_model, rank_profile

        if req.model is None:
            raise HTTPException(
                400,
                "the profile law predicts for a model: give 'model' (GET /api/models), or name a law "
                "(GET /api/laws) to predict from inputs",
            )
        extra = [k for k in ("inputs", "baseline_ppl") if getattr(req, k) is not None]
        if extra or req.extrapolate:
            raise HTTPException(
                400,
                f"the profile law takes a model and formats, not {extra or ['extrapolate']}; name a law for those",
            )
        if specs == [None]:
            raise HTTPException(400, "give 'format' or 'formats' to predict")
        skipped: dict[str, str] = {}
        try:
            ref = roots.resolve(req.model)

            def work() -> dict[str, Any]:
                with pool.use(ref) as lm:
                    return predict_model(
                        lm, [str(s) for s in specs], alpha=req.alpha, models_dir=models_dir, skipped=skipped
                    )

            out = queue.run(work)
        except (ModelRefused, ModelLoadFailed) as err:
            raise HTTPException(400, str(err)) from None
        except Busy as err:
            raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after)}) from None
        except (LawError, ValueError) as err:
            raise HTTPException(400, str(err)) from None
        if not out["predictions"]:
            why = "; ".join(f"{s}: {r}" for s, r in skipped.items())
            raise HTTPException(400, f"no format could be predicted for this model ({why})")
        rank_profile(out, req.budget, skipped)
        out["model"] = req.model  # the client's name, never the server path
        out["profile"].pop("path", None)
        return {"law": PROFILE_LAW, "result": _jsonable(out)}

    @app.post("/api/plan", responses=ERRORS)
    def plan(req: PlanRequest) -> dict[str, Any]:
        from qscale.laws.estimators import LawError
        from qscale.workflows.plan import PlanError, plan_model

        if (req.target_bpw is None) == (req.max_kld is None):
            raise HTTPException(400, "give exactly one of 'target_bpw' and 'max_kld'")
        specs = _expand_formats(req.candidates)
        try:
            ref = roots.resolve(req.model)

            def work() -> dict[str, Any]:
                with pool.use(ref) as lm:
                    return plan_model(
                        lm, specs, target_bpw=req.target_bpw, max_kld=req.max_kld, keep=req.keep,
                        alpha=req.alpha, models_dir=models_dir,
                    )  # fmt: skip

            out = queue.run(work)
        except (ModelRefused, ModelLoadFailed) as err:
            raise HTTPException(400, str(err)) from None
        except Busy as err:
            raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after)}) from None
        except (PlanError, LawError, ValueError) as err:
            raise HTTPException(400, str(err)) from None
        out["model"]["name"] = req.model  # the client's name, never the server path
        out["profile"].pop("path", None)
        return _jsonable(out)

    return app
