"""village-gateway: the daemon in a village cultural house.

It switches relays, drives the PA speakers, watches the wifi hotspots, keeps every
record in a durable outbox and syncs with the commune server over MQTT.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("village-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
