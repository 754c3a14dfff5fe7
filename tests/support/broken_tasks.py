"""A task module that fails on import, to prove such a failure is loud."""

raise ImportError("tests.support.broken_tasks is broken on purpose")
