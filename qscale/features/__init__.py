"""The feature layer: one registry entry per feature (name, level, unit, cost, law transform, settings, function),
read by the collection and by the laws (docs/architecture.md). Importing it registers every built-in feature and
imports no torch (the measuring functions import it when they run).

``core``: the registry (:func:`register_feature`, :func:`get_feature`, :func:`compute_features`, ...);
``builtin``: facts, float evaluation, weight SQNR / statistics, format facts, given inputs; ``landscape``: the
curvature and outlier features. A new feature is one ``@register_feature`` in one of these modules.
"""

from __future__ import annotations

from qscale.features import builtin, landscape  # noqa: F401  (they register their features)
from qscale.features.builtin import float_eval, float_eval_key
from qscale.features.core import (
    COSTS,
    FORMAT_LEVELS,
    LEVELS,
    SETTINGS,
    TRANSFORMS,
    Column,
    Feature,
    FeatureContext,
    FeatureError,
    column_info,
    compute_features,
    data_features,
    feature_of_column,
    flex_columns,
    get_feature,
    list_features,
    measured_features,
    register_feature,
)
from qscale.features.landscape import LandscapeSettings, landscape_batch

__all__ = [
    "COSTS",
    "FORMAT_LEVELS",
    "LEVELS",
    "SETTINGS",
    "TRANSFORMS",
    "Column",
    "Feature",
    "FeatureContext",
    "FeatureError",
    "LandscapeSettings",
    "column_info",
    "compute_features",
    "data_features",
    "feature_of_column",
    "flex_columns",
    "float_eval",
    "float_eval_key",
    "get_feature",
    "landscape_batch",
    "list_features",
    "measured_features",
    "register_feature",
]
