"""The data path: per request, compiled with mypyc (every module here; see proxy/native.py).

It reads the routing snapshot once per request and imports nothing from the release logic, admin/
or aiohttp (the import-linter contracts in pyproject.toml)."""
