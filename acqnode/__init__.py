"""Acquisition node: source -> reader process -> shared-memory ring -> ZeroMQ shipper."""
