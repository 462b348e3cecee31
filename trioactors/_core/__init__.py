"""Layer 1: pure state machines. No I/O, no clock, no trio."""
