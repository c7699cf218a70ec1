"""kvmharness: drive the real Linux KVM API to catch regressions in paravirtual time."""

__version__ = "0.1.0"
