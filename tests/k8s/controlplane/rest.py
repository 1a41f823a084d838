"""A small JSON client for kube-apiserver (standard library only): requests, discovery, apply."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ControlPlaneError


class ApiError(ControlPlaneError):
    """The API server answered a request with an error status."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class RestClient:
    """Requests to the kube-apiserver on ``https://127.0.0.1:<port>`` as one client certificate.

    Unusable (every request raises :class:`ControlPlaneError`) until :meth:`_connect` names the
    port and TLS context. Each thread keeps its own keep-alive connection; resource paths come
    from discovery, cached until :meth:`forget_discovery`.
    """

    def __init__(self) -> None:
        self._port = 0
        self._ssl: ssl.SSLContext | None = None
        self._local = threading.local()  # one keep-alive connection per thread
        self._connections: list[http.client.HTTPSConnection] = []
        self._connections_lock = threading.Lock()
        self._resources: dict[tuple[str, str], dict[str, Any]] = {}

    def _connect(self, port: int, context: ssl.SSLContext) -> None:
        self._port, self._ssl = port, context

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", self._port,
                                               context=self._ssl, timeout=timeout)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        conn.timeout = timeout
        return conn

    def close_connections(self) -> None:
        """Close every thread's connection."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
        allow_error: bool = False,
        raw: bool = False,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """One request as the admin user: (status, decoded JSON body — or text if ``raw``).

        Raises :class:`ApiError` for a status >= 400 unless ``allow_error``.
        """
        if self._ssl is None:
            raise ControlPlaneError("the control plane is not started")
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        payload = None if body is None else (
            body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection(timeout)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ssl.SSLEOFError):
                # A keep-alive connection the server had closed (over TLS, an EOF on send):
                # the request never got there.
                conn.close()
                if attempt == 2:
                    raise
            except (OSError, http.client.HTTPException):
                conn.close()
                raise
        text = data.decode(errors="replace")
        decoded: Any = text
        if not raw and text:
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = text
        if response.status >= 400 and not (allow_error or raw):
            raise ApiError(response.status, decoded, method, path)
        return response.status, decoded

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None for 404."""
        status, body = self.request("GET", path, allow_error=True)
        if status == 404:
            return None
        if status >= 400:
            raise ApiError(status, body, "GET", path)
        return body

    def resource_path(
        self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None
    ) -> str:
        """REST path for a kind (found by discovery, so CRDs work too)."""
        info = self._resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if info["namespaced"]:
            if not namespace:
                raise ControlPlaneError(f"{kind} is namespaced: give a namespace")
            base += f"/namespaces/{namespace}"
        path = f"{base}/{info['name']}"
        return f"{path}/{name}" if name else path

    def _resource(self, api_version: str, kind: str) -> dict[str, Any]:
        key = (api_version, kind)
        if key not in self._resources:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            _, listing = self.request("GET", base)
            for resource in listing.get("resources", []):
                if "/" not in resource["name"]:
                    self._resources[(api_version, resource["kind"])] = resource
        if key not in self._resources:
            raise ControlPlaneError(f"the API server does not serve {kind} in {api_version}")
        return self._resources[key]

    def forget_discovery(self) -> None:
        """Drop the cached resource paths (after new kinds, e.g. CRDs, are served)."""
        self._resources.clear()

    def apply(
        self,
        obj: Mapping[str, Any],
        *,
        field_manager: str = "mlship-test",
        force: bool = True,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Server-side apply one object (as the admin user); returns what the server answered."""
        metadata = obj.get("metadata", {})
        path = self.resource_path(obj["apiVersion"], obj["kind"], metadata.get("namespace"),
                                  metadata["name"])
        query = {"fieldManager": field_manager}
        if force:
            query["force"] = "true"
        if dry_run:
            query["dryRun"] = "All"
        _, body = self.request("PATCH", path, dict(obj),
                               content_type="application/apply-patch+yaml", query=query)
        return body

    def apply_all(
        self, objects: Iterable[Mapping[str, Any]], **kwargs: Any
    ) -> list[dict[str, Any]]:
        return [self.apply(obj, **kwargs) for obj in objects]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        self.request("DELETE", self.resource_path(api_version, kind, namespace, name),
                     allow_error=True)
