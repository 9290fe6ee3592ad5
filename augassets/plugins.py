"""The interface for method plugins: what a package outside augassets imports to add a method.

See docs/plugins.md ("Add your own method") and core/plugins.py for the contract."""

from .core.plugins import (
    ENTRY_POINT_GROUP,
    ClassInfo,
    ImageRequest,
    MethodPlugin,
    PluginError,
    PluginImage,
    PluginResources,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ClassInfo",
    "ImageRequest",
    "MethodPlugin",
    "PluginError",
    "PluginImage",
    "PluginResources",
]
