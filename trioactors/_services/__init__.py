"""Layer 4: services built from actors on nodes (membership, ...)."""
