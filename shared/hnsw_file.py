"""Opens an hnswlib index file with short reads: a load never stalls other work on its CPU.

hnswlib's own load_index reads the graph with one read() of the whole level-0 block, which the
kernel does not break up: a snapshot load at the idle priority (a handover's new worker,
api/handover.py) stalled the serving worker on the same CPU 23 ms a wake-up (p99, 40k items),
0.6 ms read here (bench/load_stall.py). The file is read in READ_CHUNK pieces, checked against
its manifest's sha256 as it is read (one pass instead of two), and handed to hnswlib's pickle
state (Index.__setstate__), which builds the same index as load_index (tested field by field).
It takes about twice load_index's time and, for a moment, the file's size in memory beside the
index: used for loads that no request of their own process waits on (api/replica.py).
The file's layout is hnswlib 0.8's HierarchicalNSW::saveIndex.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from shared.errors import SnapshotError

READ_CHUNK = 1 << 20  # bytes a read() takes: about 0.1 ms of copying in the kernel
HEADER = struct.Struct("<6QiI3QdQ")  # FIELDS: size_t but max_level (int), entry point (uint32)
LABEL = np.dtype("<u8")
EMPTY_ENTRY = 2**32 - 1  # the entry point of an index with no elements
MAX_M = 10_000  # hnswlib lowers a larger M to this
# Fields a saved file holds that follow from the space, dim and M: a file must agree.
LAYOUT = (
    "offset_level0", "size_data_per_element", "label_offset", "offset_data", "max_M",
    "max_M0", "mult",
)  # fmt: skip
DELETED = 1  # the flag hnswlib sets in byte 2 of an element's level-0 link list header
FIELDS = (
    "offset_level0", "max_elements", "cur_element_count", "size_data_per_element",
    "label_offset", "offset_data", "max_level", "enterpoint_node", "max_M", "max_M0", "M",
    "mult", "ef_construction",
)  # fmt: skip


def verify_file(path: Path, size: int, sha256: str) -> None:
    """Refuse an index file that is missing, partial or not byte-identical to what was saved."""
    _read(path, size, sha256, whole=False)


def read_checked(path: Path, size: int, sha256: str) -> npt.NDArray[np.uint8]:
    """The file's bytes, as verify_file checks them."""
    return _read(path, size, sha256, whole=True)


def _read(path: Path, size: int, sha256: str, whole: bool) -> npt.NDArray[np.uint8]:
    """Read the file in READ_CHUNK pieces, hashing them, into an array of its size (whole: the
    file's bytes) or into one piece's room, reused; SnapshotError unless whole and unchanged."""
    try:
        with path.open("rb", buffering=0) as file:
            actual = os.fstat(file.fileno()).st_size
            if actual != size:
                raise SnapshotError(
                    f"snapshot index file {path} is partial or corrupt: "
                    f"{actual} bytes, expected {size}"
                )
            content = _anonymous(size if whole else min(size, READ_CHUNK))
            view, digest, done = content.data, hashlib.sha256(), 0
            while done < size:
                at = done if whole else 0
                got = file.readinto(view[at : at + READ_CHUNK])
                if not got:
                    raise SnapshotError(f"snapshot index file {path} shrank while read")
                digest.update(view[at : at + got])
                done += got
    except FileNotFoundError:
        raise SnapshotError(f"snapshot index file {path} is missing") from None
    if digest.hexdigest() != sha256:
        raise SnapshotError(f"snapshot index file {path} is corrupt: sha256 does not match")
    return content


def _anonymous(size: int) -> npt.NDArray[np.uint8]:
    """size bytes in an anonymous map of their own, unmapped as soon as the array is dropped:
    faulted in in half the time of np.empty's, which numpy asks to back with huge pages (0.2 s
    against 0.4 at 318 MiB, measured by hand once)."""
    return np.frombuffer(mmap.mmap(-1, size) if size else bytearray(), np.uint8)


def open_index(
    content: npt.NDArray[np.uint8], space: str, dim: int, max_elements: int
) -> hnswlib.Index:
    """The index whose saved file is content, with room for max_elements or its items if more
    (load_index would take the file's own room then); ValueError if content is not a whole
    index of this space and dim (hnswlib would crash on one that is not, checked or not)."""
    if len(content) < HEADER.size:
        raise ValueError("shorter than the header")
    header = dict(zip(FIELDS, HEADER.unpack_from(content.data), strict=True))
    count, per_element = header["cur_element_count"], header["size_data_per_element"]
    _check_bounds(header)
    room = max(max_elements, count)
    state = _empty_state(space, dim, header["M"], header["ef_construction"])
    for field in LAYOUT:
        if header[field] != state[field]:
            raise ValueError(f"{field} is {header[field]}, not {state[field]} (dim {dim})")
    data_end = HEADER.size + count * per_element
    if data_end > len(content):
        raise ValueError(f"{count} elements do not fit the file")
    elements = content[HEADER.size : data_end].reshape(count, per_element)
    levels, links = _link_lists(content, data_end, count, state["size_links_per_element"])
    _check_graph(header, elements, levels, links)
    label_at = header["label_offset"]
    state.update(header)
    state.update(
        max_elements=room,
        ep_added=True,
        data_level0=elements.reshape(-1).view(np.int8),
        element_levels=np.concatenate([levels, np.zeros(room - count, np.int32)]),
        link_lists=links.view(np.int8),
        label_lookup_external=elements[:, label_at : label_at + 8].copy().view(LABEL).ravel(),
        label_lookup_internal=np.arange(count, dtype=np.uint32),
        has_deletions=bool((elements[:, header["offset_level0"] + 2] & DELETED).any()),
    )
    index: hnswlib.Index = hnswlib.Index.__new__(hnswlib.Index)
    try:
        index.__setstate__((state,))
    except RuntimeError as exc:
        raise ValueError(str(exc)) from exc
    return index


def _check_bounds(header: dict[str, Any]) -> None:
    """The parameters an empty index is built from are ones hnswlib takes."""
    if not 2 <= header["M"] <= MAX_M:
        raise ValueError(f"M is {header['M']}")
    if not 1 <= header["ef_construction"] < 2**31:
        raise ValueError(f"ef_construction is {header['ef_construction']}")
    if not header["cur_element_count"] <= header["max_elements"] < 2**32:
        raise ValueError(
            f"{header['cur_element_count']} elements in room for {header['max_elements']}"
        )


def _check_graph(
    header: dict[str, Any],
    elements: npt.NDArray[np.uint8],
    levels: npt.NDArray[np.int32],
    links: npt.NDArray[np.uint8],
) -> None:
    """The entry point is on the top level, and every link list names elements of the file."""
    count, top, entry = len(elements), header["max_level"], header["enterpoint_node"]
    if count == 0:
        if (top, entry) != (-1, EMPTY_ENTRY):
            raise ValueError(f"an empty index has max_level {top}, entry point {entry}")
        return
    if top != levels.max() or entry >= count or levels[entry] != top:
        raise ValueError(f"max_level {top} or entry point {entry} is not the graph's")
    start = header["offset_level0"]
    level0 = elements[:, start : start + 4 * (header["max_M0"] + 1)]
    _check_lists(np.ascontiguousarray(level0).view("<u4"), header["max_M0"], count, "level 0")
    upper = links.view("<u4").reshape(-1, header["max_M"] + 1)
    _check_lists(upper, header["max_M"], count, "upper")


def _check_lists(lists: npt.NDArray[np.uint32], most: int, count: int, where: str) -> None:
    """Each row: a header whose low 16 bits count the links that follow (at most `most`)."""
    sizes = lists[:, 0] & 0xFFFF
    if (sizes > most).any():
        raise ValueError(f"a {where} link list holds more than {most} links")
    used = np.arange(most) < sizes[:, None]
    if (lists[:, 1:][used] >= count).any():
        raise ValueError(f"a {where} link list names an element the file does not hold")


def _empty_state(space: str, dim: int, m: int, ef_construction: int) -> dict[str, Any]:
    """The pickle state of an empty index: the fields a saved file does not hold (room for one
    element: the caller sets the room, which nothing else here depends on)."""
    empty = hnswlib.Index(space=space, dim=dim)
    empty.init_index(1, M=m, ef_construction=ef_construction, allow_replace_deleted=True)
    return dict(empty.__getstate__()[0])


def _link_lists(
    content: npt.NDArray[np.uint8], start: int, count: int, per_level: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
    """Each element's level and the upper levels' link lists, which follow the level-0 block
    as (uint32 size, bytes) per element."""
    levels = np.zeros(count, np.int32)
    pieces = []
    raw, at = content.data, start
    for element in range(count):
        if at + 4 > len(content):
            raise ValueError("the link lists end early")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if size % per_level or at + size > len(content):
            raise ValueError(f"element {element} has a link list of {size} bytes")
        if size:
            levels[element] = size // per_level
            pieces.append(content[at : at + size])
            at += size
    if at != len(content):
        raise ValueError(f"{len(content) - at} bytes follow the link lists")
    links = np.concatenate(pieces) if pieces else np.empty(0, np.uint8)
    return levels, links
