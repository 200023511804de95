"""The error table of shared/reference/sidecars.md §8, row by row."""

import grpc
import pytest

from csi_client.errors import (
    ErrorClass,
    FinalError,
    InfeasibleError,
    MaybeInProgressError,
    Operation,
    classify,
    error_for,
    go_code_name,
)

C = grpc.StatusCode
ALL_OPERATIONS = list(Operation)


@pytest.mark.parametrize("operation", ALL_OPERATIONS)
@pytest.mark.parametrize("code", [C.CANCELLED, C.DEADLINE_EXCEEDED, C.UNAVAILABLE, C.ABORTED, None])
def test_maybe_in_progress_for_every_operation(code: grpc.StatusCode | None, operation: Operation) -> None:
    assert classify(code, operation) is ErrorClass.MAYBE_IN_PROGRESS


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        (Operation.PROVISION, ErrorClass.FINAL),
        (Operation.DELETE, ErrorClass.FINAL),
        (Operation.ATTACH, ErrorClass.MAYBE_IN_PROGRESS),
        (Operation.RESIZE, ErrorClass.MAYBE_IN_PROGRESS),
        (Operation.MODIFY, ErrorClass.MAYBE_IN_PROGRESS),
        (Operation.SNAPSHOT, ErrorClass.MAYBE_IN_PROGRESS),
    ],
)
def test_resource_exhausted_depends_on_operation(operation: Operation, expected: ErrorClass) -> None:
    assert classify(C.RESOURCE_EXHAUSTED, operation) is expected


@pytest.mark.parametrize(
    ("code", "operation", "expected"),
    [
        (C.INVALID_ARGUMENT, Operation.PROVISION, ErrorClass.INFEASIBLE),
        (C.INVALID_ARGUMENT, Operation.RESIZE, ErrorClass.INFEASIBLE),
        (C.INVALID_ARGUMENT, Operation.MODIFY, ErrorClass.INFEASIBLE),
        (C.INVALID_ARGUMENT, Operation.ATTACH, ErrorClass.FINAL),
        (C.OUT_OF_RANGE, Operation.RESIZE, ErrorClass.INFEASIBLE),
        (C.NOT_FOUND, Operation.RESIZE, ErrorClass.INFEASIBLE),
        (C.OUT_OF_RANGE, Operation.PROVISION, ErrorClass.FINAL),
        (C.NOT_FOUND, Operation.ATTACH, ErrorClass.FINAL),
        (C.OUT_OF_RANGE, Operation.MODIFY, ErrorClass.FINAL),
        (C.FAILED_PRECONDITION, Operation.RESIZE, ErrorClass.FINAL),
        (C.ALREADY_EXISTS, Operation.PROVISION, ErrorClass.FINAL),
        (C.INTERNAL, Operation.SNAPSHOT, ErrorClass.FINAL),
        (C.UNIMPLEMENTED, Operation.OTHER, ErrorClass.FINAL),
        (C.UNKNOWN, Operation.ATTACH, ErrorClass.FINAL),
    ],
)
def test_final_and_infeasible(code: grpc.StatusCode, operation: Operation, expected: ErrorClass) -> None:
    assert classify(code, operation) is expected


@pytest.mark.parametrize(
    ("code", "operation", "exception"),
    [
        (C.DEADLINE_EXCEEDED, Operation.PROVISION, MaybeInProgressError),
        (C.INTERNAL, Operation.PROVISION, FinalError),
        (C.INVALID_ARGUMENT, Operation.PROVISION, InfeasibleError),
    ],
)
def test_error_for_builds_the_typed_exception(
    code: grpc.StatusCode, operation: Operation, exception: type[Exception]
) -> None:
    error = error_for("CreateVolume", operation, code, "boom")
    assert type(error) is exception
    assert str(error) == f"CreateVolume failed: {go_code_name(code)}: boom"


def test_infeasible_is_final() -> None:
    assert issubclass(InfeasibleError, FinalError)


def test_every_grpc_code_has_a_go_name() -> None:
    names = {go_code_name(code) for code in C}
    assert len(names) == len(C)
    assert go_code_name(C.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert go_code_name(C.CANCELLED) == "Canceled"
    assert go_code_name(None) == "Unknown"


def test_status_text_reads_like_go() -> None:
    error = error_for("CreateVolume", Operation.PROVISION, C.OUT_OF_RANGE, "too big")
    assert error.status_text == "rpc error: code = OutOfRange desc = too big"
