"""Image references live in dockyard.common.reference (the controller validates them too)."""

from dockyard.common.reference import (
    DEFAULT_REGISTRY,
    DEFAULT_TAG,
    InvalidReference,
    Reference,
    parse_reference,
)

__all__ = ["DEFAULT_REGISTRY", "DEFAULT_TAG", "InvalidReference", "Reference", "parse_reference"]
