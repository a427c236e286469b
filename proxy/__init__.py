"""slotswitch: the data path, its state and runtime."""

from proxy import native

native.select()  # before any compiled module can be imported (see proxy/native.py)
