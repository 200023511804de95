"""A stand-in for node-driver-registrar, written from its documented behaviour
(shared/reference/sidecars.md; v2.17), for the tests that move a node plugin between it and
`sidecarless node`: the registrar's binary is not on the module proxy here.

What it does, as the registrar does: asks the driver at `--csi-address` its name
(GetPluginInfo); removes whatever is at `<registration dir>/<name>-reg.sock` and serves
pluginregistration/v1 there under umask 0077: GetInfo answers `CSIPlugin`, the name,
`--kubelet-registration-path` and versions `1.0.0`; NotifyRegistrationStatus with
`plugin_registered: false` makes it exit 1 (its container restarts); SIGTERM removes its
socket and exits. It logs `registrar: <what>` lines for the tests to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import grpc

from csi_client import CSIClient, CSIError
from sidecarless.node.generated import pluginregistration_pb2 as reg

SERVICE = "pluginregistration.Registration"


def say(text: str) -> None:
    print(f"registrar: {text}", flush=True)


async def driver_name(csi_address: str, wait: float = 60.0) -> str:
    """GetPluginInfo, waiting for the driver's socket as the registrar does (its container
    starts beside the driver's, in no set order)."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            async with CSIClient(csi_address, timeout=5, connect_attempts=1) as client:
                return str((await client.get_plugin_info()).name)
        except CSIError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def serve(csi_address: str, kubelet_path: str, registration_dir: Path) -> int:
    name = await driver_name(csi_address)
    path = registration_dir / f"{name}-reg.sock"
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def get_info(_: reg.InfoRequest, context: grpc.aio.ServicerContext) -> reg.PluginInfo:
        return reg.PluginInfo(type="CSIPlugin", name=name, endpoint=kubelet_path, supported_versions=["1.0.0"])

    async def notify(
        status: reg.RegistrationStatus, context: grpc.aio.ServicerContext
    ) -> reg.RegistrationStatusResponse:
        if status.plugin_registered:
            say(f"kubelet registered {name}")
        else:
            say(f"kubelet refused {name}: {status.error}")
            if not done.done():
                done.set_result(1)
        return reg.RegistrationStatusResponse()

    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetInfo": grpc.unary_unary_rpc_method_handler(
                get_info,
                request_deserializer=reg.InfoRequest.FromString,
                response_serializer=reg.PluginInfo.SerializeToString,
            ),
            "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
                notify,
                request_deserializer=reg.RegistrationStatus.FromString,
                response_serializer=reg.RegistrationStatusResponse.SerializeToString,
            ),
        },
    )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers,))
    old = os.umask(0o077)
    try:
        server.add_insecure_port(f"unix://{path}")
        await server.start()
    finally:
        os.umask(old)
    say(f"serving {path} for {name}")
    loop = asyncio.get_running_loop()

    def terminated() -> None:
        if not done.done():
            done.set_result(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, terminated)
    code = await done
    await server.stop(grace=0.5)
    if code == 0:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        say(f"removed {path}")
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csi-address", required=True, help="unix:///path of the driver's socket, here")
    parser.add_argument("--kubelet-registration-path", required=True, help="the driver's socket as kubelet sees it")
    parser.add_argument("--registration-dir", type=Path, default=Path("/registration"))
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(serve(args.csi_address, args.kubelet_registration_path, args.registration_dir)))


if __name__ == "__main__":
    main()
