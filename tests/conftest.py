"""Shared fixtures. ``project`` (tests/harness.py): a workspace driving the real CLI."""

from harness import project  # noqa: F401
