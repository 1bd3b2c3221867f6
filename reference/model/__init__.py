"""LwM2M object model: paths, resource types, object definitions (OMA DDF), values."""
from reference.model.path import Path, PathError
from reference.model.types import (
    ContentFormat,
    ObjectDef,
    ObjLink,
    Operations,
    ResourceDef,
    ResourceType,
    Value,
    Values,
)

__all__ = [
    "ContentFormat", "ObjLink", "ObjectDef", "Operations", "Path", "PathError",
    "ResourceDef", "ResourceType", "Value", "Values",
]

# DDF loader and object registry (added with reference/model/ddf.py, registry.py)
from reference.model.ddf import DdfError, is_object_definition, load_ddf_file, parse_ddf  # noqa: E402
from reference.model.registry import ObjectRegistry  # noqa: E402

__all__ += ["DdfError", "ObjectRegistry", "is_object_definition", "load_ddf_file", "parse_ddf"]
