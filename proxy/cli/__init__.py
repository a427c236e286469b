"""Every `slotswitch` command: the process commands (main) and the admin API client (client, render)."""
