"""The dockyard CLI."""

import dockyard.common  # noqa: F401  (gRPC settings that must precede its import)
