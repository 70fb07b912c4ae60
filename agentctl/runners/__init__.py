"""Runners execute attempts: ``command`` (a subprocess), ``llm`` (a model call through
litellm; the only module that imports it), ``noop`` (in-process, for tests and benchmarks)."""
