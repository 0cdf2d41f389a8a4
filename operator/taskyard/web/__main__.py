"""`python -m taskyard.web` (the taskyard-api container, and `taskyard serve`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from taskyard.web.kube import Endpoint
from taskyard.web.server import ApiConfig, serve


def build_parser(prog: str = "taskyard-api") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The task API over the Task resources. Callers authenticate with a Kubernetes "
        "bearer token, which every call to the API server carries.",
    )
    add_serve_options(parser)
    return parser


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=os.environ.get("TASKYARD_WEB_ADDRESS", "127.0.0.1"), help="default: 127.0.0.1"
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("TASKYARD_WEB_PORT", "9090")), help="default: 9090"
    )
    parser.add_argument(
        "--default-namespace",
        default=os.environ.get("TASKYARD_WEB_DEFAULT_NAMESPACE", "default"),
        help="namespace of requests that name none, for tokens that are not a ServiceAccount's "
        "(a ServiceAccount's requests default to its own namespace)",
    )


def run(args: argparse.Namespace, kubeconfig: str | None = None, context: str | None = None) -> int:
    endpoint = Endpoint.from_config(kubeconfig, context)
    serve(ApiConfig(endpoint=endpoint, default_namespace=args.default_namespace), args.address, args.port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
