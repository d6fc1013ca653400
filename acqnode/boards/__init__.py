"""Clients for the protocols Red Pitaya boards speak (SCPI, MCPHA)."""
