"""`TaskState` and `NodeState` values are plain attributes of their enum wrappers (the
same ints protobuf's descriptor gives): the control loops read them per task, and
protobuf's `EnumTypeWrapper.__getattr__` looks each up in the descriptor every time."""

from __future__ import annotations

from dockyard.common.states import NodeState, TaskState
from dockyard.v1.types_pb2 import NodeStatus, TaskStatus


def test_every_value_is_a_plain_attribute_with_the_descriptors_number() -> None:
    for enum, message in ((TaskState, TaskStatus), (NodeState, NodeStatus)):
        values = {value.name: value.number for value in enum.DESCRIPTOR.values}
        assert values  # the enum has values
        for name, number in values.items():
            assert vars(enum)[name] == number  # found without __getattr__
            assert getattr(enum, name) == getattr(message, name) == number
            assert type(getattr(enum, name)) is int
    assert TaskState.Name(TaskState.RUNNING) == "RUNNING"  # the wrapper's methods still work
    assert TaskState.Value("PENDING") == TaskStatus.PENDING
    assert TaskStatus.State.RUNNING == TaskState.RUNNING  # one object under both names
