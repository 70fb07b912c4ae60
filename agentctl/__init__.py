"""agentctl: run pipelines of AI agents defined in plain files, and never lose work."""

__version__ = "0.1.0"
