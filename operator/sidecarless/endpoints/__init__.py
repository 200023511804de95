"""DriverEndpoints: the spec (pure, :mod:`.spec`), the live connection and registry
(:mod:`.live`) and the status written back (pure, :mod:`.status`)."""
