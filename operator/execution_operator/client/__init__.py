"""Run Python code on the cluster from a program and get a typed result back.

    from execution_operator.client import Client
    with Client() as client:
        print(client.run("result = sum(input_data)", [1, 2, 3]).output)   # 6

`AsyncClient` has the same API for asyncio. Failures raise the `ExecutionFailed` subclass of their
family (see docs/client.md); problems of the API itself raise `ClientError`. Needs the `client` extra
(`pip install 'execution-operator[client]'`) for the official `kubernetes` package's credential loaders.
"""

from execution_operator.client.aio import AsyncClient, AsyncExecutionHandle
from execution_operator.client.exceptions import (
    FAMILIES,
    ClientError,
    ExecutionCancelled,
    ExecutionError,
    ExecutionFailed,
    ExecutionUnavailable,
    InfrastructureError,
    InvalidExecution,
    ResourceLimitExceeded,
    UserCodeError,
    WaitTimeout,
    family_for,
)
from execution_operator.client.result import ExecutionResult, ResultError
from execution_operator.client.sync import Client, ExecutionHandle

__all__ = [
    "FAMILIES",
    "AsyncClient",
    "AsyncExecutionHandle",
    "Client",
    "ClientError",
    "ExecutionCancelled",
    "ExecutionError",
    "ExecutionFailed",
    "ExecutionHandle",
    "ExecutionResult",
    "ExecutionUnavailable",
    "InfrastructureError",
    "InvalidExecution",
    "ResourceLimitExceeded",
    "ResultError",
    "UserCodeError",
    "WaitTimeout",
    "family_for",
]
