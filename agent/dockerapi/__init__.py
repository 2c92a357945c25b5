"""The Docker Engine API on the agent: the docker CLI, Docker's SDKs and docker-compose
drive this node's containers (see ``server.py`` for how the routes are put together and
``docs/docker-api.md`` for what is served)."""
