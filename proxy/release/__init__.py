"""The release logic: the controller (switch, ramp, rollback), draining, the judge and its loop,
PromQL checks, health checks, gates, the migration linter, the audit trail. It changes the routing
state only through the store's one publish."""
