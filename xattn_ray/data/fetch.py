"""Download the public corpora the experiments read, and prove they are the bytes we measured.

Two sources:

- Multi30k task 1 (Elliott et al. 2016, 2017; Barrault et al. 2018): the 22 gzip files of the GitHub
  repository `multi30k/dataset`, folder `data/task1/raw/`, pinned at commit a3d2e0d.
- MUSE bilingual dictionaries (Conneau et al. 2017): for each language pair, the train split
  `<src>-<tgt>.0-5000.txt` and the test split `<src>-<tgt>.5000-6500.txt`.

Why checksums: results are comparable across machines only if every run reads the same bytes, and a
URL does not promise that (a re-upload, a proxy's error page served with status 200, a transfer cut
short). The sha256 of every file is recorded below, so a difference is an error that names the file
rather than a silently different experiment. The checksums also make fetching idempotent: a file
already present and valid is not downloaded again. A download goes to a temporary file in the
destination folder and is renamed into place only once verified, so the final path never holds a
partial or wrong file.
"""

import hashlib
import logging
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from xattn_ray.errors import FetchError

_log = logging.getLogger(__name__)

MULTI30K_BASE_URL = "https://github.com/multi30k/dataset/raw/a3d2e0d/data/task1/raw"
MUSE_BASE_URL = "https://dl.fbaipublicfiles.com/arrival/dictionaries"

MULTI30K_SHA256: dict[str, str] = {
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2017_mscoco.fr.gz": "754f3072ba9f124569ba5258b32730fc1d214bbf8e0c6dfb2b74401676220db0",
    "test_2018_flickr.cs.gz": "7d0a9db904f94c554a8c58049a9f3a5357c27f46cc3d710d70cb0b4a2585b8c2",
    "test_2018_flickr.de.gz": "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
    "test_2018_flickr.en.gz": "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
    "test_2018_flickr.fr.gz": "fb2b83fcceb937a4f7e3e93c1c51c22aba92f1e342391e6b5ba392b16a920501",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}

MUSE_SHA256: dict[str, str] = {
    "cs-en.0-5000.txt": "f8dfc032f8453781cd755e9b8291c652c7dcb615358cce07fc4e2224c1e2821b",
    "cs-en.5000-6500.txt": "b9f1264c0016e6ae4cd892c882c9b305927ff30699e0ca807113b7083d81aa77",
    "de-en.0-5000.txt": "8f68d0f7eac21ca09b357984cf6f80480c032ad4f6a4f5c3ce509139ff30ef92",
    "de-en.5000-6500.txt": "e3c93041167fca27f6be652cdfcfb783ffe8886cc791f206e189c5f0af2ad1ca",
    "de-fr.0-5000.txt": "315ce548ce3ea16d00bf36d669fc6f29385fce1c3141d1c26929f6addc9bb309",
    "de-fr.5000-6500.txt": "2aaefd3aca24e90df32a86342c13961621bee7010e2bd4eb7de3eee476155e1f",
    "en-cs.0-5000.txt": "2e779fed76566fe3d7647ea8a6bb6805bca777b8dbddd087d732e105a062087a",
    "en-cs.5000-6500.txt": "ef3ab5b29cd4f850f423ae34e6215b52a3584242f27077cd02943a653b79a850",
    "en-de.0-5000.txt": "8ad0a24101fe9e493cf2e64e8c1e0c9fc55ab40e72ab16b208447648441098c8",
    "en-de.5000-6500.txt": "142f68871e9a7bee04bef7df9a6baf27c8a4dee383c7153331157356b2d6ce97",
    "en-fr.0-5000.txt": "96cfce2c345fdbf254310d63fc7230bc23529d4ecc669bb4a5e6bbede5db3182",
    "en-fr.5000-6500.txt": "ff4855a4cecf168652d8dff2870a9edb43b94dac0fc0eacaef27457af91f5d01",
    "fr-de.0-5000.txt": "be30a4c11b5ba83c4069da595749dedb905e57c2123cef929f5d4f496c437b88",
    "fr-de.5000-6500.txt": "dfeb42a7f008b6321c27219b1c42056163f4d56b4568968be0061085c3f4f777",
    "fr-en.0-5000.txt": "047c342853e76ffe18ce06a15060baff833b1e0fbe1929471dbd1d4d36a0ce06",
    "fr-en.5000-6500.txt": "1e23d73dd6d235378bf8f83a8d40d761e213eb460e8619677fdbaf8247f65f5d",
}

# The two published splits of every MUSE pair: train (source words 0-5000) and test (5000-6500).
_MUSE_SPLITS = ("0-5000", "5000-6500")

_CHUNK_BYTES = 1 << 16
# Seconds a single connect or read may block; a stalled server fails instead of hanging the run.
_SOCKET_TIMEOUT_S = 30.0
# What a mirror's address may start with: the schemes urllib downloads from.
_SCHEMES = ("https", "http", "ftp", "file")


@dataclass(frozen=True)
class FetchedFile:
    """One file in the destination folder, verified against its recorded checksum."""

    path: Path
    downloaded: bool  # False: it was already present and valid, and no request was made


def fetch_multi30k(dest: Path, base_url: str = MULTI30K_BASE_URL) -> list[FetchedFile]:
    """Fetch the 22 Multi30k task-1 files into `dest` (created if missing), in name order."""
    _check_base_url(base_url)
    _make_folder(dest)
    return [
        fetch_file(_join_url(base_url, name), dest, sha256)
        for name, sha256 in MULTI30K_SHA256.items()
    ]


def fetch_muse(
    pairs: Sequence[str], dest: Path, base_url: str = MUSE_BASE_URL
) -> list[FetchedFile]:
    """Fetch the train and test dictionaries of each pair (like "de-fr") into `dest`.

    Every pair, the base URL and the destination are checked before anything is downloaded, so a
    typo costs no traffic.
    """
    names = [name for pair in pairs for name in _muse_file_names(pair)]
    _check_base_url(base_url)
    _make_folder(dest)
    return [fetch_file(_join_url(base_url, name), dest, MUSE_SHA256[name]) for name in names]


def fetch_file(url: str, dest: Path, sha256: str) -> FetchedFile:
    """Make `dest/<last segment of url>` hold exactly the bytes with this sha256 (lower-case hex).

    A file already there with that checksum is kept without any request; otherwise the file is
    downloaded and verified before it replaces whatever was at the final path.
    """
    _make_folder(dest)
    path = dest / _file_name(url)
    if path.is_file():
        if _sha256_of_file(path) == sha256:
            _log.info("%s: already present, checksum ok", path)
            return FetchedFile(path, downloaded=False)
        _log.warning("%s: present but not the recorded checksum; downloading it again", path)
    size = _download_verified(url, path, sha256)
    _log.info("%s: downloaded %d bytes from %s", path, size, url)
    return FetchedFile(path, downloaded=True)


def _muse_file_names(pair: str) -> list[str]:
    """The published file names of one MUSE pair; a FetchError if it has no recorded checksums."""
    names = [f"{pair}.{split}.txt" for split in _MUSE_SPLITS]
    if not all(name in MUSE_SHA256 for name in names):
        known = sorted({name.split(".", 1)[0] for name in MUSE_SHA256})
        raise FetchError(
            f"no recorded checksums for MUSE pair {pair!r}; known pairs: {', '.join(known)}"
        )
    return names


def _check_base_url(base_url: str) -> None:
    """A FetchError unless `base_url` starts with a scheme urllib downloads from (a bare host or path is a typo)."""
    if urllib.parse.urlsplit(base_url).scheme.lower() not in _SCHEMES:
        raise FetchError(f"base URL {base_url!r} must start with one of "
                         f"{', '.join(scheme + '://' for scheme in _SCHEMES)}")


def _make_folder(dest: Path) -> None:
    """Create the destination folder (and its parents) unless it exists; a FetchError if it cannot be one."""
    if dest.exists() and not dest.is_dir():
        raise FetchError(f"{dest}: a file is there; the destination must be a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FetchError(f"cannot create the destination folder {dest}: {err.strerror or err}") from None


def _join_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{name}"


def _file_name(url: str) -> str:
    """The published name of the file at `url`: the last segment of its path."""
    return PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _download_verified(url: str, path: Path, sha256: str) -> int:
    """Download `url` to `path` through a temporary file beside it; return the size in bytes.

    The temporary file lives in the same folder so that the final rename is atomic, and it is
    removed on any failure, so `path` only ever holds a complete, verified file.
    """
    temporary = path.with_name(f".{path.name}.part-{secrets.token_hex(4)}")
    try:
        with temporary.open("xb") as out:
            actual, size = _stream_to(url, out, path.name)
            if actual != sha256:
                raise FetchError(
                    f"{path.name}: checksum mismatch for {url}: "
                    f"expected sha256 {sha256}, got {actual}"
                )
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return size


def _stream_to(url: str, out: BinaryIO, name: str) -> tuple[str, int]:
    """Copy the body at `url` into `out` in chunks, hashing as it goes; return (sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=_SOCKET_TIMEOUT_S) as response:
            promised = response.headers.get("Content-Length", "")
            while chunk := response.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as error:
        raise FetchError(f"{name}: HTTP {error.code} {error.reason} from {url}") from error
    except (OSError, HTTPException) as error:
        raise FetchError(f"{name}: download from {url} failed: {error}") from error
    # http.client ends a body cut short by a closed connection as if it were whole: compare sizes.
    if promised.isdigit() and size < int(promised):
        raise FetchError(f"{name}: connection to {url} closed after {size} of {promised} bytes")
    return digest.hexdigest(), size
