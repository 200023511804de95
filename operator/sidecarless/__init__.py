"""Sidecarless: one operator that does the kubernetes-csi controller sidecars' job."""

from sidecarless import lazy_imports

__version__ = "0.1.0"

lazy_imports.install()  # before kopf or kubernetes_asyncio are imported: see lazy_imports
