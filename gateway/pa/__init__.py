"""PA (placeholder while gateway.pa.decode lands)."""
