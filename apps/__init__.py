"""The three triptych products, each a plugin on the shared core."""
