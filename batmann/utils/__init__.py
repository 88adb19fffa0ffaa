"""Small helpers shared across batmann: atomic file writes, seeding, paths."""
