"""Serving an embedray model over HTTP (the plain-Python side; the Ray Serve wiring is in
``embedray/cluster/serve_app.py``).

* :mod:`~embedray.serve.config` — :class:`ServeConfig`, the settings and limits;
* :mod:`~embedray.serve.app` — the FastAPI app: routes, validation, limits, auth, metrics;
* :mod:`~embedray.serve.schemas` / :mod:`~embedray.serve.errors` — request/response bodies and
  the one error shape;
* :mod:`~embedray.serve.batching` — token-budget splitting, length-sorted passes, run merging;
* :mod:`~embedray.serve.embedder` — the model, the cross-encoder, token counting;
* :mod:`~embedray.serve.corpus` — the corpus, its FAISS index, snippets and highlights;
* :mod:`~embedray.serve.backend` — the model-side interface and its in-process implementation.

``embedray serve`` is :mod:`embedray.cli.serve`.
"""
