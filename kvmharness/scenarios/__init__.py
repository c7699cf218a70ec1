"""Scenarios: one module per subject; each returns samples plus a verdict from checks."""
