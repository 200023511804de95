"""Real CSI drivers for the csi_client tests: no Kubernetes needed."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from csi_client import CSIClient
from devcluster import DriverSpec, RunningDriver, start_driver
from tests.conftest import short_tmpdir

MOCK_NAME = "mock.csi.client-test"


@pytest.fixture(scope="session")
def driver_dir() -> Iterator[Path]:
    directory = short_tmpdir("slc-csi-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def mock_driver(driver_dir: Path) -> Iterator[RunningDriver]:
    driver = start_driver(DriverSpec(MOCK_NAME), driver_dir)
    yield driver
    driver.process.stop()


@pytest.fixture
def start_mock(driver_dir: Path) -> Iterator[Callable[[DriverSpec], RunningDriver]]:
    """Start extra mock drivers (for hooks); each is stopped after the test."""
    started: list[RunningDriver] = []

    def start(spec: DriverSpec) -> RunningDriver:
        driver = start_driver(spec, driver_dir)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.process.stop()


@pytest.fixture
async def client(mock_driver: RunningDriver) -> AsyncIterator[CSIClient]:
    async with CSIClient(mock_driver.address, timeout=10) as csi_client:
        yield csi_client
