"""Code shared by the controller, the agent and the CLI.

Importing any part of Dockyard turns gRPC's fork handlers off (unless the environment
already says otherwise), before gRPC is imported. The daemons start children through
``subprocess`` (etcd with a ``preexec_fn``, so ``fork()`` rather than ``vfork()``); with
the handlers on, gRPC restarts its event-engine poller in the child, the child then
closes its descriptors before ``exec``, and the poller aborts it (SIGABRT, "epoll_wait
error: Bad file descriptor"), about once in 200 starts. The child only ever execs, so it
needs nothing of gRPC.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
