"""The daemon: built whole from Settings, run under one TaskGroup, stopped and reloaded
cleanly (:class:`App`). ``village-gateway run`` is :func:`gateway.cli.main` calling it."""

from gateway.daemon.app import LIVE_KEYS, App, changed_keys

__all__ = ["LIVE_KEYS", "App", "changed_keys"]
