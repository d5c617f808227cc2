"""Test sets fetched over HTTP(S) with urllib, checked against their SHA-256 before use."""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .archives import CHUNK_BYTES
from .standard_sets import PrepareError

MAX_DOWNLOAD_BYTES = 4 * 2 ** 30
DOWNLOAD_TIMEOUT_S = 60
DIV2K_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K"


@dataclass(frozen=True)
class Download:
    """One file to fetch: its address, SHA-256 and byte size (None where unknown), what it holds."""

    url: str | None
    sha256: str | None
    size: int | None
    layout: str


EDSR_BENCHMARK = Download("https://cv.snu.ac.kr/research/EDSR/benchmark.tar", None, None,
                          "benchmark/{Set5,Set14,B100,Urban100}/HR + LR_bicubic/X2..X4 "
                          "(EDSR's release; no SHA-256 published: pass --sha256)")
# The DIV2K checksums and sizes are those of tensorflow/datasets (url_checksums/div2k.txt)
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "DIV2K": tuple(Download(f"{DIV2K_URL}/DIV2K_valid_{part}.zip", sha256, size, layout) for
                   part, sha256, size, layout in (
        ("HR", "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc", 448993893,
         "DIV2K_valid_HR/0801.png ..."),
        ("LR_bicubic_X2", "60eed9875c697df51204aa579e2a699e1d5215095788a097ff54dd17e2664d57",
         117763600, "DIV2K_valid_LR_bicubic/X2/0801x2.png ..."),
        ("LR_bicubic_X3", "04b9a2ed3b4a0715d3924d3ae8514830c3328fac8d30512ce716d6f419e052a3",
         54513392, "DIV2K_valid_LR_bicubic/X3/0801x3.png ..."),
        ("LR_bicubic_X4", "a50a5d1c4b88de4e8d300d8fb2b904c52fe93b2b298a4899697760d7cbb6d553",
         31505881, "DIV2K_valid_LR_bicubic/X4/0801x4.png ..."))),
    **{s: (EDSR_BENCHMARK,) for s in ("Set5", "Set14", "B100", "Urban100")},
    "Manga109": (Download(None, None, None, "given by its authors on request (manga109.org), "
                                            "for academic use"),),
    "CBSD68": (Download(None, None, None, "no archive with a published checksum known"),),
    "Rain100L": (Download(None, None, None, "no stable address with a published checksum known"),),
}


def download(url: str, sha256: str, folder: str, max_bytes: int | None = None) -> str:
    """Fetch ``url`` into ``folder``, checked against ``sha256``; the partial file removed on failure."""
    max_bytes = max_bytes or MAX_DOWNLOAD_BYTES
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(urllib.parse.urlparse(url).path))
    path = os.path.join(folder, name.lstrip(".") or "download")
    partial, digest, total = path + ".part", hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(partial, "wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                total += len(chunk)
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
    table = DOWNLOADS[set_name]
    if sha256:
        if len(table) != 1:
            raise PrepareError(f"--sha256: {set_name} is {len(table)} files; give --url with it")
        table = (Download(table[0].url, sha256, table[0].size, table[0].layout),)
    for item in table:
        if item.url is None:
            raise PrepareError(f"--download {set_name}: no public address known ({item.layout}); "
                               "download it yourself and give the folder or archive as SRC, or "
                               "pass --url URL --sha256 HEX")
        if item.sha256 is None:
            raise PrepareError(f"--download {set_name}: no SHA-256 known for {item.url} "
                               f"({item.layout}); pass --sha256 HEX from a source you trust")
    return table
