"""Artifacts on disk: storage paths, atomic files, locks, run folders, resume state, manifests."""
