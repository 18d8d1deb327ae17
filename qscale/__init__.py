"""qscale: predict how much a language model loses when it is quantized, before quantizing it."""

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Predict quantization damage with a fitted law; see :func:`qscale.laws.predict.predict`."""
    from qscale.laws.predict import predict as _predict

    return _predict(*args, **kwargs)


__all__ = ["__version__", "predict"]
