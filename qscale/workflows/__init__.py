"""qscale.workflows: the user tasks, one implementation each, that the CLI, the service and the report call.

* :mod:`qscale.workflows.profile`: predict a model's KL in any format from its sensitivity profile (the default
  law for a model), the per-layer breakdown, and the leave-one-model-out validation that fits and ships the
  calibration (``models/profile-kld.json``).
* :mod:`qscale.workflows.lens`: the perturbation-lens study of one model (``qscale lens``): dnll under noise of each
  shape and strength, and uniform vs cube-root grids.

Workflows sit above laws and collect and below the adapters (cli, service, report); nothing below imports them.
"""
