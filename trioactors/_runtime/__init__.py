"""Layer 2: the Trio runtime (actors, mailboxes, supervisors)."""
