"""Test sets fetched over HTTP(S) with urllib, checked against their SHA-256 before use; the files
of each set are listed in data/standard_sets.json ("download")."""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from .archives import CHUNK_BYTES
from .benchmark import standard_entries
from .standard_sets import PrepareError

MAX_DOWNLOAD_BYTES = 4 * 2 ** 30
DOWNLOAD_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class Download:
    """One file to fetch: its address, SHA-256 and byte size (None where unknown), what it holds."""

    url: str | None
    sha256: str | None
    size: int | None
    layout: str


def download(url: str, sha256: str, folder: str, max_bytes: int | None = None) -> str:
    """Fetch ``url`` into ``folder``, checked against ``sha256``; the partial file removed on failure."""
    max_bytes = max_bytes or MAX_DOWNLOAD_BYTES
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(urllib.parse.urlparse(url).path))
    path = os.path.join(folder, name.lstrip(".") or "download")
    partial, digest, total = path + ".part", hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(partial, "wb") as out, \
                tqdm(total=response.length, unit="B", unit_scale=True, desc=name, leave=False) as bar:
            while chunk := response.read(CHUNK_BYTES):
                total += len(chunk)
                bar.update(len(chunk))
                if total > max_bytes:
                    raise PrepareError(f"{url}: more than {max_bytes} bytes; download stopped")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise PrepareError(f"{url}: SHA-256 is {digest.hexdigest()}, expected {sha256}; "
                               "the download was removed")
        os.replace(partial, path)
        return path
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise PrepareError(f"{url}: download failed: {getattr(e, 'reason', e)}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def planned_downloads(set_name: str, url: str | None, sha256: str | None) -> tuple[Download, ...]:
    """The files to fetch for ``set_name``; a PrepareError naming what is unknown."""
    if url:
        return (Download(url, sha256, None, "given by --url"),)
    table = tuple(Download(**item) for item in standard_entries()[set_name]["download"])
    if sha256:
        if len(table) != 1:
            raise PrepareError(f"--sha256: {set_name} is {len(table)} files; give --url with it")
        table = (dataclasses.replace(table[0], sha256=sha256),)
    for item in table:
        if item.url is None:
            raise PrepareError(f"--download {set_name}: no public address known ({item.layout}); "
                               "download it yourself and give the folder or archive as SRC, or "
                               "pass --url URL --sha256 HEX")
        if item.sha256 is None:
            raise PrepareError(f"--download {set_name}: no SHA-256 known for {item.url} "
                               f"({item.layout}); pass --sha256 HEX from a source you trust")
    return table
