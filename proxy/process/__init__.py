"""Process wiring: the runtime that builds everything, worker processes, the demo apps."""
