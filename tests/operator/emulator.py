"""kmock's Kubernetes emulator, with the two gaps that stop kopf closed (../shared/notes).

1. ``GET /api/v1/namespaces`` (list and watch): kmock's URL parser reads ``namespaces`` as the
   start of a namespaced path and answers 500. Here that path is the cluster-scoped
   ``v1/namespaces`` resource.
2. Object metadata: kmock keeps no ``resourceVersion``/``uid``/``generation``, so kopf's JSON
   patch that starts with a ``test`` of ``/metadata/resourceVersion`` fails forever. Here create
   assigns ``resourceVersion``, ``uid``, ``creationTimestamp``, ``generation`` (and a name from
   ``generateName``); a patch that changes something bumps ``resourceVersion`` (``generation``
   only when something besides metadata and status changed); the ``status`` subresource is kept
   apart from the main resource; a failed JSON-patch ``test`` answers 422; delete with
   finalizers sets ``deletionTimestamp`` and the object goes once the finalizers are gone.

Like a real API server, merge patches replace lists whole and ``null`` deletes a key.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import secrets
import uuid
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import apps, dicts, enums, rendering

NAMESPACES = kmock.resource("", "v1", "namespaces")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")


Key = tuple[kmock.resource, str | None, str]


def _key(request: rendering.Request, name: str | None = None) -> Key:
    assert request.resource is not None and (name or request.name)
    return (request.resource, request.namespace, name or request.name or "")


def _essence(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in {"metadata", "status"}}


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with resource versions, generations, a status subresource and namespaces.

    Declare the status subresource in discovery (``subresources={"status"}``) and it is kept
    apart from the main resource like a real API server does.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1000)

    # -- gap 1: /api/v1/namespaces ----------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") != "/api/v1/namespaces":
            return await super().__call__(raw_request)
        await raw_request.read()
        watch = raw_request.query.get("watch") == "true"
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url,
            method=raw_request.method, params=dict(raw_request.query),
            headers=dict(raw_request.headers), body=b"", text="", data=None,
            action=enums.action.WATCH if watch else enums.action.LIST,
            resource=NAMESPACES, namespace=None, name=None, subresource=None,
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except rendering.StreamingError as exc:
            raise exc.__cause__ or exc from None
        except Exception as exc:
            if self._errors:
                self._errors[-1].append(exc)
            return await self._render_error(exc)

    # -- gap 2: metadata semantics ----------------------------------------------------------------

    def _next_version(self) -> str:
        return str(next(self._versions))

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        for known, info in self.resources.items():
            if known == resource:
                return "status" in info.subresources  # type: ignore[union-attr]
        return False

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action not in {
            enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE,
        }:
            return await super()._handle(request)
        if request.action != enums.action.CREATE and request.name is None:
            return await super()._handle(request)
        gc_key: Key | None = None
        async with self._lock:
            if request.action == enums.action.CREATE:
                await self._create(request)
            elif request.action == enums.action.UPDATE:
                gc_key = await self._update(request)
            else:
                gc_key = await self._delete(request)
        try:
            # Skip KubernetesEmulator._handle (its state changes are done above); serve the reply.
            return await apps.RawHandler._handle(self, request)
        finally:
            if gc_key is not None:
                async with self._lock:
                    obj = self._objects[gc_key]
                    raw = obj.raw
                    obj.delete()
                    await self._buses[gc_key[0]].put({"type": "DELETED", "object": raw})

    async def _create(self, request: rendering.Request) -> None:
        data = request.data
        if not isinstance(data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="not an object")
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if not meta.get("name"):
            raise kmock.KubernetesError(status=422, reason="Invalid",
                                        message="metadata.name: Required value")
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        assert request.resource is not None
        key: Key = (request.resource, meta.get("namespace"), meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists",
                                        message=f"{meta['name']} already exists")
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_version(),
                    creationTimestamp=_now(), generation=1)
        meta.pop("deletionTimestamp", None)
        if key in self._objects:
            self._objects[key].create(data)
        else:
            self._objects[key] = data
        await self._buses[request.resource].put({"type": "ADDED", "object": copy.deepcopy(data)})

    async def _update(self, request: rendering.Request) -> Key | None:
        key = _key(request)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        assert request.resource is not None
        current = copy.deepcopy(self._objects[key].raw)
        try:
            patched = dict(dicts.patch_dict(copy.deepcopy(current), request.data))
        except jsonpatch.JsonPatchTestFailed as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, ValueError,
                TypeError) as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        if self._has_status_subresource(request.resource):
            if request.subresource == "status":
                new = {**current, "status": patched.get("status")}
                if new["status"] is None:
                    del new["status"]
            else:
                new = {k: v for k, v in patched.items() if k != "status"}
                if "status" in current:
                    new["status"] = current["status"]
        else:
            new = patched
        # Identity fields are the server's.
        for field in ("uid", "creationTimestamp", "generation", "resourceVersion", "name",
                      "namespace"):
            if field in current.get("metadata", {}):
                new.setdefault("metadata", {})[field] = current["metadata"][field]
        if new == current:
            return None
        if _essence(new) != _essence(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_version()
        self._objects[key].history.append(new)
        await self._buses[request.resource].put({"type": "MODIFIED",
                                                 "object": copy.deepcopy(new)})
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return key
        return None

    async def _delete(self, request: rendering.Request) -> Key | None:
        key = _key(request)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        assert request.resource is not None
        current = copy.deepcopy(self._objects[key].raw)
        meta = current.setdefault("metadata", {})
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_version()
                self._objects[key].history.append(current)
                await self._buses[request.resource].put({"type": "MODIFIED",
                                                         "object": copy.deepcopy(current)})
            return None
        return key
