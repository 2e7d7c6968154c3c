"""Upload a built deposit through Zenodo's REST deposition API (https://developers.zenodo.org).

The documented flow: `POST /api/deposit/depositions` with `{}` creates a draft (201; its `links.bucket` is the
file bucket); every file is streamed with `PUT <bucket>/<file name>` (the answer's `checksum` is `md5:<hex>`,
checked here against the file's own md5); `PUT /api/deposit/depositions/<id>` with `{"metadata": ...}` sets the
metadata (200); `POST /api/deposit/depositions/<id>/actions/publish` publishes it (202), only when asked, since
a published record's files can no longer change. Authentication is a personal access token with the
`deposit:write` (and, to publish, `deposit:actions`) scopes, sent as `Authorization: Bearer <token>`.

This has been run only against the stand-in server of `mdp_assets_tests/test_publish.py`, which answers as the
documentation says; never against zenodo.org or sandbox.zenodo.org.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from mdp_assets.checksums import file_digest
from mdp_assets.errors import MdpError, bounded

ZENODO = "https://zenodo.org"
SANDBOX = "https://sandbox.zenodo.org"


class ZenodoUploader:
    def __init__(self, base_url: str, token: str, timeout_s: float = 300.0, session: requests.Session | None = None):
        if not token:
            raise MdpError("uploading to Zenodo needs a personal access token (scopes deposit:write, deposit:actions)")
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, what: str, method: str, url: str, expected: tuple[int, ...], **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise MdpError(f"Zenodo upload, {what}: {method} {url} failed: {exc}") from None
        if response.status_code not in expected:
            raise MdpError(f"Zenodo upload, {what}: {method} {url} answered {response.status_code}: "
                           f"{bounded(response.text, 1000)}")
        try:
            return response.json() if response.content else {}
        except ValueError:
            raise MdpError(f"Zenodo upload, {what}: {method} {url} answered something that is not JSON") from None

    def upload(self, folder: Path, files: list[str], metadata: dict[str, Any], publish: bool = False) -> dict[str, Any]:
        """Create a deposition, upload `files` (paths relative to `folder`, one flat name each) to its bucket,
        set its metadata and, with `publish`, publish it. Returns the deposition's id, links and state."""
        created = self._call("create the deposition", "POST", f"{self.base_url}/api/deposit/depositions", (201,),
                             json={})
        deposition, bucket = created.get("id"), (created.get("links") or {}).get("bucket")
        if deposition is None or not bucket:
            raise MdpError(f"Zenodo upload: the new deposition has no id or bucket link: {bounded(json.dumps(created), 500)}")
        for name in files:
            if "/" in name:
                raise MdpError(f"Zenodo keeps one flat list of files; {name!r} names a folder")
            md5 = _md5(folder / name)
            with open(folder / name, "rb") as handle:  # a file object: streamed, with its Content-Length
                answer = self._call(f"upload {name}", "PUT", f"{bucket}/{name}", (200, 201), data=handle,
                                    headers={"Content-Type": "application/octet-stream"})
            if answer.get("checksum") != f"md5:{md5}":
                raise MdpError(f"Zenodo upload: {name} arrived with checksum {answer.get('checksum')!r}, not "
                               f"md5:{md5}; the deposition {deposition} is left as a draft")
        self._call("set the metadata", "PUT", f"{self.base_url}/api/deposit/depositions/{deposition}", (200,),
                   json={"metadata": metadata})
        result = {"service": "zenodo", "base_url": self.base_url, "deposition_id": deposition, "bucket": bucket,
                  "html": (created.get("links") or {}).get("html"), "state": "draft", "files": len(files)}
        if publish:
            published = self._call("publish", "POST",
                                   f"{self.base_url}/api/deposit/depositions/{deposition}/actions/publish", (202,))
            result.update(state="published", doi=published.get("doi"),
                          record_html=(published.get("links") or {}).get("record_html"))
        return result


def _md5(path: Path) -> str:
    """The md5 Zenodo reports for an uploaded file, of the local file."""
    return file_digest(path, "md5")
