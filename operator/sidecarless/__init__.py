"""Sidecarless: one operator that does the kubernetes-csi controller sidecars' job."""

__version__ = "0.1.0"
