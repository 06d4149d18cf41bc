"""zq: a brokerless task cluster for Python on ZeroMQ.

    import zq
    with zq.Client() as client:          # an embedded local cluster
        fut = client.submit(pow, 2, 10)
        print(fut.result())              # 1024
"""

from .canvas import Call, Chain, Group, chain, group
from .client import Client
from .context import Progress, TaskContext, current_task
from .config import Config, load_config
from .envelope import ErrorInfo, Result, TaskInfo, TaskState
from .errors import (
    BindError,
    ClientClosed,
    ConfigError,
    InsecureBindError,
    NodeUnreachable,
    ProtocolError,
    SerializationError,
    TaskFailed,
    UnknownTask,
    WorkerLost,
    ZqError,
)
from .futures import GroupFuture, TaskFuture
from .policy import LoggingPolicy, Policy
from .progress import progress
from .slurm import SlurmWorkers
from .task import Task, current_client, task

__version__ = "0.1.0"

__all__ = [
    "Client", "Config", "load_config", "ErrorInfo", "Result", "TaskInfo", "TaskState",
    "BindError", "ClientClosed", "ConfigError", "InsecureBindError", "NodeUnreachable",
    "ProtocolError", "SerializationError", "TaskFailed", "WorkerLost", "ZqError", "TaskFuture",
    "LoggingPolicy", "Policy", "Task", "current_client", "task", "__version__",
    "Call", "Chain", "Group", "chain", "group", "Progress", "TaskContext", "current_task",
    "UnknownTask", "GroupFuture", "SlurmWorkers", "progress",
]
