"""Shared state: the state file (persist) and fleets of replicas agreeing through Redis."""
