"""The node daemon: dockyard-agent."""

import dockyard.common  # noqa: F401  (gRPC settings that must precede its import)
