"""triptych core: the shared multimodal engine.

Importing this package is cheap and has no side effects; heavy libraries are imported by the
modules that need them.
"""

__version__ = "0.1.0"
