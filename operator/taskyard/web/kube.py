"""The task API's calls to the Kubernetes API server, made with the caller's own token.

The component has no identity of its own for these: every request carries the bearer token its caller
sent, so the API server authenticates the caller and RBAC decides what they may do, exactly as for
kubectl. Every call has a time limit; a log that is followed ends when its pod's log ends.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from taskyard.api import DNS1123_SUBDOMAIN_PATTERN, GROUP, LABEL_TASK, VERSION
from taskyard.render import CONTAINER_NAME, label_value_for

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
# A followed log is quiet for as long as the agent is: only connecting is bounded, and reading ends
# with the pod's log (or when the client of the stream goes).
FOLLOW_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10)
LINE_MAX_BYTES = 64 * 1024
_SERVICE_ACCOUNT = "system:serviceaccount:"
OUR_RESOURCES = ("tasks", "agents", "clusteragents")
_OBJECT_NAME = re.compile(DNS1123_SUBDOMAIN_PATTERN)


@dataclass(frozen=True)
class Endpoint:
    """Where the API server is and how to trust it; never whose credentials to use."""

    server: str
    ssl: ssl.SSLContext | bool

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, context: str | None = None) -> Endpoint:
        """In a pod: the cluster it runs in, trusted by the CA file TASKYARD_WEB_CA_FILE (the chart
        mounts the namespace's kube-root-ca.crt: the pod needs no token of its own). Elsewhere: the
        server and CA of the kubeconfig's context; its client certificate or token is not used, as
        callers bring their own."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if kubeconfig is None and context is None and host and port:
            server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
            return cls(server=server, ssl=ssl.create_default_context(cafile=in_cluster_ca_file()))
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        trust: ssl.SSLContext | bool
        if not configuration.verify_ssl:
            trust = False
        else:
            trust = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        return cls(server=configuration.host.rstrip("/"), ssl=trust)


class KubeError(Exception):
    """The API server refused a call (or could not be reached: status 502/504)."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body or {}

    @property
    def causes(self) -> list[dict[str, Any]]:
        return list((self.body.get("details") or {}).get("causes") or [])


class UserKube:
    """The calls the task API makes, as one caller (their token) in one namespace."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: Endpoint, token: str, namespace: str):
        self.session = session
        self.endpoint = endpoint
        self.token = token
        self.namespace = namespace

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        try:
            async with self.session.request(
                method,
                self.endpoint.server + path,
                params=params,
                data=data,
                headers=headers,
                ssl=self.endpoint.ssl,
                timeout=REQUEST_TIMEOUT,
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _refusal(response.status, raw)
                return json.loads(raw) if raw else {}
        except TimeoutError:
            raise KubeError(504, "the Kubernetes API server did not answer in time") from None
        except aiohttp.ClientError as error:
            raise KubeError(502, f"the Kubernetes API server could not be reached: {error}") from None

    # --- the calls -------------------------------------------------------------------------------

    def _tasks(self, name: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{_seg(self.namespace)}/tasks"
        if not name:
            return path
        if len(name) > 253 or not _OBJECT_NAME.match(name):
            # No Task has such a name; and a path ("../..") in it must never reach another resource.
            raise KubeError(404, f'tasks.{GROUP} "{name}" not found: not a Kubernetes object name')
        return f"{path}/{_seg(name)}"

    async def get_task(self, name: str) -> dict[str, Any]:
        return await self.request("GET", self._tasks(name))

    async def list_tasks(self) -> list[dict[str, Any]]:
        return (await self.request("GET", self._tasks())).get("items") or []

    async def create_task(self, task: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", self._tasks(), task)

    async def cancel_task(self, name: str, resource_version: str) -> dict[str, Any]:
        # The version read is a precondition: a Task replaced in between is not cancelled by mistake.
        patch = {"metadata": {"resourceVersion": resource_version}, "spec": {"cancel": True}}
        return await self.request(
            "PATCH", self._tasks(name), patch, content_type="application/merge-patch+json"
        )

    async def agent_known(self, name: str) -> bool | None:
        """Whether an Agent of the namespace or a ClusterAgent has this name; None when the caller may
        not look (the operator then reports it on the Task)."""
        for path in (
            f"/apis/{GROUP}/{VERSION}/namespaces/{_seg(self.namespace)}/agents/{_seg(name)}",
            f"/apis/{GROUP}/{VERSION}/clusteragents/{_seg(name)}",
        ):
            try:
                await self.request("GET", path)
                return True
            except KubeError as error:
                if error.status == 403:
                    return None
                if error.status != 404:
                    raise
        return False

    async def events_of(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind=Task,involvedObject.uid={task['metadata']['uid']}"
        found = await self.request(
            "GET", f"/api/v1/namespaces/{_seg(self.namespace)}/events", params={"fieldSelector": selector}
        )
        return found.get("items") or []

    async def agents(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The namespace's Agents and the ClusterAgents; a kind the caller may not list is empty."""
        found: list[list[dict[str, Any]]] = []
        for path in (
            f"/apis/{GROUP}/{VERSION}/namespaces/{_seg(self.namespace)}/agents",
            f"/apis/{GROUP}/{VERSION}/clusteragents",
        ):
            try:
                found.append((await self.request("GET", path)).get("items") or [])
            except KubeError as error:
                if error.status != 403:
                    raise
                found.append([])
        return found[0], found[1]

    async def pods_of(self, task_name: str) -> list[dict[str, Any]]:
        found = await self.request(
            "GET",
            f"/api/v1/namespaces/{_seg(self.namespace)}/pods",
            params={"labelSelector": f"{LABEL_TASK}={label_value_for(task_name)}"},
        )
        return found.get("items") or []

    async def config_map(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET", f"/api/v1/namespaces/{_seg(self.namespace)}/configmaps/{_seg(name)}"
            )
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def may(self, verb: str, resource: str, subresource: str = "") -> bool:
        """Whether RBAC lets this caller do this in the namespace (SelfSubjectAccessReview: any
        authenticated caller may ask; a token the cluster refuses is a 401)."""
        attributes = {
            "namespace": self.namespace,
            "verb": verb,
            "group": GROUP if resource in OUR_RESOURCES else "",
            "resource": resource,
            "subresource": subresource,
        }
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        answer = await self.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
        return bool((answer.get("status") or {}).get("allowed"))

    async def username(self) -> str:
        """Who the token belongs to (SelfSubjectReview: any authenticated caller may ask)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = await self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
        return ((answer.get("status") or {}).get("userInfo") or {}).get("username") or ""

    async def log_lines(self, pod: str) -> AsyncIterator[str]:
        """The agent container's log, followed, line by line with the kubelet's timestamps. Bytes that
        are not UTF-8 are replaced; a line longer than LINE_MAX_BYTES comes in pieces."""
        url = f"{self.endpoint.server}/api/v1/namespaces/{_seg(self.namespace)}/pods/{_seg(pod)}/log"
        params = {"container": CONTAINER_NAME, "follow": "true", "timestamps": "true"}
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with self.session.get(
                url, params=params, headers=headers, ssl=self.endpoint.ssl, timeout=FOLLOW_TIMEOUT
            ) as response:
                if response.status >= 400:
                    raise _refusal(response.status, await response.read())
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", errors="replace")
                    while len(pending) > LINE_MAX_BYTES:
                        yield pending[:LINE_MAX_BYTES].decode("utf-8", errors="replace")
                        pending = pending[LINE_MAX_BYTES:]
                if pending:
                    yield pending.decode("utf-8", errors="replace")
        except aiohttp.ClientPayloadError:
            return  # the pod went away while its log was followed: the log ends here
        except TimeoutError:
            raise KubeError(504, "the Kubernetes API server did not answer in time") from None
        except aiohttp.ClientConnectionError as error:
            raise KubeError(502, f"the Kubernetes API server could not be reached: {error}") from None


def _seg(value: str) -> str:
    """A path segment: a '/' in it is escaped, so that it can never name another resource."""
    return quote(value, safe="")


def in_cluster_ca_file() -> str:
    return os.environ.get("TASKYARD_WEB_CA_FILE", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")


def service_account_namespace(username: str) -> str | None:
    """The namespace of a ServiceAccount's username (system:serviceaccount:<namespace>:<name>)."""
    if not username.startswith(_SERVICE_ACCOUNT):
        return None
    namespace, _, name = username[len(_SERVICE_ACCOUNT) :].partition(":")
    return namespace if namespace and name else None


def _refusal(status: int, raw: bytes) -> KubeError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return KubeError(status, raw.decode("utf-8", errors="replace").strip()[:500] or f"HTTP {status}")
    return KubeError(status, str(body.get("message") or f"HTTP {status}"), body)
