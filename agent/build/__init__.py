"""Images made on the node: `docker commit` (a container's writable layer on top of its
image) and `docker build` (a Dockerfile's steps over a build context)."""
