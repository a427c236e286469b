"""slotswitch: a reverse proxy for blue-green releases.

The layers, top to bottom (each imports only from the ones below it; pyproject.toml's import-linter
contracts hold them): cli, process, admin (the HTTP admin API, a sibling package), fleet, release,
routing, datapath, settings. datapath/ and routing/ run per request and are compiled with mypyc.
"""

from proxy import native

native.select()  # before any compiled module can be imported (see proxy/native.py)
