"""The orchestrators: they turn services into tasks and keep them so.

They never call the scheduler or the dispatcher: they write tasks to the store,
the scheduler assigns PENDING tasks to nodes, the dispatcher hands assigned
tasks to their agents (swarmkit's design).
"""
