"""One table that says what a CSI error means for the caller (shared/reference/sidecars.md §8).

Every failed call becomes one of three exceptions:
- :class:`MaybeInProgressError`: the driver may still be doing the work (timeouts,
  cancellation, connection loss, ABORTED). The caller must retry the *same* call and
  must not forget the operation, or a volume may leak.
- :class:`FinalError`: the driver did nothing and will not by itself; retry with backoff
  only while the object still asks for it.
- :class:`InfeasibleError` (a FinalError): the request can never succeed as it is
  (INVALID_ARGUMENT and, for expansion, OUT_OF_RANGE / NOT_FOUND); retry slowly.

RESOURCE_EXHAUSTED depends on the operation: the provisioner treats it as final (or
reschedules), the other controllers as "retry the same call".
"""

from __future__ import annotations

from enum import Enum

import grpc


class ErrorClass(Enum):
    MAYBE_IN_PROGRESS = "MaybeInProgress"
    FINAL = "Final"
    INFEASIBLE = "Infeasible"


class Operation(Enum):
    """The controller-level operations whose error handling differs."""

    PROVISION = "provision"  # CreateVolume
    DELETE = "delete"  # DeleteVolume
    ATTACH = "attach"  # ControllerPublish / ControllerUnpublish
    RESIZE = "resize"  # ControllerExpandVolume
    MODIFY = "modify"  # ControllerModifyVolume
    SNAPSHOT = "snapshot"  # CreateSnapshot / DeleteSnapshot / group snapshots
    OTHER = "other"  # discovery, probes, listings


_MAYBE_IN_PROGRESS_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
    }
)

# Codes that mean "this request can never succeed", per operation.
_INFEASIBLE_CODES: dict[Operation, frozenset[grpc.StatusCode]] = {
    Operation.PROVISION: frozenset({grpc.StatusCode.INVALID_ARGUMENT}),
    Operation.RESIZE: frozenset(
        {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.NOT_FOUND}
    ),
    Operation.MODIFY: frozenset({grpc.StatusCode.INVALID_ARGUMENT}),
}

# Only the provisioner gives up on RESOURCE_EXHAUSTED; the others keep retrying the call.
_RESOURCE_EXHAUSTED_IS_FINAL = frozenset({Operation.PROVISION, Operation.DELETE, Operation.OTHER})

# gRPC code names as Go spells them (codes.Code.String()), which the sidecars use in
# metric labels and VolumeAttachment errorCode fields.
GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def classify(code: grpc.StatusCode | None, operation: Operation) -> ErrorClass:
    """What a failure with `code` (None: not a gRPC status at all) means for `operation`."""
    if code is None or code in _MAYBE_IN_PROGRESS_CODES:
        return ErrorClass.MAYBE_IN_PROGRESS
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and operation not in _RESOURCE_EXHAUSTED_IS_FINAL:
        return ErrorClass.MAYBE_IN_PROGRESS
    if code in _INFEASIBLE_CODES.get(operation, frozenset()):
        return ErrorClass.INFEASIBLE
    return ErrorClass.FINAL


def go_code_name(code: grpc.StatusCode | None) -> str:
    """The Go name of a gRPC code ("DeadlineExceeded"); "Unknown" for a non-gRPC failure."""
    return GO_CODE_NAMES.get(code, "Unknown") if code is not None else "Unknown"


class CSIError(Exception):
    """A CSI call failed. Subclasses say what that means; see the module docstring."""

    error_class: ErrorClass

    def __init__(self, method: str, code: grpc.StatusCode | None, message: str) -> None:
        self.method = method  # "CreateVolume"
        self.code = code  # None when the failure was not a gRPC status
        self.message = message
        super().__init__(f"{method} failed: {go_code_name(code)}: {message}")

    @property
    def code_name(self) -> str:
        return go_code_name(self.code)

    @property
    def status_text(self) -> str:
        """The text Go's gRPC status prints, which users know from the sidecars' events."""
        return f"rpc error: code = {self.code_name} desc = {self.message}"


class MaybeInProgressError(CSIError):
    error_class = ErrorClass.MAYBE_IN_PROGRESS


class FinalError(CSIError):
    error_class = ErrorClass.FINAL


class InfeasibleError(FinalError):
    error_class = ErrorClass.INFEASIBLE


_EXCEPTION_FOR_CLASS: dict[ErrorClass, type[CSIError]] = {
    ErrorClass.MAYBE_IN_PROGRESS: MaybeInProgressError,
    ErrorClass.FINAL: FinalError,
    ErrorClass.INFEASIBLE: InfeasibleError,
}


def error_for(method: str, operation: Operation, code: grpc.StatusCode | None, message: str) -> CSIError:
    """The typed exception for a failed call of `method`."""
    return _EXCEPTION_FOR_CLASS[classify(code, operation)](method, code, message)
