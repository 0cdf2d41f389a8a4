#!/usr/bin/env python3
"""A git server for the e2e tier: git's own smart-HTTP backend (`git http-backend`) behind a small
HTTP front, in a pod of the cluster. Standard library only; it runs on the agent base image, which
has git and Python.

    python3 gitserver.py --root /tmp/git --repo demo.git --token-file /etc/git-server/token

At start it creates the bare repository with one commit on main (a README). Anyone may clone; pushing
needs HTTP basic authentication whose password is the token, as a hosted git service asks for it,
so a push proves the agent's credentials came from its Secret.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "git-server",
    "GIT_AUTHOR_EMAIL": "git-server@example.invalid",
    "GIT_COMMITTER_NAME": "git-server",
    "GIT_COMMITTER_EMAIL": "git-server@example.invalid",
}


def create_repository(root: Path, name: str) -> None:
    """The bare repository with its first commit, made aside and moved into place whole, so a server
    stopped half-way never leaves an empty one behind."""
    bare = root / name
    if bare.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **GIT_IDENTITY, "HOME": str(root)}

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    with tempfile.TemporaryDirectory(dir=root) as work:
        staged, checkout = Path(work) / name, Path(work) / "checkout"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(staged), cwd=Path(work))
        git("config", "http.receivepack", "true", cwd=staged)
        checkout.mkdir()
        git("init", "--quiet", "--initial-branch=main", cwd=checkout)
        (checkout / "README.md").write_text("# demo\n\nA repository for the agents to work on.\n")
        git("add", "README.md", cwd=checkout)
        git("commit", "--quiet", "-m", "Initial commit", cwd=checkout)
        git("push", "--quiet", str(staged), "main", cwd=checkout)
        staged.rename(bare)


class GitHandler(BaseHTTPRequestHandler):
    root: Path
    token: str | None

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def serve(self) -> None:
        path, _, query = self.path.partition("?")
        pushing = "git-receive-pack" in path or "service=git-receive-pack" in query
        if pushing and not self.may_push():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else self.read_chunked()
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": "agent",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def read_chunked(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return b""
        chunks = []
        while True:
            size = int(self.rfile.readline().strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def may_push(self) -> bool:
        if self.token is None:
            return True
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(password, self.token)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.command} {self.path} {format % args}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--root", type=Path, default=Path("/tmp/git"))
    parser.add_argument("--repo", default="demo.git")
    parser.add_argument("--token-file", type=Path)
    options = parser.parse_args()
    create_repository(options.root, options.repo)
    GitHandler.root = options.root
    GitHandler.token = options.token_file.read_text().strip() if options.token_file else None
    server = ThreadingHTTPServer(("", options.port), GitHandler)
    print(f"serving {options.root / options.repo} on :{options.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
