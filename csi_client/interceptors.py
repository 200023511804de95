"""gRPC client interceptors: one log line per CSI call, secrets stripped, and the call histogram."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from csi_client.errors import go_code_name
from csi_client.metrics import CSI_OPERATIONS_SECONDS
from csi_client.redact import loggable

logger = logging.getLogger("csi_client.calls")

Continuation = Callable[[Any, Message], Awaitable[Any]]


def _method_of(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _Outcome:
    """Runs the call and records how it ended, for the interceptors below."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = grpc.StatusCode.OK
        self.seconds = 0.0
        self.response: Message | None = None
        self.details = ""

    async def run(self, continuation: Continuation, details: Any, request: Message) -> Message:
        started = time.monotonic()
        try:
            call = await continuation(details, request)
            response: Message = await call
            self.response = response
            return response
        except grpc.aio.AioRpcError as error:
            self.code, self.details = error.code(), error.details() or ""
            raise
        except BaseException as error:
            self.code, self.details = None, repr(error)
            raise
        finally:
            self.seconds = time.monotonic() - started


class LoggingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Logs each call at DEBUG with its request and response; `csi_secret` fields are stripped."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint

    async def intercept_unary_unary(self, continuation: Continuation, details: Any, request: Message) -> Message:
        if not logger.isEnabledFor(logging.DEBUG):
            return await _Outcome().run(continuation, details, request)
        outcome = _Outcome()
        try:
            return await outcome.run(continuation, details, request)
        finally:
            logger.debug(
                "csi call %s %s in %.3fs",
                _method_of(details),
                go_code_name(outcome.code),
                outcome.seconds,
                extra={
                    "csi_endpoint": self._endpoint,
                    "csi_method": _method_of(details),
                    "csi_code": go_code_name(outcome.code),
                    "duration_seconds": round(outcome.seconds, 6),
                    "csi_request": loggable(request),
                    "csi_response": loggable(outcome.response) if outcome.response is not None else None,
                    "csi_error": outcome.details or None,
                },
            )


class MetricsInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Records `csi_sidecar_operations_seconds{driver_name,method_name,grpc_status_code}`.

    `driver_name` is a callable because the name is only known after GetPluginInfo.
    """

    def __init__(self, driver_name: Callable[[], str]) -> None:
        self._driver_name = driver_name

    async def intercept_unary_unary(self, continuation: Continuation, details: Any, request: Message) -> Message:
        outcome = _Outcome()
        try:
            return await outcome.run(continuation, details, request)
        finally:
            CSI_OPERATIONS_SECONDS.labels(
                driver_name=self._driver_name() or "unknown",
                method_name=_method_of(details),
                grpc_status_code=go_code_name(outcome.code),
            ).observe(outcome.seconds)
