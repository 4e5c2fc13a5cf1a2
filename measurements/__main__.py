"""``python -m measurements``: print the simulated measurement of a tree.

Prints the hex string that a simulated launch of the tree carries as its measurement, the
same string ``kms attest`` prints as "measurement". Reads only the tree and the config file
it is given; writes only to stdout/stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from measurements.compute import (
    DEFAULT_LAUNCH_CONFIG,
    MeasurementError,
    canonical_launch_config,
    code_digest,
    launch_config_for,
    measured_files,
    simulated_measurement,
)

MAX_CONFIG_FILE_BYTES = 1024 * 1024
PLATFORMS = ("sev-snp", "tdx", "nitro")
# The source tree this package sits in: the tree the simulator runs from an editable install.
DEFAULT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = Path(".kms-state")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m measurements",
        description="Compute the simulated launch measurement (SHA-384 over code + config).",
    )
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="tree holding enclave/ and verifier/"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="launch configuration JSON file (default: STATE/launch.json when --state is "
        f"given, else {DEFAULT_STATE_DIR}/launch.json when that exists (the state `make run` "
        "uses), else the built-in one)",
    )
    parser.add_argument("--state", type=Path, help="a kms-sim state directory: use its launch.json")
    parser.add_argument("--platform", choices=PLATFORMS, help="set the config's platform field")
    parser.add_argument("--json", action="store_true", help="print a JSON object, not just hex")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is None and args.state is not None:
        args.config = args.state / "launch.json"
    elif args.config is None and (DEFAULT_STATE_DIR / "launch.json").is_file():
        args.config = DEFAULT_STATE_DIR / "launch.json"
        print(f"launch configuration: {args.config}", file=sys.stderr)
    try:
        if args.config is not None:
            raw = args.config.read_bytes()
            if len(raw) > MAX_CONFIG_FILE_BYTES:
                raise MeasurementError(f"{args.config} is larger than {MAX_CONFIG_FILE_BYTES} B")
            try:
                config = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise MeasurementError(f"{args.config} is not JSON: {exc}") from None
            if not isinstance(config, dict):
                raise MeasurementError(f"{args.config} must hold a JSON object")
        else:
            config = launch_config_for(str(DEFAULT_LAUNCH_CONFIG["platform"]))
        if args.platform is not None:
            config["platform"] = args.platform
        config_bytes = canonical_launch_config(config)
        measurement = simulated_measurement(args.root, config_bytes)
        if args.json:
            out = {
                "measurement": measurement.hex(),
                "code_digest": code_digest(args.root).hex(),
                "files": len(measured_files(args.root)),
                "platform": config.get("platform"),
                "launch_config": config_bytes.decode("utf-8"),
            }
            print(json.dumps(out, indent=2))
        else:
            print(measurement.hex())
    except (MeasurementError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
