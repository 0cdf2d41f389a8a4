"""`python -m taskyard [--namespace NS ...]`: run the operator against the current kubeconfig.

Without --namespace it watches all namespaces. Other kopf options pass through, e.g.
``--liveness=http://0.0.0.0:8080/healthz`` or ``--verbose``.
"""

from __future__ import annotations

import os
import sys

from kopf import cli as kopf_cli


def watched_namespaces(args: list[str]) -> list[str]:
    """The namespaces named by -n/--namespace options (none: every namespace)."""
    found = []
    for index, arg in enumerate(args):
        if arg in ("-n", "--namespace") and index + 1 < len(args):
            found.append(args[index + 1])
        elif arg.startswith("--namespace="):
            found.append(arg.split("=", 1)[1])
    for name in found:
        if any(char in name for char in "*?[],!"):
            raise SystemExit(f"--namespace={name}: expected a namespace name; patterns are not supported")
    return found


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    namespaces = watched_namespaces(args)
    os.environ["TASKYARD_WATCH_NAMESPACES"] = ",".join(namespaces)
    if not namespaces and "-A" not in args and "--all-namespaces" not in args:
        args.append("--all-namespaces")
    import taskyard.handlers  # noqa: F401  (registers the handlers with kopf)

    return (
        kopf_cli.main(["run", "--standalone", "-m", "taskyard.handlers", *args], standalone_mode=False) or 0
    )


if __name__ == "__main__":
    sys.exit(main())
