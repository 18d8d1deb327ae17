"""qscale: predict how much a language model loses when it is quantized, before quantizing it."""

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Predict quantization damage with a fitted law; see :func:`qscale.laws.predict.predict`."""
    from qscale.laws.predict import predict as _predict

    return _predict(*args, **kwargs)


def predict_model(model, formats, **kwargs):
    """The default law for a model: KL in each format from the model's own sensitivity profile, with intervals
    and the layers that carry it, ranked (``budget=`` adds the recommendation); the JSON of
    ``qscale predict --model M --formats ...``. See :func:`qscale.workflows.profile.predict_model`."""
    from qscale.workflows.profile import predict_model as _predict_model
    from qscale.workflows.profile import rank_profile

    budget = kwargs.pop("budget", None)
    skipped = kwargs.pop("skipped", None)
    if skipped is None:
        skipped = {}
    specs = [formats] if isinstance(formats, str) else list(formats)
    return rank_profile(_predict_model(model, specs, skipped=skipped, **kwargs), budget, skipped)


__all__ = ["__version__", "predict", "predict_model"]
