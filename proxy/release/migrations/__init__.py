"""The migration gate: a lint of registered database migrations that refuses a switch while any has findings."""
