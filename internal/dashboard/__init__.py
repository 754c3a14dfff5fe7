"""The web dashboard at ``/dashboard``: overview, tasks, failures and schedules."""

from internal.dashboard.app import PREFIX, create_dashboard, mount_dashboard

__all__ = ["PREFIX", "create_dashboard", "mount_dashboard"]
