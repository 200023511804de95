"""Storage capacity tracking: external-provisioner's `--enable-capacity` (CSIStorageCapacity objects)."""
