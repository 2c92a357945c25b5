"""The agent's `/metrics`: containers' cgroup counters and the node's own cost, on scrape."""
