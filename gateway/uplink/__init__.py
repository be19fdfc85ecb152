"""The uplink: everything between the daemon and the commune's MQTT broker.

- :mod:`gateway.uplink.client`: configuration → ``aiomqtt.Client`` (TLS, credentials,
  persistent session, manual acknowledgements, Receive Maximum), topic names, one
  sentence per way a connection fails. ``send`` and ``watch`` use it too.
- :mod:`gateway.uplink.link`: the daemon's one session: presence, subscriptions,
  retained state, the ordered drain of the outbox (replies by their one publisher),
  PUBACKs for commands once claimed, reconnect with full jitter.
- :mod:`gateway.uplink.downlink`: the MQTT adapter of the command path: retained and
  foreign commands ignored, signatures, rate buckets per kind of sender, the claim.
"""
