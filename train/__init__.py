"""Jitted training of Flax models with optax and optax_ext optimizers.

Modules: :mod:`train.data` (data sets in memory), :mod:`train.text` (byte-level text),
:mod:`train.stream` (data streamed through grain: :mod:`train.sources`, :mod:`train.images`),
:mod:`train.inputs` (what the loop sees of either), :mod:`train.methods` (every optimizer,
each described once), :mod:`train.registry` (optimizers and schedules by name),
:mod:`train.steps` (what a step runs per model API, linen or NNX, and per optimizer need),
:mod:`train.loop` (train step, evaluation, the loop), :mod:`train.checkpoint` (Orbax),
:mod:`train.telemetry` (step logs), :mod:`train.report` (tables and files),
:mod:`train.plots`, :mod:`train.curves` and :mod:`train.diagnostic_plots` (figures),
:mod:`train.cli` (the options of ``python -m train``) and :mod:`train.experiment` (what one
command runs).
"""
