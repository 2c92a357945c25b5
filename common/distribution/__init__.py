"""The OCI distribution (registry v2) client both daemons use: the agent pulls and
pushes with it, the controller resolves tags to the digests that services pin."""
