"""Render CSI messages for logs with every secret replaced.

Which fields are secret is read from the proto descriptors (the `csi_secret` field
option, as csi-lib-utils' protosanitizer does), so a field the spec marks later is
stripped without anyone keeping a list up to date.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from csi_client.generated import csi_pb2

STRIPPED = "***stripped***"


@cache
def _is_secret(field: FieldDescriptor) -> bool:
    options = field.GetOptions()
    return bool(options.HasExtension(csi_pb2.csi_secret) and options.Extensions[csi_pb2.csi_secret])


@cache
def _has_secrets(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold a secret anywhere below it (handles recursion)."""
    seen: set[str] = set()
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        for field in current.fields:
            if _is_secret(field):
                return True
            if field.message_type is not None:
                pending.append(field.message_type)
    return False


def loggable(message: Message) -> dict[str, Any]:
    """The message as a JSON-ready dict, secret fields replaced by ``***stripped***``."""
    if not _has_secrets(message.DESCRIPTOR):
        return MessageToDict(message, preserving_proto_field_name=True)
    copy = type(message)()
    copy.CopyFrom(message)
    secret_paths = _clear_secrets(copy, ())
    rendered = MessageToDict(copy, preserving_proto_field_name=True)
    for path in secret_paths:
        parent: Any = rendered
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = STRIPPED
    return rendered


def _clear_secrets(message: Message, path: tuple[str | int, ...]) -> list[tuple[str | int, ...]]:
    """Clear every set secret field below `message`; return where each one was."""
    found: list[tuple[str | int, ...]] = []
    for field, value in message.ListFields():
        if _is_secret(field):
            message.ClearField(field.name)
            found.append((*path, field.name))
        elif field.message_type is not None and _has_secrets(field.message_type):
            if field.is_repeated:
                for index, item in enumerate(value):
                    found += _clear_secrets(item, (*path, field.name, index))
            else:
                found += _clear_secrets(value, (*path, field.name))
    return found
