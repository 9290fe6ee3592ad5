"""The definitions ``dagster dev`` loads (through workspace.yaml): those of the profile that
``AUGASSETS_PROFILE`` names (default ``mini``). Code that knows its profile calls ``build_defs``."""

from .build import build_defs
from .profiles import get_profile

defs = build_defs(get_profile())
