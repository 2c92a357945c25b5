"""The controller's HTTP side: a JSON read API, Server-Sent Events, /metrics, a dashboard.

This module stays light (the CLI flag's default port comes from here); the server
itself is `dockyard.controller.http.server`.
"""

HTTP_PORT = 7402
