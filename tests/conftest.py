"""Shared helpers for the kvmharness test suite (fixtures come from the plugin)."""
