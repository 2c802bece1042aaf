"""The wiring layer: everything that connects the stage libraries below it.

- :mod:`~embedray.pipeline.config` — the job schemas (train job, refresh, pipeline);
- :mod:`~embedray.pipeline.refresh` — the refresh loop (ANCE): pool v1, refreshes, hooks;
- :mod:`~embedray.pipeline.cross_encoder` — the cross-encoder as a stage;
- :mod:`~embedray.pipeline.evaluation` — dev evaluation during training, through the run's cache;
- :mod:`~embedray.pipeline.runtime` — the ``Runtime`` protocol, the in-process runtime, and
  ``train_job`` (a train job's sections and hooks into the loop, on every worker);
- :mod:`~embedray.pipeline.stages` — the end-to-end job's stages, fingerprints, report.

Plain Python, no Ray: :mod:`embedray.cluster` provides the Ray runtime.
"""
