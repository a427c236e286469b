"""The config schema: one validator for the YAML file and the admin API."""
