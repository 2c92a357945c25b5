"""The hollow runtime: simulated containers for scale tests (kubemark's hollow node).

Nothing runs: a container is a small record whose command decides how it ends
(`true` exits 0, `false` / `sh -c 'exit 3'` exit non-zero after a short delay,
`sleep N` exits 0 after N seconds, anything else runs until stopped).
"""

from dockyard.agent.runtime.hollow.runtime import HollowRuntime, simulate

__all__ = ["HollowRuntime", "simulate"]
