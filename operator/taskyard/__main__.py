"""`python -m taskyard [--namespace NS ...]`: run the operator against the current kubeconfig.

Without --namespace it watches all namespaces. Other kopf options pass through, e.g.
``--liveness=http://0.0.0.0:8080/healthz`` or ``--verbose``.
"""

from __future__ import annotations

import sys

from kopf import cli as kopf_cli


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(
        arg in ("-n", "--namespace", "-A", "--all-namespaces") or arg.startswith("--namespace=")
        for arg in args
    ):
        args.append("--all-namespaces")
    import taskyard.handlers  # noqa: F401  (registers the handlers with kopf)

    return (
        kopf_cli.main(["run", "--standalone", "-m", "taskyard.handlers", *args], standalone_mode=False) or 0
    )


if __name__ == "__main__":
    sys.exit(main())
