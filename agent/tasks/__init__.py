"""Service tasks on a node: one controller per task, and the parts the worker shares.

`controller` drives one task through its states (swarmkit's `exec.Controller` and
`exec.Do`), `health` runs a task's health check, `reporting` sends statuses through the
session (every status once again after a reconnect), `persistence` keeps `worker.json`,
`disposal` stops and removes containers. The worker (`dockyard.agent.worker`) reconciles
the assignment set against the running controllers.
"""
