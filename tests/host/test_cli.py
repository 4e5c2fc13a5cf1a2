"""``kms-host`` as a subprocess: ready line, forwarding, SIGTERM/SIGINT shutdown, bad input."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from .conftest import BackendFactory

STEP = 10.0


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "host",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def ready_port(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), STEP)).decode()
    assert line.startswith("ready tcp://127.0.0.1:"), line
    return int(line.strip().rsplit(":", 1)[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_cli_forwards_then_shuts_down_cleanly_on_signal(
    signum: signal.Signals, start_backend: BackendFactory
) -> None:
    backend = await start_backend("unix")
    process = await spawn(
        "--listen", "127.0.0.1:0", "--enclave", str(backend.address), "--idle-timeout", "30"
    )
    try:
        port = await ready_port(process)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"through the subprocess")
        assert await asyncio.wait_for(reader.readexactly(22), STEP) == b"through the subprocess"

        process.send_signal(signum)
        await asyncio.sleep(0.2)
        writer.write(b"still open")  # in flight: allowed to finish during the grace period
        assert await asyncio.wait_for(reader.readexactly(10), STEP) == b"still open"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), STEP) == b""
        writer.close()
        assert await asyncio.wait_for(process.wait(), STEP) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_second_signal_stops_at_once(start_backend: BackendFactory) -> None:
    backend = await start_backend("tcp")
    process = await spawn(
        "--listen", "127.0.0.1:0", "--enclave", str(backend.address), "--shutdown-grace", "60"
    )
    try:
        port = await ready_port(process)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), STEP) == b"x"
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert process.returncode is None  # waiting for the open connection
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), STEP) == 0
        assert await asyncio.wait_for(reader.read(), STEP) == b""
        writer.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    "args",
    [
        ["--listen", "nonsense", "--enclave", "unix:/x.sock"],
        ["--listen", "127.0.0.1:0", "--enclave", "ftp:1"],
        ["--listen", "127.0.0.1:0", "--enclave", "unix:/x.sock", "--max-connections", "0"],
    ],
    ids=["listen", "enclave", "limit"],
)
async def test_bad_arguments_exit_2(args: list[str]) -> None:
    process = await spawn(*args)
    _, stderr = await asyncio.wait_for(process.communicate(), STEP)
    assert process.returncode == 2
    assert b"kms-host:" in stderr


async def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "kms-host"
    assert script.exists(), "run: .venv/bin/pip install -e '.[test,lint]'"
    process = await asyncio.create_subprocess_exec(
        str(script), "--help", stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), STEP)
    assert process.returncode == 0
    assert b"--enclave" in stdout
