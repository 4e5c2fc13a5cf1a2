"""Run PyKMIP's KmipServer for bench/pykmip_baseline.py. Runs in the PyKMIP venv, not .venv.

Usage: run_server.py CONFIG_PATH LOG_PATH

The same as PyKMIP's own ``pykmip-server -f CONFIG -l LOG`` entry point, except that live
policy monitoring is off: the stock CLI re-scans the policy directory every second in a side
process, and the baseline has no policy files to reload. Stop it with SIGINT (the server's
own handler turns that into a prompt shutdown; SIGTERM only takes effect at the next 10 s
accept() timeout).
"""

import sys

from kmip.services.server.server import KmipServer


def main() -> None:
    config_path, log_path = sys.argv[1], sys.argv[2]
    server = KmipServer(config_path=config_path, log_path=log_path, live_policies=False)
    with server:
        server.serve()


if __name__ == "__main__":
    main()
