"""urelay's tests: unit (sans-I/O, Clock) and integration (real sockets, real clients)."""

from hypothesis import settings

# Shared machines are noisy: no per-example deadline; a fixed seed keeps CI repeatable.
settings.register_profile("urelay", deadline=None, derandomize=True, max_examples=200)
settings.load_profile("urelay")
