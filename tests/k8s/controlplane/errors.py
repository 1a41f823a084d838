"""The error every failure of the test control plane is, or derives from."""

from __future__ import annotations


class ControlPlaneError(RuntimeError):
    """The control plane could not start, or a request to it failed."""
