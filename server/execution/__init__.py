"""Running models: a loaded version's instances, the dynamic batcher, pipelines (``surge batch`` is in commands/).

``model`` (``ModelVersion``: instances in their threads, warm-up, hung-instance replacement), ``batching`` (the
dynamic batcher and its latency-SLO mode), ``pipeline`` (pre/postprocess steps around a runtime), ``stats`` (per-request stage stamps and Triton's statistics). The runtimes themselves are
in ``surge.server.runtimes``.
"""
