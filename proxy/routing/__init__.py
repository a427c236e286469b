"""The routing state the data path reads: one immutable snapshot replaced whole, and per-slot stats.

Compiled with mypyc with the data path (read and recorded per request)."""
